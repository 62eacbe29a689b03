"""Experiment: the paper's ablation in miniature (issue 14).

Rows, same student, retriever (BM25, k=3) and greedy decoding: ``agent-pe`` (untrained student in
the agent loop), ``rag-pe`` (one retrieval + one answer), ``downstream-sft`` (SFT on multi-hop
provenance trajectories of HotpotQA training questions, from the base model),
``ramp+downstream-sft`` (RAMP SFT, then the same downstream SFT: same rows, same steps) and
``ramp+downstream-sft+grpo`` (GRPO on downstream questions from that checkpoint).  Columns: the six
benchmarks + avg.  Token recall (headline), EM and F1, every number rescored at report time from
the stored predictions (``masksearch.eval.metrics.score``); paired-bootstrap 95 % intervals for
each adjacent-row difference on the same questions.

    .venv/bin/python benchmarks/exp_ablation.py --eval-dir DIR --budget-minutes 30 --out runs/ablation
    .venv/bin/python benchmarks/exp_ablation.py --eval-dir DIR --make-eval-dir ...   # DIR from our split
    .venv/bin/python benchmarks/exp_ablation.py --out runs/ablation --report-only       # rescore, no runs

``DIR`` holds question files named as in ``../shared/data/bench`` (``hotpotqa.*.jsonl``,
``2wikimultihopqa.*.jsonl``, ``musique.*.jsonl`` …), detected by prefix.  ``--make-eval-dir``
writes DIR first: the fixed held-out HotpotQA split (60 questions, never trained on) and links to
the shared files of the other five.  ``--budget-minutes M`` sizes the training (see
``masksearch.pipelines.ablation.plan_budget``) in steps at a reference speed ``s`` (16 s per SFT
step of 4 rows, the current code on the quiet 2-core CPU of docs/training.md): RAMP SFT
``floor(0.4·M·60 / s)`` steps, each of the two downstream SFTs the same ``floor(0.2·M·60 / s)``
steps, GRPO ``floor(0.2·M·60 / 2.6s)`` steps.  A busy machine takes longer; the steps stay the same.  Kill it any time: a rerun with the same flags
resumes (finished stages skipped, evaluations resume per question).  Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_eval_dir(eval_dir: Path, split_dir: Path, eval_n: int, salt: str) -> dict[str, str]:
    """Our eval dir: the held-out HotpotQA split + links to the other shared benchmark files."""
    from masksearch.data.benchmarks import BENCHMARKS, benchmark_path, split_pool

    info = split_pool("hotpotqa", eval_n, split_dir, salt=salt)
    eval_dir.mkdir(parents=True, exist_ok=True)
    links = {"hotpotqa": Path(info["heldout"]).resolve()}
    for short in BENCHMARKS:
        if short != "hotpotqa":
            links[short] = benchmark_path(short).resolve()
    for short, src in links.items():
        dst = eval_dir / (src.name if short != "hotpotqa" else "hotpotqa.heldout.jsonl")
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
    return {k: str(v) for k, v in links.items()}


def main(argv: list[str] | None = None) -> int:
    from masksearch.pipelines.ablation import REFERENCE_SFT_STEP_SECONDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", default=None, help="folder of benchmark question files (by prefix)")
    ap.add_argument("--make-eval-dir", action="store_true",
                    help="write --eval-dir first from our held-out HotpotQA split + the shared files")
    ap.add_argument("--budget-minutes", type=float, default=24.0,
                    help="training minutes (all stages) at the reference speed --sft-step-seconds")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--limit", type=int, default=20, help="questions per benchmark (at most 50)")
    ap.add_argument("--limit-in-domain", type=int, default=None,
                    help="questions of the in-domain benchmark (HotpotQA; at most 50; default: --limit)")
    ap.add_argument("--model", default="smollm2", help="the student (same for every row)")
    ap.add_argument("--ramp-n", type=int, default=300, help="RAMP questions for stage 1")
    ap.add_argument("--eval-n", type=int, default=60, help="size of the held-out HotpotQA split")
    ap.add_argument("--sft-step-seconds", type=float, default=REFERENCE_SFT_STEP_SECONDS,
                    help="reference seconds per SFT step of 4 rows that turns --budget-minutes into steps")
    ap.add_argument("--k", type=int, default=3, help="documents per search (every row, teachers, rollouts)")
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="per policy turn (greedy at evaluation)")
    ap.add_argument("--info-max-tokens", type=int, default=192, help="budget of one <information> block")
    ap.add_argument("--force-answer", action="store_true",
                    help="evaluate the agent rows with budget forcing (a run still searching after the final-answer "
                         "request answers from a written <answer>) into OUT/eval-forced, report in OUT/report-forced; "
                         "the trained stages are shared with the plain evaluation")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=10000)
    ap.add_argument("--report-only", action="store_true", help="rescore the stored predictions; run nothing")
    ap.add_argument("--steps", default="", help="override the budget's step counts, e.g. ramp=120,downstream=20,grpo=8 "
                    "(stored in OUT/plan.json; a different override needs a new --out)")
    ap.add_argument("--rows", default="", help="comma-separated rows to run (default: all); a second process "
                    "on the same --out can take some rows (stages and rows are locked)")
    args = ap.parse_args(argv)
    if not 1 <= args.limit <= 50 or not 1 <= (args.limit_in_domain or 1) <= 50:
        ap.error("--limit and --limit-in-domain must be in 1..50")

    from masksearch.pipelines.ablation import ablation_report, parse_steps, run_ablation

    t0 = time.perf_counter()
    if not args.report_only:
        if not args.eval_dir:
            ap.error("--eval-dir is required (add --make-eval-dir to build one from our split)")
        eval_dir = Path(args.eval_dir)
        if args.make_eval_dir:
            links = make_eval_dir(eval_dir, Path(args.out) / "data" / "split", args.eval_n, "masksearch-eval-v1")
            print(f"[ablation] eval dir {eval_dir}: {json.dumps(links)}", flush=True)
        run_ablation(args.out, args.budget_minutes, eval_dir=str(eval_dir), model=args.model,
                     eval_limit=args.limit, eval_limit_in_domain=args.limit_in_domain, ramp_n=args.ramp_n, eval_n=args.eval_n,
                     sft_step_seconds=args.sft_step_seconds, concurrency=args.concurrency, k=args.k,
                     max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                     info_max_tokens=args.info_max_tokens, force_answer=args.force_answer,
                     steps=parse_steps(args.steps),
                     **({"rows": [r.strip() for r in args.rows.split(",") if r.strip()]} if args.rows else {}))
    rep = ablation_report(args.out, n_boot=args.n_boot, force_answer=args.force_answer)
    for f in rep.get("files", []):
        print(f"[ablation] wrote {f}", flush=True)
    print((Path(args.out) / ("report-forced" if args.force_answer else "report") / "table.md").read_text(), flush=True)
    line = {"rows": rep["rows"], "diffs": {k: {"mean": v["mean"], "ci95": v["ci95"],
                                               "hotpotqa": v["per_benchmark"].get("hotpotqa")}
                                           for k, v in rep["diffs"].items()},
            "metrics": {m: {"rows": v["rows"], "diffs": {k: {"mean": d["mean"], "ci95": d["ci95"]}
                                                          for k, d in v["diffs"].items()}}
                        for m, v in rep["metrics"].items()},
            "n_questions": rep["n_questions"], "missing_rows": rep["missing_rows"],
            "force_answer": args.force_answer, "outcomes_hotpotqa": rep.get("outcomes_hotpotqa"),
            "plan": rep.get("plan"), "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
