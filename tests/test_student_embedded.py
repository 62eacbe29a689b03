"""A real student-graph run: the embedded SmolLM2 (untrained = the Agent-PE baseline) with BM25
over the shared corpus; the exact token stream matches the chat template's rendering."""

from __future__ import annotations

import pytest

from masksearch.protocol import render_messages


@pytest.mark.slow
def test_embedded_model_in_student_graph(embedded_model, bm25_dir, bench_path):
    from masksearch.data.qa import load_qa
    from masksearch.graphs.student import StudentContext, run_student_batch
    from masksearch.retrieval import make_retriever

    examples = load_qa(bench_path("hotpotqa"), limit=2)
    ctx = StudentContext(model=embedded_model, retriever=make_retriever(f"bm25:{bm25_dir}"), k=2, max_turns=2,
                         max_new_tokens=32, info_max_tokens=120)
    trajs = run_student_batch(examples, ctx, concurrency=2, progress=False)
    tok = embedded_model.tokenizer
    for ex, t in zip(examples, trajs):
        assert t.id == ex.id and t.status in {"answered", "turn_cap", "malformed", "length"}, t.reason
        assert t.provenance.graph == "student" and t.provenance.teacher
        assert len(t.completion_ids) == len(t.completion_mask) == len(t.completion_logprobs)
        assert sum(t.completion_mask) > 0
        text = tok.decode(t.prompt_ids + t.completion_ids)
        rendered = tok.apply_chat_template(render_messages(t), tokenize=False)
        assert rendered.startswith(text)  # only the final turn's closing tokens may be missing
        assert len(rendered) - len(text) <= len("<|im_end|>\n")
        # model tokens carry real log-probs; environment tokens 0.0
        assert any(lp < 0 for lp, m in zip(t.completion_logprobs, t.completion_mask) if m)
        assert all(lp == 0.0 for lp, m in zip(t.completion_logprobs, t.completion_mask) if not m)
        for s in t.steps:
            if s.queries and not s.error:
                assert s.information.startswith("<information>") and s.documents
