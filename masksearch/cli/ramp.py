"""``masksearch ramp`` (generate RAMP examples) and ``masksearch ramp-report`` (solvability)."""

from __future__ import annotations

import argparse
import json


def _floats(s: str | None) -> list[float] | None:
    if not s:
        return None
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        from masksearch.cli import UserError

        raise UserError(f"--mask-dist {s!r}: expected comma-separated weights for k=1..max, e.g. 4,3,2,1") from None


def register(sub: argparse._SubParsersAction) -> None:
    from masksearch.cli import add_executor_args

    p = sub.add_parser(
        "ramp", help="generate RAMP (masked-passage) examples from a corpus",
        description="Select passages, find salient spans (rules | llm | ppl), mask 1..max of them and write "
                    "one JSONL record per example. Resumes after a kill: rerun the same command.")
    p.add_argument("--corpus", required=True, help="corpus path (JSONL, FlashRAG, DPR TSV, WikiExtractor dir, text dir)")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--n", type=int, required=True, help="number of examples (all shards together)")
    p.add_argument("--strategy", default="rules", choices=["rules", "llm", "ppl"])
    p.add_argument("--model", default=None, help="llm: chat model spec (default smollm2); ppl: local scorer model (default smollm2)")
    p.add_argument("--max-masks", type=int, default=4)
    p.add_argument("--mask-dist", default=None, help="relative weights of k=1..max-masks, e.g. 4,3,2,1 (default uniform)")
    p.add_argument("--min-words", type=int, default=30, help="skip shorter passages")
    p.add_argument("--max-words", type=int, default=300, help="skip longer passages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default=None, help="i/n: this process does shard i of n (0-based)")
    p.add_argument("--concurrency", type=int, default=8, help="model calls in flight (batched by a local model)")
    p.add_argument("--no-resume", action="store_true", help="overwrite OUT instead of resuming it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    from masksearch.cli import add_request_flags

    add_request_flags(p)
    add_executor_args(p, "span extraction")
    p.set_defaults(func=cmd_ramp)

    r = sub.add_parser("ramp-report", help="solvability of a RAMP file: is the source passage in the top-k of a search?",
                       description="For each example, search the masked passage and check whether its source passage "
                                   "is among the top k; overall and per mask count.")
    r.add_argument("ramp", help="RAMP JSONL file")
    r.add_argument("--retriever", required=True, help="retriever spec, e.g. bm25:INDEX_DIR")
    r.add_argument("--k", type=int, default=5)
    r.add_argument("--limit", type=int, default=None)
    r.set_defaults(func=cmd_report)


def cmd_ramp(args: argparse.Namespace) -> int:
    from masksearch.cli import UserError, executor_kwargs
    from masksearch.data.ramp import PassageFilter, format_summary, generate_ramp

    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    s = generate_ramp(
        args.corpus, args.out, args.n, strategy=args.strategy, model=args.model, max_masks=args.max_masks,
        seed=args.seed, shard=args.shard, concurrency=args.concurrency, progress=not args.no_progress,
        mask_dist=_floats(args.mask_dist), resume=not args.no_resume,
        passage_filter=PassageFilter(min_words=args.min_words, max_words=args.max_words), **executor_kwargs(args),
    )
    print(json.dumps(s) if args.json else format_summary(s))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from masksearch.cli import UserError
    from masksearch.data.ramp import solvability_report

    import os

    if not os.path.exists(args.ramp):
        raise UserError(f"{args.ramp}: no such file (make one with `masksearch ramp`)")
    rep = solvability_report(args.ramp, args.retriever, k=args.k, limit=args.limit)
    print(f"solvable (source passage in top-{rep['k']}): {rep['solvable']}/{rep['n']} = {rep['rate']}")
    for m, v in rep["by_mask_count"].items():
        print(f"  {m} mask(s): {v['solvable']}/{v['n']} = {v['rate']}")
    print(json.dumps(rep))
    return 0
