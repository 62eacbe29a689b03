"""Evaluation throughput: questions per minute at concurrency 1 vs 16.

The embedded model (SmolLM2-135M, a batching ``LocalChatModel``) and BM25 over the shared corpus
run a method (default: the student graph, i.e. Agent-PE) through :func:`run_eval` on HotpotQA dev
questions, once with one question in flight and once with 16.  Concurrency pays only because the
local model batches concurrent calls (the continuous engine: rows join and leave the running batch
between decode steps, and next turns reuse their conversation's cached prefix).  The same c16 run
is repeated with the ``generate`` engine (one static ``model.generate`` per batch), the obvious
alternative, and the ratio printed.

    .venv/bin/python benchmarks/bench_eval.py [--method agent|rag-pe] [--n1 8] [--n16 32] [--no-compare]

The last line is JSON: ``{"qpm_c1", "qpm_c16", "speedup", "qpm_c16_generate_engine",
"continuous_over_generate", ...}`` (target speedup >= 4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _index(out: Path) -> Path:
    """BM25 over the shared corpus, built once (atomically) and reused."""
    from masksearch.paths import shared_corpus
    from masksearch.retrieval import build_index

    if not (out / "manifest.json").exists():
        corpus = shared_corpus()
        if corpus is None:
            raise SystemExit("../shared/data/corpus/wiki_passages.jsonl not found (set MASKSEARCH_SHARED_DATA)")
        build_index(str(corpus), kind="bm25", out=str(out), progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="agent")
    ap.add_argument("--benchmark", default="hotpotqa")
    ap.add_argument("--n1", type=int, default=8, help="questions at concurrency 1")
    ap.add_argument("--n16", type=int, default=32, help="questions at concurrency 16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--no-compare", action="store_true", help="skip the generate-engine run")
    ap.add_argument("--index", default=None, help="a BM25 index dir (default: built once under the cache)")
    args = ap.parse_args()

    from masksearch.data.benchmarks import load_benchmark
    from masksearch.eval.runner import run_eval
    from masksearch.models import make_chat_model
    from masksearch.paths import home
    from masksearch.retrieval import make_retriever

    index = Path(args.index) if args.index else home() / "bench" / "bm25-shared"
    if not args.index:
        _index(index)
    retriever = make_retriever(f"bm25:{index}")
    model = make_chat_model("smollm2", temperature=0.0, max_new_tokens=args.max_new_tokens, batch_wait_ms=100)
    model.invoke("Hello", max_new_tokens=4)  # load and warm up outside the timings
    from masksearch.models.local import LocalChatModel

    generate_engine = LocalChatModel.from_model(model.model, model.tokenizer, temperature=0.0, engine="generate",
                                                max_new_tokens=args.max_new_tokens, batch_wait_ms=100)

    qs = load_benchmark(args.benchmark, limit=max(args.n1, args.n16))
    data_dir = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    figures = {}
    runs = [(1, args.n1, model), (16, args.n16, model)]
    if not args.no_compare:
        runs.append((16, args.n16, generate_engine))
    for conc, n, m in runs:
        key = conc if m is model else "c16_generate"
        f = data_dir / f"{args.benchmark}_{n}.jsonl"
        f.write_text("".join(json.dumps({"id": q.id, "question": q.question, "golden_answers": q.golden_answers,
                                         "answer_match": q.answer_match}) + "\n" for q in qs[:n]))
        t0 = time.perf_counter()
        res = run_eval(args.method, model=m, retriever=retriever, data=[str(f)], concurrency=conc,
                       out_dir=data_dir / f"c{key}", progress=False, resume=False,
                       max_new_tokens=args.max_new_tokens, max_turns=args.max_turns)
        wall = time.perf_counter() - t0
        b = next(iter(res["benchmarks"].values()))
        qpm = b["n"] / wall * 60
        figures[key] = {"n": b["n"], "wall_s": round(wall, 1), "qpm": round(qpm, 2),
                         "token_recall": round(b["metrics"].get("token_recall", 0.0), 4),
                         "avg_searches": round(b.get("avg_searches", 0.0), 2)}
        print(f"concurrency {conc:>2} ({m.engine} engine): {b['n']} questions in {wall:.1f}s = {qpm:.1f} q/min "
              f"(token recall {100 * figures[key]['token_recall']:.1f}%, {figures[key]['avg_searches']} searches/q)",
              flush=True)
    stats = getattr(model, "batch_stats", None)
    out = {
        "method": args.method, "benchmark": args.benchmark, "max_new_tokens": args.max_new_tokens,
        "max_turns": args.max_turns, "n_c1": figures[1]["n"], "n_c16": figures[16]["n"],
        "wall_c1_s": figures[1]["wall_s"], "wall_c16_s": figures[16]["wall_s"],
        "qpm_c1": figures[1]["qpm"], "qpm_c16": figures[16]["qpm"],
        "speedup": round(figures[16]["qpm"] / figures[1]["qpm"], 2) if figures[1]["qpm"] else None,
        "batch_stats": {k: v for k, v in stats.items() if k != "sizes"} if isinstance(stats, dict) else None,
        **({"qpm_c16_generate_engine": figures["c16_generate"]["qpm"],
            "continuous_over_generate": round(figures[16]["qpm"] / figures["c16_generate"]["qpm"], 2),
            "token_recall_c16": figures[16]["token_recall"],
            "token_recall_c16_generate_engine": figures["c16_generate"]["token_recall"]}
           if "c16_generate" in figures else {}),
        "cpus": os.cpu_count(), "machine": platform.machine(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
