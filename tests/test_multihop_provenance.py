"""The multi-hop provenance teacher: one real BM25 search per hop, bridge entity named, accepted
only when every supporting passage and the answer were shown to the student."""

from __future__ import annotations

import json

import pytest

from masksearch.training.export import AcceptFilter, format_problems, run_cot, trajectory_to_sft_row
from masksearch.training.provenance import (ANSWER_IN_HAND, MULTIHOP_TEACHER, NOT_YET, REJECT_ANSWER, REJECT_NO_SUPPORT, REJECT_SEARCH,
                                            REJECT_SUPPORT, reject_reasons, run_multihop_provenance)

PASSAGES = [
    {"id": "kt", "title": "Kiss and Tell (1945 film)",
     "text": "Kiss and Tell is a 1945 comedy film in which 17-year-old Shirley Temple plays Corliss Archer."},
    {"id": "st", "title": "Shirley Temple",
     "text": "Shirley Temple Black was an actress who later served as Chief of Protocol of the United States."},
    {"id": "x1", "title": "Corliss Archer", "text": "Corliss Archer is a fictional teenage girl from radio plays."},
    {"id": "x2", "title": "Protocol", "text": "Protocol is the etiquette of diplomacy and affairs of state."},
]
QUESTION = "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?"


def _rec(**kw):
    rec = {"id": "q1", "question": QUESTION, "golden_answers": ["Chief of Protocol"],
           "supporting_titles": ["Kiss and Tell (1945 film)", "Shirley Temple"],
           "supporting_passage_ids": ["kt", "st"]}
    rec.update(kw)
    return rec


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    from masksearch.retrieval import build_index, make_retriever

    d = tmp_path_factory.mktemp("mh")
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    build_index(str(corpus), kind="bm25", out=str(d / "bm25"))
    return make_retriever(f"bm25:{d / 'bm25'}", k=1)


class Recording:
    """Wraps a retriever and records the queries (the real BM25 answers them)."""

    def __init__(self, inner, fail: bool = False):
        self.inner, self.fail, self.queries = inner, fail, []

    def invoke(self, query, **kw):
        self.queries.append(query)
        if self.fail:
            raise RuntimeError("index offline")
        return self.inner.invoke(query, **kw)

    def search_many(self, queries, k):
        self.queries += list(queries)
        if self.fail:
            raise RuntimeError("index offline")
        return self.inner.search_many(queries, k)


def test_two_hops_name_the_bridge_and_are_accepted(retriever):
    r = Recording(retriever)
    t = run_multihop_provenance(_rec(), r, k=1, retriever_name="bm25:test")
    # hop 1 from the question finds the film; hop 2 searches for the bridge entity by name
    assert r.queries[0].startswith("What government position") and r.queries[1] == "Shirley Temple"
    assert [d.id for d in t.steps[0].documents] == ["kt"] and [d.id for d in t.steps[1].documents] == ["st"]
    assert "Shirley Temple" in t.steps[1].thought and "Kiss and Tell (1945 film)" in t.steps[1].thought
    # the thoughts after a search say first whether the answer is in hand (the student's stop decision)
    assert t.steps[1].thought.startswith(NOT_YET) and t.final_thought.startswith(ANSWER_IN_HAND)
    assert t.answer == "Chief of Protocol" and t.verdicts["grounded"]["ok"] is True
    # the final thought quotes the supporting sentence that holds the answer and names only that passage
    assert t.final_thought == (ANSWER_IN_HAND + ' The passage "Shirley Temple" says: "was an actress '
                               'who later served as Chief of Protocol of the United States".')
    assert t.provenance.teacher == MULTIHOP_TEACHER and t.provenance.retriever == "bm25:test"
    assert AcceptFilter().check(t) == (True, "accepted")
    msgs = trajectory_to_sft_row(t)["messages"]
    assert format_problems(msgs) == [] and [m["role"] for m in msgs].count("assistant") == 3


def test_answer_not_shown_is_rejected(retriever):
    t = run_multihop_provenance(_rec(golden_answers=["Ambassador to Ghana"]), retriever, k=1)
    assert t.verdicts["grounded"]["ok"] is False and t.verdicts["grounded"]["reason"] == REJECT_ANSWER
    assert AcceptFilter().check(t) == (False, "ungrounded")


def test_supporting_passage_not_shown_is_rejected(retriever):
    # a supporting passage that no search reaches (not in the index): rejected even though the
    # answer itself was shown
    t = run_multihop_provenance(_rec(supporting_passage_ids=["kt", "st", "zz"],
                                     supporting_titles=["Kiss and Tell (1945 film)", "Shirley Temple", "Qwxyz"]),
                                retriever, k=1)
    g = t.verdicts["grounded"]
    assert g["reason"] == REJECT_SUPPORT and g["missing_passages"] == ["zz"] and not g["ok"]
    assert "Chief of Protocol" in "".join(s.information for s in t.steps)


def test_truncated_information_does_not_count_as_shown(retriever):
    # with a 12-token budget the second document never reaches the <information> block
    t = run_multihop_provenance(_rec(), retriever, k=1, info_max_tokens=12)
    assert t.verdicts["grounded"]["ok"] is False


def test_no_supporting_facts_and_search_errors_are_rejected(retriever):
    rec = _rec()
    del rec["supporting_passage_ids"]
    t = run_multihop_provenance(rec, retriever)
    assert t.verdicts["grounded"]["reason"] == REJECT_NO_SUPPORT and t.status == "error"
    t2 = run_multihop_provenance(_rec(), Recording(retriever, fail=True), k=1)
    assert t2.verdicts["grounded"]["reason"] == REJECT_SEARCH
    assert reject_reasons([t, t2]) == {REJECT_NO_SUPPORT: 1, REJECT_SEARCH: 1}


def test_same_export_as_ramp_teachers(retriever, tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps(_rec()) + "\n" + json.dumps(_rec(id="q2", golden_answers=["Ambassador"])) + "\n")
    summ = run_cot(f, tmp_path / "out", teacher=MULTIHOP_TEACHER, retriever=retriever, k=1, progress=False)
    assert summ["teacher"] == MULTIHOP_TEACHER and summ["accepted"] == 1 and summ["rejected"] == 1
    rows = [json.loads(x) for x in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert {r["provenance"]["teacher"] for r in rows} == {MULTIHOP_TEACHER}
    assert [json.loads(x)["id"] for x in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()] == ["q1"]


YES_NO_PASSAGES = [
    {"id": "fe", "title": "Ferocactus",
     "text": "Ferocactus (Ferocactus) is a genus of large barrel-shaped cacti, mostly with large spines."},
    {"id": "si", "title": "Silene", "text": "Silene is a genus of flowering plants in the family Caryophyllaceae."},
    {"id": "x3", "title": "Cactus", "text": "A cactus is a member of the plant family Cactaceae."},
]


@pytest.fixture(scope="module")
def yes_no_retriever(tmp_path_factory):
    from masksearch.retrieval import build_index, make_retriever

    d = tmp_path_factory.mktemp("yn")
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in YES_NO_PASSAGES))
    build_index(str(corpus), kind="bm25", out=str(d / "bm25"))
    return make_retriever(f"bm25:{d / 'bm25'}", k=1)


def _yes_no_rec(**kw):
    rec = {"id": "q2", "question": "Are Ferocactus and Silene both types of genus?", "golden_answers": ["Yes"],
           "supporting_titles": ["Ferocactus", "Silene"], "supporting_passage_ids": ["fe", "si"]}
    rec.update(kw)
    return rec


def test_yes_no_answer_is_accepted_once_every_supporting_passage_is_shown(yes_no_retriever):
    from masksearch.training.provenance import quoted_evidence, yes_no_answer

    assert yes_no_answer(["Yes"]) == "yes" and yes_no_answer(["no "]) == "no" and yes_no_answer(["Nobel"]) is None
    r = Recording(yes_no_retriever)
    t = run_multihop_provenance(_yes_no_rec(), r, k=1)
    # "yes" is in no passage: it is a judgement over both supporting passages, so both are searched
    assert len(r.queries) == 2 and "Silene" in r.queries + [d.title for s in t.steps for d in s.documents]
    assert t.answer == "yes" and t.verdicts["grounded"]["ok"] is True and AcceptFilter().check(t) == (True, "accepted")
    # the final thought quotes each supporting passage where it shares the question's words ("genus"),
    # literally, avoiding the parenthesis, in the order of the supporting facts
    assert t.final_thought == (ANSWER_IN_HAND + ' The passage "Ferocactus" says: "is a genus of large '
                               'barrel-shaped cacti, mostly". The passage "Silene" says: "Silene is a '
                               'genus of flowering plants in".')
    assert quoted_evidence(t.final_thought) == ("Ferocactus", "is a genus of large barrel-shaped cacti, mostly")


def test_yes_no_answer_with_a_supporting_passage_not_shown_is_rejected(yes_no_retriever):
    t = run_multihop_provenance(_yes_no_rec(supporting_passage_ids=["fe", "zz"], supporting_titles=["Ferocactus", "Qwxyz"]),
                                yes_no_retriever, k=1)
    assert t.verdicts["grounded"]["reason"] == REJECT_SUPPORT and AcceptFilter().check(t) == (False, "ungrounded")
