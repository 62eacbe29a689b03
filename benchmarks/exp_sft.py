"""Experiment: SFT of the embedded student on RAMP trajectories, then one round of self-evolution.

1. a BM25 index of the shared corpus and RAMP questions from it (``generate_ramp``, rules);
2. teachers: the provenance teacher (no LLM) solves ``--teacher`` RAMP questions; optionally the
   LLM teacher graph with the embedded model tries ``--llm-teacher`` of them (its acceptance rate
   is reported and its accepted runs, if any, join the data);
3. before: the untrained embedded model in the student graph (= Agent-PE) on a held-out RAMP split
   and on 50 HotpotQA dev questions;
4. ``run_distill`` with 2 rounds: SFT on the teachers' runs (round 1), the round-1 student solves
   new RAMP questions, judged runs are added, SFT again on the union (round 2);
5. after: the round-2 checkpoint on the same held-out RAMP split and HotpotQA questions.

Figures: format-valid rate, mean searches per question, answer token recall and EM, before vs after,
and the acceptance rate of each teacher and of the self-evolved student.  The loss plots are
written to ``docs/img/``.  Last printed line: one JSON object.

    .venv/bin/python benchmarks/exp_sft.py [--steps 200] [--train-seconds 420] [--workdir runs/exp_sft]

Every trajectory comes from a named teacher or student run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "exp_sft"))
    ap.add_argument("--ramp", type=int, default=420, help="RAMP questions to generate")
    ap.add_argument("--teacher", type=int, default=240, help="questions for the provenance teacher")
    ap.add_argument("--llm-teacher", type=int, default=6, help="questions the LLM teacher graph tries (0: skip)")
    ap.add_argument("--student", type=int, default=60, help="new questions the round-1 student solves")
    ap.add_argument("--heldout", type=int, default=30, help="held-out RAMP questions")
    ap.add_argument("--hotpotqa", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200, help="SFT steps per round")
    ap.add_argument("--train-seconds", type=float, default=420, help="time budget per SFT round")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--docs", default=str(ROOT / "docs" / "img"))
    a = ap.parse_args(argv)

    import torch
    from trl import SFTConfig

    from masksearch.data.qa import load_qa
    from masksearch.data.ramp import generate_ramp
    from masksearch.paths import shared_bench, shared_corpus
    from masksearch.retrieval import build_index, make_retriever
    from masksearch.training.config import DistillArguments, SFTScriptArguments
    from masksearch.training.distill import load_student_model, prepare_splits, run_distill, run_students, student_metrics, summarize_report
    from masksearch.training.export import run_cot
    from masksearch.trajectory import write_trajectories

    t_all = time.perf_counter()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = shared_corpus()
    if corpus is None:
        sys.exit("../shared/data/corpus/wiki_passages.jsonl is missing")
    index = work / "bm25"
    if not (index / "manifest.json").exists() and not index.exists():
        log("building the BM25 index")
        build_index(str(corpus), kind="bm25", out=str(index), progress=False)
    retriever_spec = f"bm25:{index}"
    retriever = make_retriever(retriever_spec, k=3)
    ramp = work / "ramp.jsonl"
    if not ramp.exists():
        log(f"generating {a.ramp} RAMP questions")
        generate_ramp(str(corpus), ramp, n=a.ramp, seed=0, progress=False)

    args = DistillArguments(rounds=2, workdir=str(work / "distill"), teacher="provenance", retriever=retriever_spec,
                            ramp_file=str(ramp), teacher_questions=a.teacher, student_questions=a.student,
                            heldout_questions=a.heldout, k=3, max_turns=a.max_turns, max_new_tokens=a.max_new_tokens,
                            info_max_tokens=300, concurrency=a.concurrency)
    splits = prepare_splits(args, Path(args.workdir), args.rounds)
    heldout = load_qa(splits["heldout"])
    hotpot = load_qa(shared_bench("hotpotqa"), limit=a.hotpotqa)

    # ---- the LLM teacher graph (embedded model in every role): its acceptance rate
    llm_teacher = None
    if a.llm_teacher:
        out = work / "llm_teacher"
        if not (out / "summary.json").exists():
            log(f"LLM teacher graph (smollm2) on {a.llm_teacher} RAMP questions")
            sub = out / "questions.jsonl"
            out.mkdir(parents=True, exist_ok=True)
            sub.write_text("".join(line for i, line in enumerate(open(splits["teacher"])) if i < a.llm_teacher))
            run_cot(sub, out, teacher="smollm2", retriever=retriever_spec, k=3, concurrency=8, accept="em",
                    progress=False, max_turns=3)
        s = json.loads((out / "summary.json").read_text())
        llm_teacher = {"teacher": s["teacher"], "questions": s["trajectories"], "accepted": s["accepted"],
                       "acceptance_rate": s["acceptance_rate"], "rejected_by_reason": s["rejected_by_reason"]}
        log(f"LLM teacher: {llm_teacher}")

    # ---- before: the untrained embedded model (Agent-PE) in the student graph
    before_path = work / "before.json"
    if before_path.exists():
        before = json.loads(before_path.read_text())
    else:
        log("before: embedded model on held-out RAMP + HotpotQA")
        model = load_student_model("smollm2", max_new_tokens=a.max_new_tokens)
        before = {}
        for name, exs in (("ramp_heldout", heldout), ("hotpotqa", hotpot)):
            trajs = run_students(model, exs, retriever, args, "smollm2-untrained", progress=False)
            write_trajectories(str(work / f"before_{name}.jsonl"), trajs, append=False)
            before[name] = student_metrics(trajs, exs)
        del model
        before_path.write_text(json.dumps(before, indent=2))
    log(f"before: {json.dumps(before)}")

    # ---- SFT + one round of self-evolution
    script = SFTScriptArguments(model="smollm2", curriculum="mask_count", max_train_seconds=a.train_seconds)
    cfg = SFTConfig(output_dir=str(work / "unused"), max_steps=a.steps, per_device_train_batch_size=a.batch,
                    learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=5, logging_steps=5,
                    save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False,
                    max_length=768, seed=42)
    log("distill: round 0 teacher, round 1 SFT + student data, round 2 SFT on the union")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report = run_distill(args, script, cfg, progress=False)
    for line in summarize_report(report):
        log(line)
    if llm_teacher and llm_teacher["accepted"]:
        log("note: the LLM teacher's accepted runs are reported but not merged (round 0 is the provenance teacher)")

    # ---- after: the final checkpoint
    final = report["rounds"][-1]["checkpoint"]
    after_path = work / "after.json"
    if after_path.exists():
        after = json.loads(after_path.read_text())
    else:
        log(f"after: {final} on held-out RAMP + HotpotQA")
        model = load_student_model(final, max_new_tokens=a.max_new_tokens)
        after = {"ramp_heldout": report["rounds"][-1]["heldout"]}
        trajs = run_students(model, hotpot, retriever, args, "student-round2", progress=False)
        write_trajectories(str(work / "after_hotpotqa.jsonl"), trajs, append=False)
        after["hotpotqa"] = student_metrics(trajs, hotpot)
        after_path.write_text(json.dumps(after, indent=2))
    r1 = report["rounds"][1]
    after_round1 = {"ramp_heldout": r1["heldout"]}

    docs = Path(a.docs)
    docs.mkdir(parents=True, exist_ok=True)
    for src, dst in ((Path(r1["sft"]["loss_plot"] or ""), "sft_loss_round1.png"),
                     (Path(report["rounds"][-1]["sft"]["loss_plot"] or ""), "sft_loss_round2.png"),
                     (Path(report["loss_plot"] or ""), "sft_loss_rounds.png")):
        if src.is_file():
            shutil.copy(src, docs / dst)
    link = ROOT / "runs" / "sft"
    if not link.exists():
        try:
            link.symlink_to(Path(final).resolve())
        except OSError:
            pass

    r0 = report["rounds"][0]
    figures = {
        "student": "smollm2 (SmolLM2-135M-Instruct)",
        "before": before,
        "after": after,
        "after_round1": after_round1,
        "acceptance": {
            "provenance_teacher": {k: r0[k] for k in ("questions", "accepted", "acceptance_rate")},
            "llm_teacher_graph_smollm2": llm_teacher,
            "self_evolved_student_round1": {k: r1["self_evolution"].get(k) for k in ("questions", "accepted",
                                                                                      "acceptance_rate")},
        },
        "training": {f"round{r['round']}": {"rows": r["dataset_size"], "teachers": r["trained_on_teachers"],
                                            "steps": r["sft"].get("steps"), "loss_first": r["sft"].get("loss_first"),
                                            "loss_last": r["sft"].get("loss_last"), "seconds": r["sft"].get("seconds")}
                     for r in report["rounds"][1:]},
        "checkpoint": final,
        "minutes": round((time.perf_counter() - t_all) / 60, 1),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
