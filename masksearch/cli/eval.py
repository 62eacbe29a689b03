"""``masksearch eval`` (run a method on benchmarks) and ``masksearch report`` (the results table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from masksearch.cli.retrieval import add_search_cache_args


def _csv_list(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    from masksearch.cli import add_executor_args

    p = sub.add_parser("eval", help="evaluate a method (rag-pe | agent | teacher) on benchmarks",
                       description="Run a method over benchmarks (concurrent, resumable) and write "
                                   "OUT/<benchmark>/predictions.jsonl, OUT/<benchmark>/view.html and OUT/results.json.")
    p.add_argument("--method", default="agent", help="rag-pe | agent (Agent-PE / any checkpoint) | teacher")
    p.add_argument("--model", default="smollm2", help="model spec: smollm2 | hf:PATH | openai:NAME | dashscope:NAME | vllm:NAME@URL")
    p.add_argument("--retriever", default=None, help="retriever spec, e.g. bm25:PATH (required)")
    add_search_cache_args(p)
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated: hotpotqa,fanoutqa,musique,2wiki,bamboogle,freshqa (or 'all')")
    p.add_argument("--data", action="append", default=[], help="a question file of any supported format (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    p.add_argument("--concurrency", type=int, default=8, help="questions in flight (a local model batches them)")
    p.add_argument("--k", type=int, default=3, help="documents per search")
    p.add_argument("--max-turns", type=int, default=4, help="agent/teacher: search turns at most")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per model call")
    p.add_argument("--info-max-tokens", type=int, default=None, help="token budget of the retrieved documents shown per search")
    p.add_argument("--force-answer", action="store_true",
                   help="agent with a local model: a run that still searches after the final-answer request "
                        "answers from a written <answer> (budget forcing; counted as forced_answer)")
    p.add_argument("--judge", default=None, help="also grade with an LLM judge: a model spec")
    p.add_argument("--label", default=None, help="the row name in reports (default: 'METHOD (MODEL)')")
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping finished questions")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output folder of this run")
    from masksearch.cli import add_request_flags

    add_request_flags(p)
    add_executor_args(p, "questions (--concurrency is then per worker)")
    p.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="merge eval runs into the paper's table (Markdown, CSV, bar chart)",
                       description="Methods as rows; HotpotQA, FanoutQA, MuSiQue, 2Wiki, Bamboogle, FreshQA and Avg as columns.")
    r.add_argument("runs", nargs="+", help="eval output folders (each with results.json)")
    r.add_argument("--out", default="report", help="folder for table.md, table.csv, chart.png")
    r.add_argument("--metric", default="token_recall", help="token_recall (default) | em | f1 | precision | cover_em | judge")
    r.add_argument("--views", action="store_true", help="also write one HTML page per run and benchmark")
    r.set_defaults(func=cmd_report)


def cmd_eval(args: argparse.Namespace) -> int:
    from masksearch.cli import UserError, executor_kwargs
    from masksearch.data.benchmarks import PAPER_BENCHMARKS
    from masksearch.eval.runner import PREDICTIONS_FILE, run_eval
    from masksearch.eval.view import write_view

    benches = _csv_list(args.benchmarks)
    if benches == ["all"]:
        benches = list(PAPER_BENCHMARKS)
    if not benches and not args.data:
        raise UserError("nothing to evaluate: pass --benchmarks NAME,... and/or --data FILE")
    if not args.retriever:
        raise UserError("--retriever is required, e.g. --retriever bm25:INDEX_DIR (build one with `masksearch index`)")
    for f in args.data:
        if not Path(f).exists():
            raise UserError(f"--data {f}: no such file")
    extra = {}
    if args.max_new_tokens:
        extra["max_new_tokens"] = args.max_new_tokens
    if args.info_max_tokens:
        extra["info_max_tokens"] = args.info_max_tokens
    if args.force_answer:
        extra["force_answer"] = True
    from masksearch.retrieval import cache as search_cache

    res = run_eval(args.method, model=args.model, retriever=search_cache.cli_spec(args), benchmarks=benches, data=args.data,
                   limit=args.limit, concurrency=args.concurrency, out_dir=args.out, k=args.k,
                   max_turns=args.max_turns, judge=args.judge, label=args.label, resume=not args.no_resume,
                   progress=not args.no_progress, **extra, **executor_kwargs(args))
    out = Path(args.out)
    for bench, b in res["benchmarks"].items():
        pred = out / bench / PREDICTIONS_FILE
        if pred.exists():
            write_view(pred, out / bench / "view.html", title=f"{res['label']} on {bench}")
        m = b.get("metrics") or {}
        if not b.get("n"):
            print(f"{bench:>10}: n=0    no scored questions" + (f" failed={b['failed']}" if b.get("failed") else ""))
            continue
        print(f"{bench:>10}: n={b['n']:<4} token_recall={100 * m.get('token_recall', 0):5.1f} "
              f"em={100 * m.get('em', 0):5.1f} f1={100 * m.get('f1', 0):5.1f} cover_em={100 * m.get('cover_em', 0):5.1f}"
              + (f" judge={100 * m['judge']:5.1f}" if "judge" in m else "")
              + (f" failed={b['failed']}" if b.get("failed") else ""))
    avg = res.get("avg") or {}
    print(f"{'avg':>10}: token_recall={100 * avg.get('token_recall', 0):5.1f}  wall {res['wall_s']:.0f}s  "
          f"-> {out / 'results.json'}")
    search_cache.print_report()
    ran = sum(b.get("ran") or 0 for b in res["benchmarks"].values())
    if ran and sum(b.get("failed") or 0 for b in res["benchmarks"].values()) >= ran:
        import sys

        print("error: every question failed; nothing was scored (see the failures above)", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from masksearch.eval.report import load_results, make_report
    from masksearch.eval.runner import PREDICTIONS_FILE
    from masksearch.eval.view import write_view

    rep = make_report(args.runs, out=args.out, metric=args.metric)
    print(rep["markdown"])
    print("wrote " + ", ".join(rep["files"]))
    if args.views:
        for run in args.runs:
            res = load_results(run)
            slug = "".join(c if c.isalnum() else "-" for c in (res.get("label") or Path(run).name)).strip("-")
            for bench in res.get("benchmarks", {}):
                pred = Path(run) / bench / PREDICTIONS_FILE
                if pred.exists():
                    n = write_view(pred, Path(args.out) / "views" / f"{slug}_{bench}.html",
                                   title=f"{res.get('label')} on {bench}")
                    print(f"view: {Path(args.out) / 'views' / f'{slug}_{bench}.html'} ({n} questions)")
    return 0


__all__ = ["register"]
