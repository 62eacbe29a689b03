"""The provenance teacher: real search for the masked sentence(s), grounded-or-rejected, same export."""

from __future__ import annotations

import json

import pytest
from test_teacher_fakes import MemoryRetriever

from masksearch.protocol import parse_action
from masksearch.training.export import AcceptFilter, format_problems, run_cot, trajectory_to_sft_row
from masksearch.training.provenance import (ANSWER_IN_HAND, NOT_YET, contains_span, evidence_quote, evidence_quotes,
                                           masked_sentences, run_provenance, sentence_query)


def test_masked_sentences_and_query():
    text = "Paris is big. Gustave Eiffel was born in [mask] in 1832. He died in [mask]. The end."
    assert masked_sentences(text) == ["Gustave Eiffel was born in [mask] in 1832.", "He died in [mask]."]
    assert sentence_query("Gustave Eiffel was born in [mask] in 1832.") == "Gustave Eiffel was born in in 1832"
    assert contains_span("<information>Doc 1 (Title: X) born in Dijon, France</information>", "dijon")
    assert not contains_span("Dijonnaise sauce", "Dijon")  # word boundaries


def test_grounded_run_is_accepted_and_named():
    rec = {"id": "r1", "question": "Gustave Eiffel was born in [mask] in 1832.\n\nFill in the blank.",
           "answers": ["Dijon"], "mask_count": 1, "masked_passage": "Gustave Eiffel was born in [mask] in 1832."}
    retr = MemoryRetriever()
    t = run_provenance(rec, retr, retriever_name="memory")
    assert retr.queries == ["Gustave Eiffel was born in in 1832"]  # a real search for the sentence
    assert t.provenance.teacher == "provenance" and t.provenance.graph == "provenance"
    assert t.provenance.retriever == "memory" and t.provenance.models == {}
    assert t.status == "answered" and t.answer == "Dijon"
    assert t.verdicts["grounded"] == {"ok": True, "missing": []}
    assert [d.id for d in t.steps[0].documents][0] == "p6"  # the real retrieved documents
    assert "Dijon" in t.steps[0].information and t.final_thought.startswith(ANSWER_IN_HAND + ' The passage "')
    # the final thought quotes the shown sentence that holds the answer, word for word
    quote = t.final_thought.split('says: "', 1)[1].split('"', 1)[0]
    assert contains_span(quote, "Dijon") and quote in " ".join(t.steps[0].information.split())
    assert AcceptFilter().check(t) == (True, "accepted")
    msgs = trajectory_to_sft_row(t)["messages"]
    assert format_problems(msgs) == [] and parse_action(msgs[-1]["content"]).answer == "Dijon"


INFO = ("<information>\nDoc 1 (Title: Paris) Paris is the capital. It has the Louvre.\n"
        "Doc 2 (Title: Gustave Eiffel) Eiffel, an engineer of great fame and many bridges across the whole of France, "
        "was born in Dijon on 15 December 1832 to a family of merchants. He died in Paris.\n"
        "Doc 3 (Title: Cut) A truncated document ends in Lyon ...\n</information>")


def test_evidence_quote_is_a_literal_window_of_the_right_sentence():
    title, quote = evidence_quote(INFO, "Dijon", max_words=8)
    assert title == "Gustave Eiffel" and len(quote.split()) == 8
    assert "Dijon" in quote and quote in INFO  # a run of the sentence's own words, around the span
    assert evidence_quote(INFO, "Louvre") == ("Paris", "It has the Louvre.")  # the sentence, not the doc
    assert evidence_quote(INFO, "Paris", prefer=["Gustave Eiffel"]) == ("Gustave Eiffel", "He died in Paris.")
    assert evidence_quote(INFO, "Paris")[0] == "Paris"  # otherwise the first shown document
    assert evidence_quote(INFO, "Marseille") is None
    assert evidence_quote(INFO, "...") is None and evidence_quote(INFO, "Lyon") == ("Cut", "A truncated document ends in Lyon")
    # one quote: a span already inside it is not quoted again, and the quote's own full stop is not doubled
    both = evidence_quotes(INFO, ["Louvre", "Paris"], max_quotes=1)
    assert both == 'The passage "Paris" says: "It has the Louvre".' and evidence_quotes(INFO, ["Rome"]) == ""


def test_ungrounded_run_is_rejected():
    rec = {"id": "r2", "question": "q", "answers": ["Zanzibar"], "mask_count": 1,
           "masked_passage": "The tower was painted by [mask] in 1889."}
    t = run_provenance(rec, MemoryRetriever())
    assert t.verdicts["grounded"] == {"ok": False, "missing": ["Zanzibar"]}
    assert AcceptFilter().check(t) == (False, "ungrounded")


def test_masks_in_two_sentences_search_twice_and_answer_in_order():
    rec = {"id": "r3", "question": "q", "answers": ["Dijon", "Louvre"], "mask_count": 2,
           "masked_passage": "Gustave Eiffel was born in [mask] in 1832. The [mask] is the world's most-visited museum."}
    t = run_provenance(rec, MemoryRetriever())
    assert len(t.steps) == 2 and t.answer == "Dijon | Louvre"
    # the same stop words as the multi-hop teacher: not yet after the first search, then the answer
    assert t.steps[1].thought.startswith(NOT_YET) and t.final_thought.startswith(ANSWER_IN_HAND)
    assert t.verdicts["grounded"]["ok"] and t.verdicts["string"]["em"] == 1
    msgs = trajectory_to_sft_row(t)["messages"]
    assert [m["role"] for m in msgs].count("assistant") == 3 and format_problems(msgs) == []


def test_failed_search_is_rejected_not_fatal():
    rec = {"id": "r4", "question": "q", "answers": ["Dijon"], "masked_passage": "He was born in [mask]."}
    t = run_provenance(rec, MemoryRetriever(fail_word=""))
    assert t.steps[0].error and "index offline" in t.steps[0].error
    assert AcceptFilter().check(t) == (False, "ungrounded")


@pytest.fixture(scope="module")
def ramp_file(tmp_path_factory, corpus_path):
    from masksearch.data.ramp import generate_ramp

    out = tmp_path_factory.mktemp("ramp") / "ramp.jsonl"
    generate_ramp(str(corpus_path), out, n=12, strategy="rules", max_masks=2, seed=7, progress=False)
    return out


def test_provenance_over_the_shared_corpus_with_bm25(ramp_file, bm25_dir, tmp_path):
    """Real RAMP questions from the shared corpus, real BM25: most are grounded, and every accepted
    row's answer spans occur in the information the student is shown."""
    s = run_cot(ramp_file, tmp_path / "out", "provenance", f"bm25:{bm25_dir}", k=5, progress=False)
    assert s["trajectories"] == 12 and s["teachers"] == {"provenance": 12}
    assert s["acceptance_rate"] >= 0.5
    trajs = [json.loads(x) for x in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert all(t["provenance"]["retriever"] == f"bm25:{bm25_dir}" for t in trajs)
    rows = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()}
    assert len(rows) == s["accepted"]
    for t in trajs:
        if t["id"] in rows:
            info = " ".join(m["content"] for m in rows[t["id"]]["messages"] if m["content"].startswith("<information>"))
            assert all(contains_span(info, a) for a in t["golden_answers"])
            assert all(d["id"].startswith("wiki-") for st in t["steps"] for d in st["documents"])
        else:
            assert t["metadata"]["accept_reason"] == "ungrounded"
