"""A real teacher-graph run: the embedded model for every role, BM25 over the shared corpus, a few
RAMP examples.  The 135M model is no real teacher (it rarely answers right); what is checked is
that every run ends in a well-formed, serialisable trajectory with real documents and raw calls."""

from __future__ import annotations

import json

import pytest

from masksearch.trajectory import Trajectory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ramp_examples(tmp_path_factory, corpus_path):
    from masksearch.data.ramp import generate_ramp

    out = tmp_path_factory.mktemp("ramp-real") / "ramp.jsonl"
    generate_ramp(str(corpus_path), out, n=1, strategy="rules", max_masks=1, seed=11, progress=False)
    return out


def test_real_teacher_run_produces_well_formed_trajectories(ramp_examples, bm25_dir, embedded_model, tmp_path):
    from masksearch.graphs.teacher import TeacherContext
    from masksearch.training.export import AcceptFilter, format_problems, run_cot, trajectory_to_sft_row

    ctx = TeacherContext(models=embedded_model, max_turns=1, k=3, max_docs=6, retries=0, name="smollm2-test")
    s = run_cot(ramp_examples, tmp_path / "out", ctx, f"bm25:{bm25_dir}", concurrency=2, progress=False,
                accept="none")
    assert s["trajectories"] == 1 and s["teacher"] == "smollm2-test"
    lines = (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()
    trajs = [Trajectory.from_json(x) for x in lines]
    assert len({t.id for t in trajs}) == 1
    for t in trajs:
        assert t.status in ("answered", "turn_cap", "malformed"), (t.status, t.reason)
        assert t.status == "answered" or t.reason
        assert t.llm_calls and t.llm_calls[0]["role"] == "planner" and t.llm_calls[0]["output"] is not None
        assert t.provenance.graph == "teacher" and t.provenance.retriever == f"bm25:{bm25_dir}"
        assert t.metadata["mask_count"] == 1 and t.metadata["answer_match"] == "ordered"
        assert "string" in t.verdicts
        for st in t.steps:
            assert st.queries and st.information.startswith("<information>")
            assert all(d.id.startswith("wiki-") for d in st.documents)
        assert json.loads(t.to_json())["id"] == t.id
        if t.answer is not None and t.steps:
            # an answered run with at least one search renders to a protocol-valid row
            assert format_problems(trajectory_to_sft_row(t)["messages"]) == []
            assert AcceptFilter.parse("none").check(t) == (True, "accepted")
