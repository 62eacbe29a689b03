"""Self-evolving distillation end to end on a tiny model: round-0 provenance teacher, two training
rounds, the round-1 student's judged runs, per-round reports naming whose data was used, resume."""

from __future__ import annotations

import json

import pytest

from test_sft import RAMP
from test_student_graph import TinyRetriever


def test_judge_student_run_requires_grounded_correct_answer():
    from masksearch.protocol import answer_turn, information_block, search_turn
    from masksearch.training.distill import format_valid, judge_student_run
    from masksearch.trajectory import Provenance, Step, Trajectory

    def traj(answer, info):
        return Trajectory(id="x", question="[mask] is the capital of France.", golden_answers=["Paris"],
                          steps=[Step(thought="t", queries=["capital France"], raw=search_turn("t", ["capital France"]),
                                      information=information_block(info))],
                          answer=answer, final_thought="f", final_raw=answer_turn("f", answer), status="answered",
                          provenance=Provenance(graph="student", teacher="s"), metadata={"answer_match": "all"})

    good = traj("Paris", "Doc 1 (Title: Paris) Paris is the capital of France.")
    assert judge_student_run(good) == (True, "accepted") and good.metadata["accepted"] and format_valid(good)
    wrong = traj("Lyon", "Doc 1 (Title: Paris) Paris is the capital of France.")
    assert judge_student_run(wrong)[0] is False
    ungrounded = traj("Paris", "Doc 1 (Title: Rome) Rome is in Italy.")
    ok, why = judge_student_run(ungrounded)
    assert not ok and why == "ungrounded"


@pytest.mark.slow
def test_distill_two_rounds_tiny(tiny_model_path, tmp_path):
    from trl import SFTConfig

    from masksearch.training.config import DistillArguments, SFTScriptArguments
    from masksearch.training.distill import run_distill, summarize_report

    ramp = tmp_path / "ramp.jsonl"
    recs = [dict(r, id=f"{r['id']}-{i}") for i in range(3) for r in RAMP]  # 12 questions
    ramp.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    args = DistillArguments(rounds=2, workdir=str(tmp_path / "work"), teacher="provenance", retriever=TinyRetriever(),
                            ramp_file=str(ramp), teacher_questions=6, student_questions=3, heldout_questions=3,
                            k=3, max_turns=2, max_new_tokens=8, concurrency=4)
    script = SFTScriptArguments(model=f"hf:{tiny_model_path}", plot=True)
    cfg = SFTConfig(output_dir=str(tmp_path / "unused"), max_steps=2, per_device_train_batch_size=2,
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                    gradient_checkpointing=False, max_length=2048)
    report = run_distill(args, script, cfg, progress=False)
    r0, r1, r2 = report["rounds"]
    assert r0["teacher"] == "provenance" and r0["questions"] == 6
    assert 0 < r0["accepted"] < 6  # the Madrid questions are not grounded in the tiny corpus
    assert r1["trained_on_teachers"] == {"provenance": r0["accepted"]} and r1["dataset_size"] == r0["accepted"]
    se = r1["self_evolution"]
    assert se["student"] == "student-round1" and se["questions"] == 3
    assert 0.0 <= se["acceptance_rate"] <= 1.0
    assert r2["dataset_size"] == r0["accepted"] + se["accepted"]
    assert r2["self_evolution"] == {}  # the last round trains and is measured, nothing more
    assert r1["heldout"]["n"] == 3 and "token_recall" in r1["heldout"]
    assert (tmp_path / "work" / "round1" / "model" / "config.json").exists()
    assert (tmp_path / "work" / "loss_rounds.png").exists()
    lines = summarize_report(report)
    assert "provenance" in lines[0] and "provenance" in lines[1]
    # student runs record which student made them
    from masksearch.trajectory import read_trajectories

    runs = list(read_trajectories(str(tmp_path / "work" / "round1" / "student" / "trajectories.jsonl")))
    assert {t.provenance.teacher for t in runs} == {"student-round1"} and {t.provenance.round for t in runs} == {1}
    # a rerun resumes: nothing is retrained
    mtime = (tmp_path / "work" / "round2" / "model" / "config.json").stat().st_mtime
    again = run_distill(args, script, cfg, progress=False)
    assert [r.get("dataset_size") for r in again["rounds"]] == [r.get("dataset_size") for r in report["rounds"]]
    assert (tmp_path / "work" / "round2" / "model" / "config.json").stat().st_mtime == mtime
