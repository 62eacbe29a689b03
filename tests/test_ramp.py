"""RAMP generation: masking invariants, span rules, reply parsing, resume, loaders, CLI (no model)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from masksearch.data import ramp as R
from masksearch.data.qa import qa_from_record
from masksearch.protocol import MASK_TOKEN, split_answer

CURIE = ("Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. "
         "Born in Warsaw on 7 November 1867, she moved to Paris in 1891 and studied at the University of Paris. "
         "In 1903 she shared the Nobel Prize in Physics with Pierre Curie and Henri Becquerel. "
         "She won a second Nobel Prize, in Chemistry, in 1911, for the discovery of polonium and radium. "
         "Her laboratory in Paris later became the Radium Institute, which employed 45 researchers.")


def unmask(masked: str, answers: list[str]) -> str:
    parts = masked.split(MASK_TOKEN)
    assert len(parts) == len(answers) + 1
    return "".join(p + a for p, a in zip(parts, answers)) + parts[-1]


def records_over_seeds(text, title, n=60, **kw):
    recs = [R.mask_passage(text, title, passage_id=f"p{s}", seed=s, **kw) for s in range(n)]
    return [r for r in recs if r is not None]


# ---------------------------------------------------------------------------- masking invariants
def test_answers_in_order_and_equal_to_the_original_text():
    recs = records_over_seeds(CURIE, "Marie Curie")
    assert len(recs) == 60
    for r in recs:
        assert r["masked_passage"].count(MASK_TOKEN) == r["mask_count"] == len(r["answers"])
        assert unmask(r["masked_passage"], r["answers"]) == r["passage"] == " ".join(CURIE.split())
        starts = [s["start"] for s in r["spans"]]
        assert starts == sorted(starts)
        for sp, a in zip(r["spans"], r["answers"]):
            assert r["passage"][sp["start"]:sp["end"]] == a == sp["text"]
        assert r["question"].startswith(r["masked_passage"])
        assert "|" in r["question"] if r["mask_count"] > 1 else "[mask]" in r["question"]


def test_repeated_spans_and_title_spans_are_never_masked():
    recs = records_over_seeds(CURIE, "Marie Curie", n=120)
    answers = Counter(a for r in recs for a in r["answers"])
    # "Paris" and "Nobel Prize" occur twice; "Marie Curie"/"Curie" are the title
    for bad in ("Paris", "Nobel Prize", "Marie Curie", "Pierre Curie", "Curie"):
        assert bad not in answers
    # but other spans are used, numbers/dates among them
    assert {"1903", "1911", "7 November 1867"} & set(answers)
    assert "Warsaw" in answers


def test_only_the_first_occurrence_is_masked_for_model_spans():
    text = "The band Alpha Beta played in Oslo in 1999. Later Oslo hosted them again in 2004 with Gamma."
    spans = R.locate_spans(["Oslo", "1999", "Gamma"], text)
    oslo = [s for s in spans if s.text == "Oslo"][0]
    assert oslo.start == text.index("Oslo")  # first occurrence located
    drops = Counter()
    ok = R.usable_spans(spans, text, "Alpha Beta", drops=drops)
    assert [s.text for s in ok] == ["1999", "Gamma"] and drops["repeated"] == 1
    masked = R.apply_masks(text, ok)
    assert masked.count(MASK_TOKEN) == 2 and masked.count("Oslo") == 2


def test_title_parts_and_title_words_excluded():
    text = "Filler words come first here. The Embassy Nairobi opened in 1964 near Gigiri, with the Nairobi staff of 200."
    ok = R.usable_spans(R.rule_spans(text), text, "Embassy of the United States, Nairobi")
    texts = [s.text for s in ok]
    assert "Embassy Nairobi" not in texts and "Nairobi" not in texts
    assert "1964" in texts and "Gigiri" in texts


@pytest.mark.parametrize("max_masks", [1, 2, 4])
def test_k_bounds(max_masks):
    recs = records_over_seeds(CURIE, "Marie Curie", max_masks and 80, cfg=R.MaskConfig(max_masks=max_masks))
    ks = Counter(r["mask_count"] for r in recs)
    assert set(ks) <= set(range(1, max_masks + 1))
    assert set(ks) == set(range(1, max_masks + 1))  # uniform default reaches every k


def test_mask_distribution_and_truncation_to_usable_spans():
    cfg = R.MaskConfig(max_masks=4, mask_dist=[0, 0, 1, 0])
    assert {r["mask_count"] for r in records_over_seeds(CURIE, "Marie Curie", 30, cfg=cfg)} == {3}
    few = "Some text without much in it, but it was written in 1950 and revised by Jane Doe later."
    recs = records_over_seeds(few, "Nothing", 30, cfg=cfg)
    assert recs and {r["mask_count"] for r in recs} == {2}  # only two usable spans: k capped at 2
    with pytest.raises(R.RampError):
        R.MaskConfig(max_masks=2, mask_dist=[0, 0, 1])


def test_numbers_and_dates_weigh_most():
    rng_counts = Counter()
    for s in range(400):
        recs = R.mask_passage(CURIE, "Marie Curie", passage_id=f"x{s}", seed=s,
                              cfg=R.MaskConfig(max_masks=1))
        rng_counts[recs["spans"][0]["kind"]] += 1
    numeric = rng_counts["year"] + rng_counts["date"] + rng_counts["number"]
    assert numeric > rng_counts["name"] + rng_counts["name1"]
    assert R.span_weight(R.Span("1903", 0, 4, "year")) > R.span_weight(R.Span("Henri Becquerel", 0, 15, "name"))


def test_samples_starting_with_mask_are_dropped():
    text = "Warsaw is a city. It had 1,700,000 people in 2010."
    assert R.mask_passage(text, "x", spans=[R.Span("Warsaw", 0, 6, "name1")]) is None
    ext = R.RulesExtractor(R.MaskConfig(), 0, Counter())
    assert ext._record(R.Candidate("p", "x", text), [R.Span("Warsaw", 0, 6, "name1")]) == "starts_with_mask"


def test_rule_spans_kinds():
    text = ('The film "Blue Moon River" earned $5 million in March 1999 and ran 120 minutes. '
            'It was shot in New South Wales by Ann Lee on 3 June 1998 across 12.5 km of coast, and 4,200 extras.')
    got = {s.text: s.kind for s in R.rule_spans(text)}
    assert got["Blue Moon River"] == "title"
    assert got["$5 million"] == "quantity" and got["120 minutes"] == "quantity" and got["12.5 km"] == "quantity"
    assert got["March 1999"] == "date" and got["3 June 1998"] == "date"
    assert got["New South Wales"] == "name" and got["Ann Lee"] == "name"
    assert got["4,200"] == "number"
    assert "The" not in got and "It" not in got
    spans = R.rule_spans(text)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # non-overlapping, ordered


def test_passage_filters():
    flt = R.PassageFilter(min_words=10, max_words=40)
    assert R.passage_filter_reason("t", "too short here", flt) == "too_short"
    assert R.passage_filter_reason("t", "word " * 50, flt) == "too_long"
    assert R.passage_filter_reason("t", "a | b | c | d " * 3, flt) == "table_like"
    assert R.passage_filter_reason("t", "Mercury may refer to: the planet, the element, the god, a car, a band and more", flt) == "list_like"
    assert R.passage_filter_reason("t", "Apples, pears, plums, figs, kiwis, limes, dates, nuts, oats, rice, corn, beans", flt) == "list_like"
    assert R.passage_filter_reason("t", "1 2 3 4 5 6 7 8 9 10 11 12 and a few words", flt) == "table_like"
    assert R.passage_filter_reason("t", CURIE, R.PassageFilter()) is None


# ---------------------------------------------------------------------------- reply parsing
@pytest.mark.parametrize("reply,expected", [
    ('["Warsaw", "1867"]', ["Warsaw", "1867"]),
    ('Sure! Here are the spans:\n```json\n["Warsaw", "1867"]\n```\nHope this helps.', ["Warsaw", "1867"]),
    ('```\n["Warsaw"]\n```', ["Warsaw"]),
    ('The spans are ["Warsaw", 1867] as requested.', ["Warsaw", "1867"]),
    ('{"spans": ["Warsaw", "Paris"]}', ["Warsaw", "Paris"]),
    ('[{"text": "Warsaw", "type": "place"}, {"span": "1867"}]', ["Warsaw", "1867"]),
    ('Note [1] first: ["Warsaw"]', ["Warsaw"]),  # a non-list bracket before the answer
    ('["Warsaw", "Paris", "Nobel Pri', ["Warsaw", "Paris"]),  # cut off by the token limit
    ('["  Warsaw ", ""]', ["Warsaw"]),
])
def test_parse_messy_replies(reply, expected):
    assert R.parse_span_reply(reply) == expected


@pytest.mark.parametrize("reply", [
    "", "   ", "I cannot find any spans.", "['Warsaw', 'Paris']",  # python literal: not JSON, never eval'd
    "__import__('os').system('echo hi')", '{"answer": 3}', "[Warsaw, Paris]", '["a" "b"] trailing prose',
])
def test_unparseable_replies_raise(reply):
    with pytest.raises(R.SpanParseError):
        R.parse_span_reply(reply)


def test_locate_spans_rejects_absent_and_partial_words():
    drops = Counter()
    got = R.locate_spans(["Warsaw", "Berlin", "ars", '"Paris"'], CURIE, drops)
    assert [s.text for s in got] == ["Warsaw", "Paris"]
    assert drops["not_in_passage"] == 1 and drops["partial_word"] == 1


# ---------------------------------------------------------------------------- driver: files, resume
@pytest.fixture(scope="module")
def small_corpus(corpus_path):
    # the first 600 passages of the shared corpus, as dicts (fast to re-read)
    out = []
    with open(corpus_path, encoding="utf-8") as f:
        for line, _ in zip(f, range(600)):
            out.append(json.loads(line))
    return out


def test_generate_rules_writes_valid_records(small_corpus, tmp_path):
    out = tmp_path / "r.jsonl"
    s = R.generate_ramp(small_corpus, out, n=40, strategy="rules", seed=3, progress=False)
    assert s["kept"] == s["written"] == 40 and not s["exhausted"]
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(recs) == 40 and len({r["id"] for r in recs}) == 40
    assert sum(s["mask_counts"].values()) == 40
    for r in recs:
        assert set(R.RECORD_FIELDS) <= set(r)
        assert r["strategy"] == "rules" and 1 <= r["mask_count"] <= 4
        assert not r["masked_passage"].startswith(MASK_TOKEN)
        assert unmask(r["masked_passage"], r["answers"]) == r["passage"]
        ex = qa_from_record(r)
        assert ex.answer_match == "ordered" and ex.golden_answers == r["answers"] and ex.mask_count == r["mask_count"]
    # deterministic: same seed -> same file; another seed -> other examples
    s2 = R.generate_ramp(small_corpus, tmp_path / "r2.jsonl", n=40, seed=3, progress=False)
    assert (tmp_path / "r2.jsonl").read_text() == out.read_text() and s2["kept"] == 40
    R.generate_ramp(small_corpus, tmp_path / "r3.jsonl", n=40, seed=4, progress=False)
    other = {json.loads(l)["passage_id"] for l in (tmp_path / "r3.jsonl").read_text().splitlines()}
    assert other != {r["passage_id"] for r in recs}


def test_resume_after_simulated_crash_has_no_duplicates(small_corpus, tmp_path):
    full = tmp_path / "full.jsonl"
    R.generate_ramp(small_corpus, full, n=50, seed=1, progress=False)
    lines = full.read_text().splitlines(keepends=True)
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("".join(lines[:17]) + lines[17][: len(lines[17]) // 2])  # torn line, as after a kill
    s = R.generate_ramp(small_corpus, crashed, n=50, seed=1, progress=False)
    assert s["resumed"] == 17 and s["written"] == 33 and s["kept"] == 50
    got = [json.loads(l) for l in crashed.read_text().splitlines()]
    assert len(got) == 50 and len({r["id"] for r in got}) == 50
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, (json.loads(l) for l in lines)))
    assert sum(s["mask_counts"].values()) == 50
    # a third run does nothing
    s3 = R.generate_ramp(small_corpus, crashed, n=50, seed=1, progress=False)
    assert s3["written"] == 0 and s3["resumed"] == 50 and len(crashed.read_text().splitlines()) == 50


def test_shards_partition_the_job(small_corpus, tmp_path):
    ids = []
    for i in range(2):
        s = R.generate_ramp(small_corpus, tmp_path / f"s{i}.jsonl", n=31, seed=0, shard=f"{i}/2", progress=False)
        assert s["target"] == (16 if i == 0 else 15) and s["kept"] == s["target"]
        ids.append({json.loads(l)["passage_id"] for l in (tmp_path / f"s{i}.jsonl").read_text().splitlines()})
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 31
    with pytest.raises(R.RampError):
        R.generate_ramp(small_corpus, tmp_path / "bad.jsonl", n=3, shard="2/2", progress=False)


def test_duplicate_passages_dropped(tmp_path):
    corpus = [{"id": f"d{i}", "title": "Some Page", "text": CURIE} for i in range(5)]
    s = R.generate_ramp(corpus, tmp_path / "d.jsonl", n=5, progress=False, max_masks=1,
                        mask_dist=[1], oversample=1.0)
    # identical passages mask to different spans per id, but same-span repeats must be dropped
    recs = [json.loads(l) for l in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len({r["masked_passage"] for r in recs}) == len(recs)
    assert s["kept"] + s["skipped"].get("duplicate", 0) == 5 or s["exhausted"]


def test_unknown_strategy_and_missing_corpus(tmp_path):
    with pytest.raises(R.UnknownSpecError):
        R.generate_ramp([], tmp_path / "x.jsonl", n=1, strategy="magic", progress=False)
    with pytest.raises(R.RampError, match="corpus not found"):
        R.generate_ramp(str(tmp_path / "nope.jsonl"), tmp_path / "x.jsonl", n=1, progress=False)


# ---------------------------------------------------------------------------- llm strategy (fake model)
class FakeChat:
    """Duck-typed chat model: canned replies by passage, records how many calls overlap."""

    def __init__(self):
        self.in_flight = self.max_in_flight = self.calls = 0

    async def ainvoke(self, messages):
        from langchain_core.messages import AIMessage

        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        text = messages[-1].content
        if "Warsaw" in text:
            return AIMessage(content='Here you go:\n```json\n["Warsaw", "1867", "Henri Becquerel", "Atlantis"]\n```')
        return AIMessage(content="Sorry, I can't help with that.")


def test_llm_strategy_with_a_fake_model(tmp_path):
    corpus = [{"id": "curie", "title": "Marie Curie", "text": CURIE},
              {"id": "other", "title": "Other", "text": CURIE.replace("Warsaw", "Krakow")}]
    corpus += [{"id": f"o{i}", "title": "O", "text": CURIE.replace("Warsaw", f"Town{i}")} for i in range(8)]
    fake = FakeChat()
    s = R.generate_ramp(corpus, tmp_path / "l.jsonl", n=10, strategy="llm", model=fake, concurrency=3, progress=False)
    assert s["kept"] == 1 and s["skipped"]["unparseable_reply"] == 9 and s["exhausted"]
    assert s["span_drops"]["not_in_passage"] == 1  # "Atlantis"
    assert 1 < fake.max_in_flight <= 3
    rec = json.loads((tmp_path / "l.jsonl").read_text())
    assert rec["strategy"] == "llm" and set(rec["answers"]) <= {"Warsaw", "1867", "Henri Becquerel"}
    assert unmask(rec["masked_passage"], rec["answers"]) == rec["passage"]


def test_llm_prompt_asks_for_json_spans():
    p = R.LLM_USER_PROMPT.format(passage="X")
    assert "JSON list" in p and "finest-grained" in p and "exactly" in p


# ---------------------------------------------------------------------------- readers
def test_load_ramp_and_curriculum(small_corpus, tmp_path):
    out = tmp_path / "c.jsonl"
    R.generate_ramp(small_corpus, out, n=30, progress=False)
    with open(out, "a") as f:
        f.write("not json\n")
    ds = R.load_ramp(out)
    assert len(ds) == 30 and set(R.RECORD_FIELDS) <= set(ds.column_names)
    ordered = R.curriculum(ds)
    assert list(ordered["mask_count"]) == sorted(ds["mask_count"])
    buckets = R.curriculum(str(out), mode="buckets")
    assert sorted(buckets) == sorted(set(ds["mask_count"]))
    assert all(all(r["mask_count"] == k for r in rows) for k, rows in buckets.items())
    assert sum(len(v) for v in buckets.values()) == 30
    capped = R.curriculum(ds, mode="order", seed=1, max_masks=2)
    assert max(capped["mask_count"]) <= 2 and len(capped) == sum(1 for c in ds["mask_count"] if c <= 2)
    with pytest.raises(R.RampError):
        R.load_ramp(tmp_path / "missing.jsonl")


class FakeRetriever:
    def __init__(self, hits):
        self.hits = hits

    def search_many(self, queries, k):
        from langchain_core.documents import Document

        assert all(MASK_TOKEN not in q for q in queries)
        return [[Document(page_content="", metadata={"id": self.hits.get(q[:20], "zzz")})] for q in queries]


def test_solvability_report_counts_per_mask_count():
    recs = [{"id": str(i), "passage_id": f"p{i}", "question": "q", "answers": ["a"] * (1 + i % 2),
             "mask_count": 1 + i % 2, "masked_passage": f"passage number {i} [mask] text"} for i in range(6)]
    hits = {f"passage number {i} text"[:20]: f"p{i}" for i in (0, 1, 2)}
    rep = R.solvability_report(recs, FakeRetriever(hits), k=5)
    assert rep["n"] == 6 and rep["solvable"] == 3 and rep["rate"] == 0.5
    assert rep["by_mask_count"][1] == {"n": 3, "solvable": 2, "rate": round(2 / 3, 4)}
    assert rep["by_mask_count"][2]["solvable"] == 1
    short = R.solvability_report(recs, FakeRetriever(hits), k=5, query_words=2)  # "passage number"
    assert short["n"] == 6 and short["solvable"] == 0


def test_solvability_with_bm25_on_the_shared_corpus(small_corpus, bm25_dir, tmp_path):
    out = tmp_path / "s.jsonl"
    R.generate_ramp(small_corpus, out, n=40, progress=False)
    rep = R.solvability_report(out, f"bm25:{bm25_dir}", k=5)
    assert rep["n"] == 40 and rep["rate"] >= 0.8  # the source passage is findable by searching


# ---------------------------------------------------------------------------- CLI
def test_cli_ramp_and_resume(corpus_path, tmp_path, capsys):
    from masksearch.cli import main

    out = tmp_path / "cli.jsonl"
    args = ["ramp", "--corpus", str(corpus_path), "--out", str(out), "--n", "25", "--no-progress", "--max-masks", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kept 25/25" in text and "mask counts:" in text and "skipped:" in text
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(recs) == 25 and max(r["mask_count"] for r in recs) <= 3
    assert main(args + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["resumed"] == 25 and s["written"] == 0
    assert len(out.read_text().splitlines()) == 25
    assert main(["ramp", "--corpus", str(tmp_path / "nope"), "--out", str(out), "--n", "2"]) == 2
    assert "corpus not found" in capsys.readouterr().err


def test_answers_round_trip_through_the_protocol(small_corpus, tmp_path):
    from masksearch.protocol import join_answers

    out = tmp_path / "p.jsonl"
    R.generate_ramp(small_corpus, out, n=30, progress=False)
    for line in out.read_text().splitlines():
        r = json.loads(line)
        if all("|" not in a for a in r["answers"]):
            assert split_answer(join_answers(r["answers"])) == r["answers"]
