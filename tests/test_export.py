"""Trace export: SFT rows, their assistant-only mask (token by token), accept filters, the cot job
(resume without duplicates), and the CLI faces."""

from __future__ import annotations

import json

import pytest
from test_teacher_fakes import MemoryRetriever, ScriptedChatModel

from masksearch.graphs.teacher import TeacherContext, run_teacher
from masksearch.protocol import STUDENT_SYSTEM_PROMPT, parse_action
from masksearch.training.export import (AcceptFilter, format_problems, parse_teacher_spec, run_cot,
                                        summarize_trajectories, trajectory_to_sft_row)
from masksearch.trajectory import Trajectory

PLAN = "<think>I need the builder of the tower.</think>\n<query>who built the Eiffel Tower</query>"
REWRITE = "<queries>\nEiffel Tower builder\nGustave Eiffel company\nEiffel Tower construction\n</queries>"
NEXT = "<think>Now where he was born.</think><next>Gustave Eiffel birthplace</next>"
ANSWER = "<think>Doc 1 says Dijon.</think>\n<answer>Dijon</answer>"


def two_step_traj() -> Trajectory:
    m = ScriptedChatModel(scripts={"planner": [PLAN], "rewriter": [REWRITE], "observer": [NEXT, ANSWER]})
    return run_teacher({"id": "q1", "question": "Where was the builder of the Eiffel Tower born?",
                        "golden_answers": ["Dijon"]}, TeacherContext(models=m, retriever=MemoryRetriever()))


def test_sft_row_is_trl_conversational_in_the_student_protocol():
    t = two_step_traj()
    assert t.status == "answered"
    msgs = trajectory_to_sft_row(t)["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == STUDENT_SYSTEM_PROMPT
    assert msgs[1]["content"] == t.question
    a1 = parse_action(msgs[2]["content"])
    assert a1.kind == "search" and a1.queries == ["who built the Eiffel Tower"] and not a1.trailing
    assert a1.think == "I need the builder of the tower."
    assert msgs[2]["content"].startswith("<think>") and "</think>\n<search>" in msgs[2]["content"]
    assert msgs[3]["content"] == t.steps[0].information  # exactly what the teacher saw
    assert parse_action(msgs[4]["content"]).queries == ["Gustave Eiffel birthplace"]
    last = parse_action(msgs[6]["content"])
    assert last.kind == "answer" and last.answer == "Dijon" and last.think == "Doc 1 says Dijon."
    assert format_problems(msgs) == []
    # every rewritten query, one per line
    msgs_all = trajectory_to_sft_row(t, search_queries="all")["messages"]
    assert parse_action(msgs_all[2]["content"]).queries == t.steps[0].queries and len(t.steps[0].queries) == 4
    # teacher role outputs never leak into the rows
    assert "<query>" not in json.dumps(msgs) and "<queries>" not in json.dumps(msgs)


def test_unanswered_runs_do_not_export():
    t = two_step_traj()
    t.answer, t.status = None, "turn_cap"
    with pytest.raises(ValueError):
        trajectory_to_sft_row(t)
    assert AcceptFilter().check(t) == (False, "status:turn_cap")


def test_accept_filter_conditions():
    t = two_step_traj()
    assert AcceptFilter().check(t) == (True, "accepted")
    assert AcceptFilter.parse("em,max_turns=1").check(t) == (False, "too_many_turns")
    t.verdicts["string"] = {"em": 0, "recall": 0.5}
    assert AcceptFilter.parse("em").check(t) == (False, "verdict:em")
    assert AcceptFilter.parse("recall:0.5").check(t)[0] is True
    assert AcceptFilter.parse("recall").check(t) == (False, "verdict:recall")
    assert AcceptFilter.parse("llm").check(t) == (False, "verdict:llm")
    t.verdicts["llm"] = {"correct": True}
    assert AcceptFilter.parse("em_or_llm").check(t)[0] is True
    t.verdicts["grounded"] = {"ok": False, "missing": ["Dijon"]}
    assert AcceptFilter.parse("none").check(t) == (False, "ungrounded")
    assert AcceptFilter.parse("none,grounded=0").check(t)[0] is True
    t.steps = []
    assert AcceptFilter.parse("none,grounded=0").check(t) == (False, "no_search")
    with pytest.raises(ValueError):
        AcceptFilter.parse("bogus")


def test_format_problems_catches_broken_rows():
    t = two_step_traj()
    msgs = trajectory_to_sft_row(t)["messages"]
    bad = [dict(m) for m in msgs]
    bad[2]["content"] = "<think>x</think> no action"
    assert any("expected search" in p for p in format_problems(bad))
    bad = [dict(m) for m in msgs]
    bad[3]["content"] = "results: ..."
    assert any("<information>" in p for p in format_problems(bad))
    assert "does not end with an answer" in format_problems(msgs[:-1])


@pytest.fixture(scope="module")
def student_tokenizer():
    from transformers import AutoTokenizer

    from masksearch.models.embedded import materialize_embedded
    from masksearch.protocol import ensure_student_template

    tok = AutoTokenizer.from_pretrained(materialize_embedded())
    return ensure_student_template(tok)


@pytest.mark.slow
def test_assistant_mask_token_by_token(student_tokenizer):
    """Only the assistant turns are trainable: checked against transformers' own generation-marker
    mask, and by decoding every masked run back to an assistant turn."""
    from masksearch.protocol import tokenize_messages

    tok = student_tokenizer
    t = two_step_traj()
    msgs = trajectory_to_sft_row(t)["messages"]
    enc = tokenize_messages(tok, msgs)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    # 1) the independent oracle: the {% generation %} markers of the student template
    ref = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert list(ref["input_ids"]) == ids
    assert [int(x) for x in ref["assistant_masks"]] == mask  # token by token
    # 2) contiguous runs of 1 decode to exactly the assistant turns (+ their end token), in order
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    assistant = [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
    assert [tok.decode(r) for r in runs] == assistant
    # 3) nothing of the system prompt, question or <information> is trainable
    env_text = tok.decode([i for i, m in zip(ids, mask) if not m])
    for m in msgs:
        if m["role"] != "assistant":
            assert m["content"] in env_text
    for i, (tid, m) in enumerate(zip(ids, mask)):
        piece = tok.decode([tid])
        if piece in ("<|im_start|>", "information", "<information>"):
            assert m == 0, (i, piece)


def _write(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")


RAMP = [
    {"id": "r1", "question": "Gustave Eiffel was born in [mask] in 1832.", "answers": ["Dijon"], "mask_count": 1,
     "masked_passage": "Gustave Eiffel was born in [mask] in 1832."},
    {"id": "r2", "question": "The [mask] is the world's most-visited museum, in [mask].", "answers": ["Louvre", "Paris"],
     "mask_count": 2, "masked_passage": "The [mask] is the world's most-visited museum, in [mask]."},
    {"id": "r3", "question": "Zanzibar is a [mask] place.", "answers": ["lovely"], "mask_count": 1,
     "masked_passage": "Zanzibar is a [mask] place."},
    {"id": "r4", "question": "Paris is the capital and most populous city of [mask].", "answers": ["France"],
     "mask_count": 1, "masked_passage": "Paris is the capital and most populous city of [mask]."},
]


def test_cot_provenance_resume_leaves_no_duplicates(tmp_path):
    inp = tmp_path / "ramp.jsonl"
    _write(inp, RAMP)
    out = tmp_path / "out"
    s1 = run_cot(inp, out, "provenance", MemoryRetriever(), limit=2, progress=False)
    assert s1["trajectories"] == 2
    # simulate a kill: a torn last line and an accepted row lost before it reached sft.jsonl
    with open(out / "trajectories.jsonl", "a") as f:
        f.write('{"id": "r3", "question": "torn')
    (out / "sft.jsonl").write_text("")
    s2 = run_cot(inp, out, "provenance", MemoryRetriever(), progress=False)
    trajs = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert sorted(t["id"] for t in trajs) == ["r1", "r2", "r3", "r4"]  # no duplicates, torn line redone
    assert s2["resumed"] == 2 and s2["new_this_run"] == 2 and s2["trajectories"] == 4
    assert sorted(r["id"] for r in rows) == ["r1", "r2", "r4"]  # r3's span is nowhere: rejected
    assert s2["rejected_by_reason"] == {"ungrounded": 1} and s2["acceptance_rate"] == 0.75
    assert all(t["provenance"]["teacher"] == "provenance" for t in trajs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accepted"] == 3 and summary["teachers"] == {"provenance": 4}
    # a third run has nothing left to do
    s3 = run_cot(inp, out, "provenance", MemoryRetriever(), progress=False)
    assert s3["new_this_run"] == 0
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 4


def test_cot_llm_teacher_concurrent_counts(tmp_path):
    inp = tmp_path / "qa.jsonl"
    _write(inp, [{"id": f"q{i}", "question": "Where was the builder of the Eiffel Tower born?",
                  "golden_answers": ["Dijon" if i % 2 == 0 else "Lyon"]} for i in range(6)] + [{"bad": 1}])
    m = ScriptedChatModel(scripts={"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]})
    s = run_cot(inp, tmp_path / "out", m, MemoryRetriever(), concurrency=3, progress=False)
    assert s["trajectories"] == 6 and s["accepted"] == 3 and s["rejected_by_reason"] == {"verdict:em": 3}
    assert s["input_lines_skipped"] == 1 and s["by_status"] == {"answered": 6}
    assert s["mean_turns"] == 1.0 and s["teacher"] == "llm:scripted"
    rows = [json.loads(x) for x in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["q0", "q2", "q4"]
    trajs = [Trajectory.from_json(x) for x in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert all(t.llm_calls and t.metadata["accept_reason"] for t in trajs)


def test_summarize_trajectories_rechecks_a_file_as_it_stands(tmp_path):
    inp = tmp_path / "ramp.jsonl"
    _write(inp, RAMP)
    out = tmp_path / "out"
    run_cot(inp, out, "provenance", MemoryRetriever(), progress=False)
    path = out / "trajectories.jsonl"
    s = summarize_trajectories(path)
    assert s["trajectories"] == 4 and s["accepted"] == 3 and s["rejected_by_reason"] == {"ungrounded": 1}
    assert summarize_trajectories(path, ids={"r1", "r3"})["accepted"] == 1  # only those runs
    # the rule is applied afresh: with no verdict and no grounding check every answered run passes
    assert summarize_trajectories(path, accept="none,grounded=0")["accepted"] == 4


def test_teacher_spec_parsing():
    assert parse_teacher_spec("smollm2") == "smollm2"
    assert parse_teacher_spec("planner=openai:gpt-4o, default=smollm2") == {"planner": "openai:gpt-4o",
                                                                            "default": "smollm2"}
    with pytest.raises(ValueError):
        parse_teacher_spec("boss=x")


def test_cli_graph_draw(tmp_path, capsys):
    import shutil

    from masksearch.cli import main

    assert main(["graph", "draw", "teacher", "--format", "ascii"]) == 0
    out = capsys.readouterr().out
    for n in ("planner", "rewriter", "search", "merge", "observer", "judge"):
        assert f"[{n}]" in out
    assert "[rewriter] -.-> [judge]" in out and "[search] --> [merge]" in out
    assert main(["graph", "draw", "teacher", "--format", "mermaid", "--out", str(tmp_path / "g.mmd")]) == 0
    assert "observer -.-> planner" in (tmp_path / "g.mmd").read_text()
    if shutil.which("dot"):
        assert main(["graph", "draw", "teacher", "--format", "png", "--out", str(tmp_path / "g.png")]) == 0
        assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_cot_bad_input_is_one_clear_error(tmp_path, capsys):
    from masksearch.cli import main

    rc = main(["cot", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"),
               "--retriever", "bm25:x", "--teacher", "provenance"])
    assert rc == 2 and "no such file" in capsys.readouterr().err
