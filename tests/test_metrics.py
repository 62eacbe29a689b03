"""Answer metrics on hand-written cases."""

import pytest

from masksearch.data.qa import QAExample
from masksearch.eval.metrics import (
    aggregate,
    cover_em,
    exact_match,
    f1,
    normalize_answer,
    score,
    token_recall,
)


def test_normalisation_squad_style():
    # the official normaliser deletes ASCII punctuation (no space left) and keeps other characters
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An Apple a day") == "apple day"
    assert normalize_answer("“Quoted” — text…") == "“quoted” — text…"
    assert normalize_answer(None) == ""
    # articles only as whole words
    assert normalize_answer("Theatre anthem") == "theatre anthem"


def test_exact_match_normalised_and_max_over_aliases():
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("NYC", ["New York City", "NYC"]) == 1.0
    assert exact_match("", ["x"]) == 0.0
    assert exact_match(None, ["x"]) == 0.0


def test_f1_partial_overlap():
    # pred tokens: barack obama ; gold: barack hussein obama -> P=1, R=2/3 -> F1=0.8
    assert f1("Barack Obama", ["Barack Hussein Obama"]) == pytest.approx(0.8)
    assert f1("Michelle", ["Barack Hussein Obama"]) == 0.0
    assert f1("Barack Obama", ["Joe Biden", "Barack Hussein Obama"]) == pytest.approx(0.8)


def test_token_recall_is_fraction_of_gold_tokens_in_prediction():
    # a verbose prediction keeps full recall (this is why the paper uses recall)
    assert token_recall("It was Barack Hussein Obama, the 44th president", ["Barack Hussein Obama"]) == 1.0
    assert token_recall("Barack", ["Barack Hussein Obama"]) == pytest.approx(1 / 3)
    # max over alternatives
    assert token_recall("Obama", ["Barack Hussein Obama", "Obama"]) == 1.0
    # multiplicity: gold "new new york" needs two "new"
    assert token_recall("new york", ["new new york"]) == pytest.approx(2 / 3)
    assert token_recall("", ["Obama"]) == 0.0


def test_cover_em_on_word_boundaries():
    assert cover_em("I think the answer is Paris, France", ["Paris"]) == 1.0
    assert cover_em("Parisian", ["Paris"]) == 0.0
    assert cover_em("London", ["Paris", "London"]) == 1.0
    assert cover_em("", ["Paris"]) == 0.0


def test_cover_em_under_all_is_the_fraction_of_gold_strings_found():
    golds = ["The Phantom Menace", "$1.027 billion", "Attack of the Clones", "$653.8 million"]
    pred = "The Phantom Menace grossed $1.027 billion; Attack of the Clones made less."
    fan = QAExample("f", "q?", golds, answer_match="all")
    assert score(pred, fan)["cover_em"] == pytest.approx(3 / 4)
    assert score("", fan)["cover_em"] == 0.0


def test_score_any_vs_all_examples():
    any_ex = QAExample("a", "q?", ["Eiffel Tower", "La Tour Eiffel"])
    s = score("the eiffel tower", any_ex)
    assert s == {"em": 1.0, "f1": 1.0, "token_recall": 1.0, "precision": 1.0, "cover_em": 1.0}

    fan = QAExample("f", "q?", ["Alice", "Bob", "Carol", "Dan"], answer_match="all")
    s = score("Alice | Bob | Erin", fan)
    assert s["cover_em"] == pytest.approx(0.5)  # half of the strings found
    assert s["em"] == 0.0  # EM is the whole answer: every string, nothing else
    assert s["token_recall"] == pytest.approx(0.5)
    assert score("Alice, Bob, Carol and Dan", fan)["cover_em"] == 1.0

    # an "all" example is NOT scored as alternatives: one string is not enough
    assert score("Alice", fan)["token_recall"] == pytest.approx(0.25)


def test_score_empty_prediction_and_mapping_example():
    ex = {"golden_answers": ["Paris"], "answer_match": "any"}
    assert score(None, ex) == {"em": 0.0, "f1": 0.0, "token_recall": 0.0, "precision": 0.0, "cover_em": 0.0}
    assert score("   ", ex)["token_recall"] == 0.0
    # a gold that normalises to nothing: the official EM compares "" with "" (a data bug, scored
    # as the official scorers do); no token overlap, so F1 and recall stay 0
    s = score("the", {"golden_answers": ["The"]})
    assert s["em"] == 1.0 and s["f1"] == 0.0 and s["token_recall"] == 0.0


def test_aggregate_means():
    rows = [{"em": 1.0, "f1": 0.5}, {"em": 0.0, "f1": 1.0}, {"em": 1.0}]
    agg = aggregate(rows)
    assert agg["em"] == pytest.approx(2 / 3)
    assert agg["f1"] == pytest.approx(0.75)
