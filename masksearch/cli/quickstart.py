"""``masksearch quickstart``: the whole method end to end on the embedded defaults."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from masksearch.quickstart import DEFAULT_BENCHMARKS, STAGES, QuickstartConfig

    d = QuickstartConfig()
    p = sub.add_parser("quickstart", help="index -> RAMP -> teachers -> SFT -> eval -> report, on the embedded model",
                       description="Run (or resume) the end-to-end MaskSearch pipeline; every size is a flag.")
    p.add_argument("--out", default=d.out, help="run folder (resumable stage by stage)")
    p.add_argument("--corpus", default=None, help="corpus path (default: ../shared/data/corpus/wiki_passages.jsonl)")
    p.add_argument("--model", default=d.model, help="student/teacher model spec")
    p.add_argument("--teacher-model", default=d.teacher_model, help="the LLM teacher's model spec")
    p.add_argument("--ramp-train", type=int, default=d.ramp_train)
    p.add_argument("--ramp-heldout", type=int, default=d.ramp_heldout)
    p.add_argument("--max-masks", type=int, default=d.max_masks)
    p.add_argument("--llm-teacher-examples", type=int, default=d.llm_teacher_examples)
    p.add_argument("--sft-steps", type=int, default=d.sft_steps)
    p.add_argument("--sft-batch-size", type=int, default=d.sft_batch_size)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--downstream-steps", type=int, default=d.downstream_steps,
                   help="stage-2 SFT steps on HotpotQA trajectories, from the stage-1 checkpoint")
    p.add_argument("--downstream-eval-n", type=int, default=d.downstream_eval_n,
                   help="size of the held-out HotpotQA split (never trained on)")
    p.add_argument("--eval-limit", type=int, default=d.eval_limit, help="questions per benchmark")
    p.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS))
    p.add_argument("--k", type=int, default=d.k)
    p.add_argument("--max-turns", type=int, default=d.max_turns)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="per policy turn")
    p.add_argument("--info-max-tokens", type=int, default=d.info_max_tokens)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--stages", default=",".join(STAGES), help="subset of stages to run")
    p.add_argument("--force", default="", help="comma-separated stages to redo")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from masksearch.quickstart import QuickstartConfig, run_quickstart

    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    cfg = QuickstartConfig(out=args.out, corpus=args.corpus, model=args.model, teacher_model=args.teacher_model,
                           ramp_train=args.ramp_train,
                           ramp_heldout=args.ramp_heldout, max_masks=args.max_masks,
                           llm_teacher_examples=args.llm_teacher_examples, sft_steps=args.sft_steps,
                           sft_batch_size=args.sft_batch_size, learning_rate=args.learning_rate,
                           downstream_steps=args.downstream_steps, downstream_eval_n=args.downstream_eval_n,
                           eval_limit=args.eval_limit, benchmarks=split(args.benchmarks), k=args.k,
                           max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                           info_max_tokens=args.info_max_tokens, concurrency=args.concurrency, seed=args.seed,
                           stages=split(args.stages), force=split(args.force))
    run_quickstart(cfg)
    return 0
