"""Teacher-graph throughput: trajectories per minute at concurrency 1 and 8 (figures, not a test).

The embedded SmolLM2-135M plays every role, BM25 (tantivy) over the shared 31k-passage corpus is
the search tool, and the questions are RAMP examples generated from that corpus.  The same model
object serves both runs; at concurrency 8 the teacher runs' concurrent role calls are batched by
the local model layer, which is where the speed-up comes from.  Also reports the acceptance rate
(string EM), mean observer turns and, for comparison, the provenance teacher's acceptance rate.

    .venv/bin/python benchmarks/bench_teacher.py [--n 16] [--max-turns 5] [--max-new-tokens 64]

Last printed line: one JSON object with ``tpm_c1``, ``tpm_c8``, ``speedup``, ``acceptance_rate``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="RAMP examples")
    ap.add_argument("--max-turns", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8, help="the high-concurrency setting")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    from masksearch.data.ramp import generate_ramp
    from masksearch.graphs.teacher import TeacherContext
    from masksearch.models import make_chat_model
    from masksearch.paths import home, shared_corpus
    from masksearch.retrieval import build_index, make_retriever
    from masksearch.training.export import run_cot

    corpus = shared_corpus()
    if corpus is None:
        sys.exit("the shared corpus (../shared/data/corpus/wiki_passages.jsonl) is missing")
    work = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
    index = home() / "bench" / "bm25-shared"
    t = time.perf_counter()
    if not (index / "manifest.json").exists():
        build_index(str(corpus), kind="bm25", out=str(index))
    print(f"bm25 index: {index} ({time.perf_counter() - t:.1f}s)")
    ramp = work / "ramp.jsonl"
    generate_ramp(str(corpus), ramp, n=args.n, strategy="rules", max_masks=2, seed=args.seed, progress=False)
    retriever = make_retriever(f"bm25:{index}", k=5)
    model = make_chat_model("smollm2", temperature=0.0, max_new_tokens=args.max_new_tokens)
    model.invoke("Hello")  # load + warm up outside the timed runs
    print(f"model: smollm2 (max_new_tokens={args.max_new_tokens}), {args.n} RAMP examples, "
          f"max_turns={args.max_turns}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")

    results = {}
    for c in (1, args.concurrency):
        ctx = TeacherContext(models=model, retriever=retriever, max_turns=args.max_turns, name="smollm2")
        s = run_cot(ramp, work / f"c{c}", ctx, retriever, concurrency=c, resume=False, progress=False)
        results[c] = s
        print(f"concurrency {c}: {s['trajectories']} trajectories in {s['seconds']:.1f}s -> "
              f"{s['trajectories_per_minute']:.2f}/min; accepted {s['accepted']} "
              f"({s['acceptance_rate']:.0%}); status {s['by_status']}; mean turns {s['mean_turns']}; "
              f"malformed role outputs {sum(s['malformed_role_outputs'].values())}")
    prov = run_cot(ramp, work / "provenance", "provenance", retriever, resume=False, progress=False)
    print(f"provenance teacher on the same questions: accepted {prov['accepted']}/{prov['trajectories']} "
          f"({prov['acceptance_rate']:.0%}), {prov['trajectories_per_minute']:.0f}/min")

    c1, cN = results[1], results[args.concurrency]
    tpm1, tpmN = c1["trajectories_per_minute"], cN["trajectories_per_minute"]
    print(json.dumps({
        "tpm_c1": round(tpm1, 3),
        f"tpm_c{args.concurrency}" if args.concurrency != 8 else "tpm_c8": round(tpmN, 3),
        "speedup": round(tpmN / tpm1, 2) if tpm1 else None,
        "acceptance_rate": cN["acceptance_rate"],
        "acceptance_rate_c1": c1["acceptance_rate"],
        "mean_turns": cN["mean_turns"],
        "provenance_acceptance_rate": prov["acceptance_rate"],
        "n": args.n,
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
    }))


if __name__ == "__main__":
    main()
