"""The two-stage pipeline: the fixed evaluation split is never trained on, stage 2 starts from
stage 1's weights, finished stages are skipped, and the ablation report pairs rows correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masksearch.data.benchmarks import (EvalLeakError, check_no_eval_ids, discover_eval_files, eval_split_ids,
                                        split_pool)
from masksearch.pipelines.two_stage import Pipeline, PipelineConfig, PipelineError, StageConfig, build_downstream


def test_eval_split_is_fixed_by_hashed_id(bench_path, tmp_path):
    ids = [f"q{i}" for i in range(100)]
    s = eval_split_ids(ids, 10)
    assert len(s) == 10 and s == eval_split_ids(list(reversed(ids)), 10)  # not the file order
    assert s <= eval_split_ids(ids, 20)  # a larger split contains the smaller
    assert s != eval_split_ids(ids, 10, salt="other")
    info = split_pool(bench_path("hotpotqa"), 60, tmp_path)
    held = [json.loads(x)["id"] for x in Path(info["heldout"]).read_text().splitlines()]
    train = [json.loads(x)["id"] for x in Path(info["train"]).read_text().splitlines()]
    assert len(held) == 60 and len(train) == 247 and not set(held) & set(train)
    # the documented split: the 60 ids with the smallest sha256("masksearch-eval-v1:" + id)
    assert set(held) == eval_split_ids(held + train, 60)


def test_leaks_are_refused(tmp_path):
    with pytest.raises(EvalLeakError, match="held-out evaluation split"):
        check_no_eval_ids(["a", "b"], {"b"})
    check_no_eval_ids(["a"], {"b"})


def test_downstream_builder_filters_eval_ids(bench_path, bm25_dir, tmp_path):
    info = split_pool(bench_path("hotpotqa"), 60, tmp_path / "split")
    held = {json.loads(x)["id"] for x in Path(info["heldout"]).read_text().splitlines()}
    # hand the builder the whole pool, eval questions included: they are filtered out
    rep = build_downstream(bench_path("hotpotqa"), tmp_path / "ds", held, retriever=f"bm25:{bm25_dir}",
                           limit=None)
    assert rep["filtered_eval_ids"] == 60 and rep["questions"] == 247
    ids = {json.loads(x)["id"] for x in (tmp_path / "ds" / "trajectories.jsonl").read_text().splitlines()}
    assert ids and not ids & held
    assert rep["teacher"]["teacher"] == "multihop-provenance" and rep["teacher"]["accepted"] > 150


def test_recipe_validation(tmp_path):
    with pytest.raises(PipelineError, match="neither 'base' nor a stage"):
        PipelineConfig(out=str(tmp_path), stages=[StageConfig("a", init="nope")]).validate()
    with pytest.raises(PipelineError, match="kind must be"):
        PipelineConfig(out=str(tmp_path), stages=[StageConfig("a", kind="ppo")]).validate()


def test_stage_refuses_leaked_downstream_rows(bench_path, bm25_dir, tmp_path):
    cfg = PipelineConfig(out=str(tmp_path), retriever=f"bm25:{bm25_dir}", eval_n=60)
    pipe = Pipeline(cfg)
    traj_file = pipe.downstream_trajectories()
    # smuggle an evaluation question into the downstream trajectories: the stage must refuse
    held_id = sorted(pipe.eval_ids())[0]
    first = json.loads(traj_file.read_text().splitlines()[0])
    first["id"] = held_id
    first["metadata"]["accepted"] = True
    with open(traj_file, "a") as f:
        f.write(json.dumps(first) + "\n")
    with pytest.raises(EvalLeakError):
        pipe._rows("downstream")


def test_discover_eval_files(tmp_path):
    for name in ("hotpotqa.heldout.jsonl", "2wikimultihopqa.dev.jsonl", "musique.dev.jsonl",
                 "musique_qaonly.dev.jsonl", "notes.txt"):
        (tmp_path / name).write_text("")
    assert discover_eval_files(tmp_path) == {"hotpotqa": str(tmp_path / "hotpotqa.heldout.jsonl"),
                                             "2wiki": str(tmp_path / "2wikimultihopqa.dev.jsonl"),
                                             "musique": str(tmp_path / "musique.dev.jsonl")}


@pytest.mark.slow
def test_stage_two_loads_stage_one_weights(tiny_model_path, bm25_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    stages = [
        StageConfig("s1", "sft", "base", "ramp", max_steps=2, learning_rate=1e-2, batch_size=2, max_length=512),
        # learning rate 0: stage 2's weights are exactly what it started from
        StageConfig("s2", "sft", "s1", "downstream", max_steps=1, learning_rate=0.0, batch_size=2, max_length=512),
        StageConfig("d", "sft", "base", "downstream", max_steps=1, learning_rate=0.0, batch_size=2, max_length=512),
    ]
    cfg = PipelineConfig(out=str(tmp_path / "run"), model=str(tiny_model_path), retriever=f"bm25:{bm25_dir}",
                         ramp_n=8, stages=stages)
    pipe = Pipeline(cfg)
    state = pipe.run(skip_evals=True)
    rep2 = json.loads((tmp_path / "run" / "stages" / "s2" / "stage.json").read_text())
    assert rep2["init"] == "s1" and rep2["init_checkpoint"] == str(tmp_path / "run" / "stages" / "s1")
    assert state["stages"]["d"]["init_checkpoint"] == str(tiny_model_path)
    w = {n: load_file(tmp_path / "run" / "stages" / n / "model.safetensors") for n in ("s1", "s2", "d")}
    base = load_file(Path(tiny_model_path) / "model.safetensors")
    key = next(k for k in base if k.endswith("q_proj.weight"))
    assert not torch.equal(w["s1"][key], base[key])  # stage 1 trained
    assert torch.equal(w["s2"][key], w["s1"][key])  # stage 2 started from stage 1
    assert torch.equal(w["d"][key], base[key])  # downstream-only started from the base model
    # a rerun skips the finished stages
    mtime = (tmp_path / "run" / "stages" / "s2" / "model.safetensors").stat().st_mtime
    Pipeline(cfg).run(skip_evals=True)
    assert (tmp_path / "run" / "stages" / "s2" / "model.safetensors").stat().st_mtime == mtime


def _write_preds(root: Path, row: str, bench: str, preds: dict[str, str], gold: str = "paris") -> None:
    from masksearch.trajectory import Trajectory

    d = root / "eval" / row / bench
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "predictions.jsonl", "w") as f:
        for qid, p in preds.items():
            t = Trajectory(id=qid, question=f"capital {qid}?", golden_answers=[gold], answer=p, status="answered")
            f.write(json.dumps({"id": qid, "prediction": p, "golden_answers": [gold], "answer_match": "any",
                                "metrics": {"token_recall": 0.123}, "trajectory": t.to_dict()}) + "\n")


def test_ablation_report_rescores_and_pairs(tmp_path):
    from masksearch.pipelines.ablation import ROWS, ablation_report

    right, wrong = "Paris", "Rome"
    _write_preds(tmp_path, "agent-pe", "hotpotqa", {"a": wrong, "b": wrong, "c": wrong, "d": wrong})
    _write_preds(tmp_path, "rag-pe", "hotpotqa", {"a": right, "b": wrong, "c": wrong, "d": wrong})
    # downstream-sft lacks question d: every row is then scored on a, b, c only
    _write_preds(tmp_path, "downstream-sft", "hotpotqa", {"a": right, "b": right, "c": wrong})
    _write_preds(tmp_path, "ramp+downstream-sft", "hotpotqa", {"a": right, "b": right, "c": right, "d": right})
    _write_preds(tmp_path, "agent-pe", "bamboogle", {"x": "the paris"})
    rep = ablation_report(tmp_path, n_boot=200)
    rows = rep["rows"]
    # stored metrics (0.123) are ignored: everything is rescored from the predictions
    assert rows["agent-pe"]["hotpotqa"] == 0.0 and rows["rag-pe"]["hotpotqa"] == pytest.approx(33.33)
    assert rows["downstream-sft"]["hotpotqa"] == pytest.approx(66.67)
    assert rows["ramp+downstream-sft"]["hotpotqa"] == 100.0 and rep["n_questions"]["hotpotqa"] == 3
    assert rows["agent-pe"]["bamboogle"] == 100.0 and rows["agent-pe"]["avg"] == 50.0
    assert rows["rag-pe"]["bamboogle"] is None and rep["missing_rows"] == [ROWS[4]]
    d = rep["diffs"]["ramp+downstream-sft - downstream-sft"]
    assert d["mean"] == pytest.approx(33.33) and d["per_benchmark"]["hotpotqa"]["n"] == 3
    assert d["ci95"][0] >= 0.0 and d["ci95"][1] == pytest.approx(100.0)
    assert set(rep["metrics"]) == {"em", "f1"} and rep["metrics"]["em"]["rows"]["rag-pe"]["hotpotqa"] == pytest.approx(33.33)
    assert (tmp_path / "report" / "chart.png").exists() and "Token recall" in (tmp_path / "report" / "table.md").read_text()
    assert "capital" in (tmp_path / "report" / "samples.md").read_text()


def test_budget_plan_gives_both_downstream_rows_the_same_steps():
    from masksearch.pipelines.ablation import ablation_config, plan_budget

    plan = plan_budget(20, 35.0)
    # 40 % / 20 % / 20 % of 1200 s at 35 s a step; GRPO steps cost 2.6 SFT steps
    assert (plan["ramp_sft_steps"], plan["downstream_sft_steps"], plan["grpo_steps"]) == (13, 6, 2)
    # the default reference speed (16 s a step): 480/16, 240/16, 240/41.6
    assert [plan_budget(20)[k] for k in ("ramp_sft_steps", "downstream_sft_steps", "grpo_steps")] == [30, 15, 5]
    cfg = ablation_config("runs/x", 20)
    ds = {s.name: s for s in cfg.stages}
    assert ds["downstream-sft"].max_steps == ds["ramp-downstream-sft"].max_steps == 15
    assert ds["downstream-sft"].init == "base" and ds["ramp-downstream-sft"].init == "ramp-sft"
    assert ds["ramp-downstream-grpo"].init == "ramp-downstream-sft"
    assert [e.name for e in cfg.evals] == ["agent-pe", "rag-pe", "downstream-sft", "ramp+downstream-sft",
                                           "ramp+downstream-sft+grpo"]


def test_step_overrides_make_a_new_plan_and_a_clashing_rerun_is_refused(tmp_path):
    from masksearch.pipelines.ablation import ablation_config, parse_steps, resolve_plan
    from masksearch.pipelines.two_stage import PipelineError

    steps = parse_steps("ramp=120, downstream=20")
    assert steps == {"ramp_sft_steps": 120, "downstream_sft_steps": 20}
    for bad in ("ramp=0", "rampp=3", "ramp=x", "grpo"):
        with pytest.raises(PipelineError, match="bad step override"):
            parse_steps(bad)
    plan = resolve_plan(tmp_path, 20, steps, 35.0)
    assert (plan["ramp_sft_steps"], plan["downstream_sft_steps"], plan["grpo_steps"]) == (120, 20, 2)
    assert plan["overridden"] == ["downstream_sft_steps", "ramp_sft_steps"]
    assert json.loads((tmp_path / "plan.json").read_text()) == plan
    assert resolve_plan(tmp_path, 99) == plan  # a rerun reuses the stored plan whatever the budget says
    assert resolve_plan(tmp_path, 20, {"ramp_sft_steps": 120}) == plan  # an agreeing override is fine
    with pytest.raises(PipelineError, match="new --out"):
        resolve_plan(tmp_path, 20, {"ramp_sft_steps": 41})
    ds = {s.name: s.max_steps for s in ablation_config(str(tmp_path), 20, plan=plan).stages}
    assert ds == {"ramp-sft": 120, "ramp-downstream-sft": 20, "downstream-sft": 20, "ramp-downstream-grpo": 2}


def test_stage_lock_is_exclusive_and_taken_over_from_a_dead_owner(tmp_path):
    import subprocess
    import sys
    import threading

    from masksearch.pipelines.two_stage import _Lock

    lock = tmp_path / "locks" / "stage-x.lock"
    order = []
    with _Lock(lock, poll=0.05):
        t = threading.Thread(target=lambda: (_Lock(lock, poll=0.05).__enter__(), order.append("second")))
        t.start()
        t.join(0.3)
        order.append("first-released")
    t.join(5)
    assert order == ["first-released", "second"]  # the second waited for the first
    lock.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # a lock left by a process that is gone
    with _Lock(lock, poll=0.05):
        assert lock.read_text() == str(__import__("os").getpid())


def test_the_in_domain_benchmark_can_take_more_questions(tmp_path):
    """``eval_limit_in_domain`` (the ablation's ``--limit-in-domain``): the downstream pool's
    benchmark gets its own question count, every other benchmark ``eval_limit``."""
    files = {"hotpotqa": "h.jsonl", "musique": "m.jsonl", "2wiki": "w.jsonl"}
    pipe = Pipeline(PipelineConfig(out=str(tmp_path), eval_limit=20, eval_limit_in_domain=50))
    assert pipe.eval_limits(files) == {"hotpotqa": 50, "musique": 20, "2wiki": 20}
    same = Pipeline(PipelineConfig(out=str(tmp_path / "b"), eval_limit=20))
    assert set(same.eval_limits(files).values()) == {20}
    from masksearch.pipelines.ablation import ablation_config

    cfg = ablation_config(str(tmp_path / "c"), 10, eval_limit=5, eval_limit_in_domain=30)
    assert (cfg.eval_limit, cfg.eval_limit_in_domain) == (5, 30)
    grpo = cfg.stage("ramp-downstream-grpo")  # DAPO dynamic sampling, and a cache that is the stage's own
    assert grpo.options["dynamic_sampling"] == "true" and grpo.options["search_cache"].endswith("search_cache.grpo.sqlite")


def test_force_answer_evaluates_the_agent_rows_beside_the_plain_ones(tmp_path):
    """``force_answer`` gives the agent rows their own folder (``eval-forced``), RAG-PE keeps its
    one, and the forced report reads the forced rows and counts how runs ended."""
    from masksearch.pipelines.ablation import ablation_config, ablation_report
    from masksearch.trajectory import Trajectory

    forced = Pipeline(ablation_config(str(tmp_path), 10, force_answer=True))
    plain = Pipeline(ablation_config(str(tmp_path), 10))
    assert forced.eval_out("downstream-sft") == tmp_path / "eval-forced" / "downstream-sft"
    assert forced.eval_out("rag-pe") == plain.eval_out("rag-pe") == tmp_path / "eval" / "rag-pe"
    assert plain.eval_out("downstream-sft") == tmp_path / "eval" / "downstream-sft"
    _write_preds(tmp_path, "rag-pe", "hotpotqa", {"a": "Paris", "b": "Rome"})
    _write_preds(tmp_path, "downstream-sft", "hotpotqa", {"a": "Rome", "b": "Rome"})
    (tmp_path / "eval-forced" / "downstream-sft" / "hotpotqa").mkdir(parents=True)
    with open(tmp_path / "eval-forced" / "downstream-sft" / "hotpotqa" / "predictions.jsonl", "w") as f:
        for qid, meta in (("a", {"forced_answer": True}), ("b", {})):
            t = Trajectory(id=qid, question="q?", golden_answers=["Paris"], answer="Paris", status="answered",
                           metadata=meta)
            f.write(json.dumps({"id": qid, "prediction": "Paris", "golden_answers": ["Paris"], "status": "answered",
                                "num_searches": 2, "trajectory": t.to_dict()}) + "\n")
    rep_plain = ablation_report(tmp_path, n_boot=50)
    rep = ablation_report(tmp_path, n_boot=50, force_answer=True)
    assert rep_plain["rows"]["downstream-sft"]["hotpotqa"] == 0.0
    assert rep["rows"]["downstream-sft"]["hotpotqa"] == 100.0 and rep["rows"]["rag-pe"]["hotpotqa"] == 50.0
    assert rep["outcomes_hotpotqa"]["downstream-sft"] == {"n": 2, "status": {"forced": 1, "answered": 1},
                                                          "searches": 2.0}
    assert (tmp_path / "report-forced" / "table.md").exists() and "forced" in (tmp_path / "report-forced" / "table.md").read_text()


def test_evidence_outcomes_count_what_the_quotes_did():
    from masksearch.pipelines.ablation import evidence_outcomes, run_outcomes
    from masksearch.training.provenance import evidence_quotes, quoted_evidence

    info = "<information>\nDoc 1 (Title: Leinster) Leinster is a province in the east of Ireland.\n</information>"
    right = "I have the answer now. " + evidence_quotes(info, ["the east of Ireland"])
    assert quoted_evidence(right) == ("Leinster", "Leinster is a province in the east of Ireland")
    made_up = 'I have the answer now. The passage "Munster" says: "Munster is in the south".'

    def rec(thought, pred, steps=1):
        return {"prediction": pred, "golden_answers": ["the east of Ireland"], "status": "answered", "num_searches": steps,
                "trajectory": {"final_thought": thought, "steps": [{"information": info}] * steps}}

    records = [rec(right, "the east of Ireland"), rec(right, "Leinster is a province in the east of Ireland", 2),
               rec(made_up, "Munster"), rec("I have the answer now.", "Cork")]
    assert evidence_outcomes(records) == {"one_search": 3, "gold_shown": 4, "quotes": 3, "quote_literal": 2,
                                          "answer_from_quote": 3, "answer_is_quote": 1, "quote_has_gold": 2}
    assert run_outcomes(records)["evidence"]["quotes"] == 3
    assert "evidence" not in run_outcomes([rec("no quote", "Cork")])  # older runs: the report is unchanged
