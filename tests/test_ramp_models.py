"""RAMP `llm` and `ppl` strategies for real with the embedded SmolLM2-135M (slow: loads the model)."""

from __future__ import annotations

import json

import pytest

from masksearch.data import ramp as R
from masksearch.protocol import MASK_TOKEN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return R._make_model("smollm2", temperature=0.0, max_new_tokens=64)


@pytest.fixture(scope="module")
def passages(corpus_path):
    out = []
    with open(corpus_path, encoding="utf-8") as f:
        for line, _ in zip(f, range(200)):
            out.append(json.loads(line))
    return out


def test_ppl_scorer_finds_nonsense_harder_than_the_obvious(smol):
    scorer = R.PplScorer(smol, batch_size=4)
    ctx = "The capital city of France is [mask], which lies on the river Seine."
    easy, hard = scorer.score([ctx, ctx], ["Paris", "Zorblat Quenvix"])
    assert 0 < easy < hard


def test_ppl_strategy_masks_the_hardest_candidates(smol, passages, tmp_path):
    out = tmp_path / "ppl.jsonl"
    s = R.generate_ramp(passages, out, n=3, strategy="ppl", model=smol, max_masks=2, concurrency=3, progress=False)
    assert s["kept"] == 3
    for line in out.read_text().splitlines():
        r = json.loads(line)
        assert r["strategy"] == "ppl" and 1 <= r["mask_count"] <= 2
        assert r["masked_passage"].count(MASK_TOKEN) == r["mask_count"]
        assert all(sp["nll"] > 0 for sp in r["spans"])
        # the masked spans are the hardest of the usable candidates (as the scorer saw them)
        cands = R.usable_spans(R.rule_spans(r["passage"]), r["passage"], r["title"])
        cands = sorted(cands, key=lambda sp: -R.span_weight(sp))[:12]
        scores = R.PplScorer(smol).score([R.apply_masks(r["passage"], [c]) for c in cands], [c.text for c in cands])
        ranked = sorted(scores, reverse=True)[: r["mask_count"]]
        assert sorted((sp["nll"] for sp in r["spans"]), reverse=True) == pytest.approx(ranked, rel=1e-3, abs=1e-3)


def test_llm_strategy_runs_for_real(smol, passages, tmp_path):
    out = tmp_path / "llm.jsonl"
    s = R.generate_ramp(passages, out, n=2, strategy="llm", model=smol, concurrency=4, progress=False,
                        oversample=2.0)
    # the 135M model is a weak span extractor: every passage is either kept or skipped with a reason
    assert s["processed"] >= 2
    assert s["kept"] + sum(s["skipped"].values()) == s["processed"]
    assert set(s["skipped"]) <= {"unparseable_reply", "no_usable_spans", "duplicate", "starts_with_mask", "model_error"}
    assert s["skipped"].get("model_error", 0) == 0
    for line in out.read_text().splitlines():
        r = json.loads(line)
        assert r["strategy"] == "llm"
        parts = r["masked_passage"].split(MASK_TOKEN)
        assert "".join(p + a for p, a in zip(parts, r["answers"] + [""])) == r["passage"]
