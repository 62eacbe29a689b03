"""The one scorer: official EM / F1 / recall on edge cases, the match rules, hedges, and the same
score everywhere (acceptance verdict, GRPO rewards, evaluation metrics).

Expected values are worked out by hand from the official definitions: HotpotQA's
``hotpot_evaluate_v1.py`` (``normalize_answer``: lower, delete ``string.punctuation``, remove
a/an/the, collapse whitespace; ``f1_score`` with its yes/no/noanswer rule; ``exact_match_score``)
and FlashRAG's ``Recall_Score`` (the recall of the same token counts, same yes/no rule, max over
gold alternatives).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from masksearch.scoring import (
    capped_recall,
    cover_em,
    exact_match,
    f1,
    match_rule,
    normalize,
    score,
    span_in_text,
    token_recall,
)

# (prediction, gold, official EM, official F1, FlashRAG recall)
OFFICIAL = [
    ("U.S.", "US", 1, 1, 1),                                   # punctuation deleted, not spaced
    ("the U.S. Army", "US Army", 1, 1, 1),
    ("1,000", "1000", 1, 1, 1),
    ("O'Brien", "OBrien", 1, 1, 1),
    ("O'Brien", "O Brien", 0, 0, 0),                          # "obrien" vs "o brien": no shared token
    ("Conan O'Brien", "O'Brien", 0, 2 / 3, 1),                # P = 1/2, R = 1
    ("DiCaprio's", "DiCaprio", 0, 0, 0),                      # "dicaprios" is another token
    ("Leonardo DiCaprio's", "Leonardo DiCaprio", 0, 0.5, 0.5),
    ("£5 million", "5 million", 0, 0.5, 0.5),                 # "£" is not ASCII punctuation: "£5" stays
    ("£5 million", "£5 million", 1, 1, 1),
    ("Dune… “Part” – Two", "Dune: Part Two", 0, 2 / 7, 1 / 3),  # tokens dune… “part” – two: only "two" shared
    ("Dune: Part Two", "Dune Part Two", 1, 1, 1),
    ("yes or no", "yes", 0, 0, 0),                             # the yes/no rule: a hedge earns nothing
    ("Yes.", "yes", 1, 1, 1),
    ("no", "yes", 0, 0, 0),
    ("yes", "Yes, it is", 0, 0, 0),                            # prediction is "yes", gold is not: 0
    ("noanswer", "no answer", 0, 0, 0),
    ("", "Paris", 0, 0, 0),                                    # empty prediction
    ("The Beatles", "Beatles", 1, 1, 1),
    ("The-Beatles", "Beatles", 0, 0, 0),                      # "thebeatles": the hyphen goes first
    ("Barack Obama", "Barack Hussein Obama", 0, 0.8, 2 / 3),
    ("new york", "new new york", 0, 0.8, 2 / 3),              # multiplicity: two "new" needed
    ("Paris | 1900", "1900", 0, 2 / 3, 1),                    # "|" is punctuation: "paris 1900"
]


@pytest.mark.parametrize("pred,gold,em,f1_value,recall", OFFICIAL)
def test_pairwise_metrics_equal_the_official_definitions(pred, gold, em, f1_value, recall):
    assert exact_match(pred, gold) == em
    assert f1(pred, gold) == pytest.approx(f1_value)
    assert token_recall(pred, gold) == pytest.approx(recall)
    # any-match score with one gold is the same numbers
    s = score(pred, [gold], "any")
    assert (s["em"], s["f1"], s["token_recall"]) == pytest.approx((em, f1_value, recall))


def test_normalize_is_hotpotqa_normalize_answer():
    assert normalize("Dune… “Part” – Two") == "dune… “part” – two"
    assert normalize("  The  U.S.\tArmy! ") == "us army"
    assert normalize("An Apple a day; Theatre anthem") == "apple day theatre anthem"  # whole words only
    assert normalize(None) == "" and normalize(1000) == "1000"
    assert normalize("Obama's", punctuation_as_space=True) == "obama s"


def test_max_over_alternatives_per_metric():
    assert exact_match("NYC", ["New York City", "NYC"]) == 1.0
    assert f1("Barack Obama", ["Joe Biden", "Barack Hussein Obama"]) == pytest.approx(0.8)
    assert token_recall(None, ["Obama"]) == 0.0 and exact_match("x", []) == 0.0


def test_cover_em_on_word_boundaries_with_the_yes_no_rule():
    assert cover_em("I think the answer is Paris, France", "Paris") == 1.0
    assert cover_em("the film “Dune”", "Dune") == 1.0  # Unicode quotes are not word characters
    assert cover_em("Parisian", "Paris") == 0.0
    assert cover_em("yes or no", "yes") == 0.0
    assert span_in_text("Obama's second term", "Obama") and not span_in_text("Parisian cafes", "Paris")


# ------------------------------------------------------------------ match rules
def test_the_three_match_rules_on_a_known_case():
    pred, golds = "Paris | 1900", ["1900", "Paris"]
    # any: alternatives, official metrics on the whole prediction
    assert score(pred, golds, "any") == pytest.approx(
        {"em": 0.0, "f1": 2 / 3, "token_recall": 1.0, "precision": 0.5, "cover_em": 1.0})
    # all: every string in any order -> fully right
    assert score(pred, golds, "all") == pytest.approx(
        {"em": 1.0, "f1": 1.0, "token_recall": 1.0, "precision": 1.0, "cover_em": 1.0})
    # ordered: span i against gold i -> both wrong
    assert score(pred, golds, "ordered") == pytest.approx(
        {"em": 0.0, "f1": 0.0, "token_recall": 0.0, "precision": 0.0, "cover_em": 0.0})


def test_ordered_rule_ramp_masks():
    golds = ["1889", "Gustave Eiffel"]
    assert score("1889 | Gustave Eiffel", golds, "ordered")["em"] == 1.0
    s = score("1889", golds, "ordered")  # one of two spans restored
    assert s["em"] == 0.0 and s["token_recall"] == 0.5 and s["precision"] == 1.0
    s = score("1889 | Eiffel", golds, "ordered")
    assert s["token_recall"] == pytest.approx(0.75) and s["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_all_rule_lists_of_candidates_do_not_score_in_full():
    golds = ["Alice", "Bob"]
    assert score("Bob | Alice", golds, "all")["em"] == 1.0
    s = score("Alice | Bob | Carol | Dan", golds, "all")  # two extra candidates
    assert s["em"] == 0.0 and s["token_recall"] == pytest.approx(0.5) and s["precision"] == pytest.approx(0.5)
    assert score("Alice | Alice", golds, "all")["em"] == 0.0  # parts are matched as a multiset


def test_match_rule_from_record_fields():
    assert match_rule(None, None) == "any" and match_rule(None, 2) == "ordered"
    assert match_rule("all") == "all" and match_rule("all", 2) == "ordered"  # a RAMP record saying "all"
    assert match_rule("ANY") == "any"
    with pytest.raises(ValueError, match="answer_match"):
        match_rule("some")
    with pytest.raises(ValueError, match="match rule"):
        score("x", ["x"], "some")


# ------------------------------------------------------------------ hedges
def test_hedges_do_not_earn_the_full_reward():
    from masksearch.training.rewards import recall_reward

    # yes/no: the hedge gets nothing anywhere
    assert capped_recall("yes or no", ["yes"]) == 0.0
    # four candidates: the metric's recall is the official 1.0, F1 shows the list, the reward is capped
    four = "Paris | London | Rome | Berlin"
    assert token_recall(four, "Paris") == 1.0 and f1(four, "Paris") == pytest.approx(0.4)
    assert capped_recall(four, ["Paris"]) == pytest.approx(0.375)
    assert capped_recall("Paris", ["Paris"]) == 1.0
    assert capped_recall("Paris, France", ["Paris"]) == pytest.approx(0.75)
    assert capped_recall(four, ["Paris"], min_precision=0) == 1.0  # the paper's plain recall
    got = recall_reward(["q"] * 3, ["x"] * 3, golden_answers=[["yes"], ["Paris"], ["Paris"]],
                        answer=["yes or no", four, "Paris"])
    assert got == pytest.approx([0.0, 0.375, 1.0])


# ------------------------------------------------------------------ one score everywhere
@pytest.mark.parametrize("fields,expected_em,expected_recall", [
    ({"answer_match": "any"}, 0, 1.0),
    ({"answer_match": "all"}, 1, 1.0),                       # FanoutQA-style
    ({"answer_match": "ordered"}, 0, 0.0),
    ({"answer_match": "all", "mask_count": 2}, 0, 0.0),      # a RAMP record written with "all"
])
def test_paris_1900_scores_the_same_in_verdict_rewards_and_metrics(fields, expected_em, expected_recall):
    from masksearch.agents.judge import string_verdict
    from masksearch.eval.metrics import score as metric_score
    from masksearch.training.rewards import em_reward, recall_reward, score_answer

    pred, golds = "Paris | 1900", ["1900", "Paris"]
    v = string_verdict(pred, golds, fields["answer_match"], fields.get("mask_count"))
    m = metric_score(pred, {"golden_answers": golds, **fields})
    kw = {"golden_answers": [golds], "answer": [pred], **{k: [v_] for k, v_ in fields.items()}}
    assert v["em"] == m["em"] == em_reward(["q"], ["x"], **kw)[0] == expected_em
    assert v["recall"] == m["token_recall"] == expected_recall
    if "mask_count" not in fields:  # the reward's scorer, called with the same rule
        assert score_answer(pred, golds, "recall", fields["answer_match"]) == expected_recall
        assert score_answer(pred, golds, "em", fields["answer_match"]) == expected_em
    # the reward is the same recall, capped by precision (1/2 under "any")
    cap = 0.75 if fields["answer_match"] == "any" else 1.0
    assert recall_reward(["q"], ["x"], **kw)[0] == pytest.approx(expected_recall * cap)


def test_ramp_records_load_as_ordered():
    from masksearch.data.qa import qa_from_record

    ex = qa_from_record({"id": "r", "question": "[mask] was built in [mask].", "answers": ["It", "1889"],
                         "mask_count": 2})
    assert ex.answer_match == "ordered" and ex.source == "ramp"
    with pytest.raises(ValueError, match="bad answer_match"):  # counted and skipped by load_qa
        qa_from_record({"question": "q?", "golden_answers": ["a"], "answer_match": "some"})


# ------------------------------------------------------------------ one normaliser, core layer
def test_exactly_one_answer_normaliser_in_the_package():
    pkg = Path(__file__).resolve().parents[1] / "masksearch"
    hits = {str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
            if re.search(r"string\.punctuation|\(a\|an\|the\)", p.read_text(encoding="utf-8"))}
    assert hits == {"scoring.py"}


def test_scoring_imports_no_model_layer():
    code = ("import sys, masksearch.scoring; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'langchain_core', 'langgraph') or m.startswith(('masksearch.models', "
            "'masksearch.retrieval', 'masksearch.agents'))]; print(bad); sys.exit(1 if bad else 0)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
