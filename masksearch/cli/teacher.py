"""``masksearch cot`` (teacher runs -> trajectories + SFT file) and ``masksearch graph draw``."""

from __future__ import annotations

import argparse
import json
import sys

from masksearch.cli.retrieval import add_search_cache_args


def register(sub: argparse._SubParsersAction) -> None:
    from masksearch.cli import add_executor_args

    p = sub.add_parser(
        "cot", help="run a teacher over RAMP/QA questions; write trajectories, SFT rows and a summary",
        description="Run the multi-agent teacher graph (or the LLM-free provenance teacher) over a RAMP "
                    "file or a benchmark file, concurrently and resumably. Writes OUT/trajectories.jsonl "
                    "(every run), OUT/sft.jsonl (accepted runs, TRL conversational rows) and OUT/summary.json.")
    p.add_argument("--input", required=True, help="RAMP JSONL (masksearch ramp) or a benchmark JSONL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--teacher", default="smollm2",
                   help="a model spec for every role (smollm2 | llamacpp:qwen2.5-coder-1.5b | hf:PATH | openai:NAME | dashscope:NAME | "
                        "vllm:NAME@URL), a role mapping 'planner=SPEC,observer=SPEC,default=SPEC', or "
                        "'provenance' (no LLM; RAMP files only), or 'multihop-provenance' (no LLM; "
                        "QA files with supporting_passage_ids, e.g. HotpotQA)")
    p.add_argument("--retriever", required=True, help="retriever spec, e.g. bm25:INDEX_DIR")
    add_search_cache_args(p)
    p.add_argument("--concurrency", type=int, default=8, help="runs in flight (a local model batches their calls)")
    p.add_argument("--limit", type=int, default=None, help="first N questions")
    p.add_argument("--resume", action="store_true", default=True,
                   help="skip questions already in OUT/trajectories.jsonl (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over")
    p.add_argument("--checkpoint-db", default=None,
                   help="SQLite file for LangGraph checkpoints (thread_id 'TEACHER:ID'), to inspect any run")
    p.add_argument("--accept", default="em",
                   help="accept filter: em | recall[:X] | llm | em_or_llm | none, plus options like "
                        "',max_turns=3,min_searches=1,format=1,grounded=1' (default: em)")
    p.add_argument("--max-turns", type=int, default=5, help="observer turns at most (default 5)")
    p.add_argument("--k", type=int, default=5, help="documents per search query")
    p.add_argument("--max-docs", type=int, default=10, help="documents kept after merging a turn's searches")
    p.add_argument("--info-max-tokens", type=int, default=512, help="budget of an <information> block")
    p.add_argument("--llm-judge", action="store_true", help="also ask the judge model (role 'judge') for a verdict")
    p.add_argument("--search-queries", choices=["first", "all"], default="first",
                   help="what an SFT row's <search> holds: the sub-query (first) or every rewrite (all)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per role reply (local models)")
    p.add_argument("--shard", default=None, help="run shard i/n of the input, e.g. 0/4")
    p.add_argument("--no-progress", action="store_true")
    from masksearch.cli import add_request_flags

    add_request_flags(p)
    add_executor_args(p, "questions")
    p.set_defaults(func=cmd_cot)

    g = sub.add_parser("graph", help="draw the teacher or student graph offline")
    gsub = g.add_subparsers(dest="graph_command", metavar="ACTION")
    d = gsub.add_parser("draw", help="draw a graph as Mermaid, PNG (graphviz), DOT or ASCII")
    d.add_argument("name", choices=["teacher", "student"])
    d.add_argument("--format", default="mermaid", choices=["mermaid", "png", "ascii", "dot"])
    d.add_argument("--out", default=None, help="output file (default: print to stdout; PNG needs --out)")
    d.set_defaults(func=cmd_draw)
    g.set_defaults(func=lambda a: (g.print_help(), 2)[1])


def cmd_cot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from masksearch.cli import UserError, executor_kwargs
    from masksearch.training.export import AcceptFilter, parse_teacher_spec, run_cot

    if not Path(args.input).exists():
        raise UserError(f"--input {args.input}: no such file")
    try:
        accept = AcceptFilter.parse(args.accept)
        teacher = parse_teacher_spec(args.teacher)
    except ValueError as e:
        raise UserError(str(e)) from None
    opts = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    if "llamacpp:" in args.teacher:  # a llama.cpp server the spec starts: one slot per run in flight
        opts["n_parallel"] = args.concurrency
    from masksearch.retrieval import cache as search_cache

    summary = run_cot(args.input, args.out, teacher, search_cache.cli_spec(args), concurrency=args.concurrency,
                      limit=args.limit, resume=args.resume, checkpoint_db=args.checkpoint_db, accept=accept,
                      max_turns=args.max_turns, k=args.k, max_docs=args.max_docs,
                      info_max_tokens=args.info_max_tokens, llm_judge=args.llm_judge,
                      search_queries=args.search_queries, shard=args.shard, model_options=opts,
                      progress=not args.no_progress, **executor_kwargs(args))
    keys = ("teacher", "trajectories", "accepted", "acceptance_rate", "by_status", "rejected_by_reason",
            "mean_turns", "trajectories_per_minute", "input_lines_skipped", "failed", "failures")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    print(f"wrote {args.out}/trajectories.jsonl, {args.out}/sft.jsonl, {args.out}/summary.json")
    search_cache.print_report()
    if summary.get("failed") and not summary.get("new_this_run"):
        print(f"error: every run this time failed ({summary['failed']}); nothing new was written", file=sys.stderr)
        return 1
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    from masksearch.graphs.draw import draw

    if args.format == "png" and not args.out:
        from masksearch.cli import UserError

        raise UserError("--format png needs --out FILE.png")
    data = draw(args.name, format=args.format, out=args.out)
    if args.out:
        print(f"wrote {args.out}")
    else:
        print(data)
    return 0
