"""Local vs Ray executor on the same job: ``cot --teacher provenance`` over RAMP questions from the
shared corpus, BM25 (tantivy) as the retriever (figures, not a test).

Both runs go through the one job runner and write the same records (checked here).  The Ray run
starts a local cluster (``--workers`` actors, one CPU each), each worker loading the BM25 index
once; its wall time includes that start-up, reported separately as ``ray_start_s``.

    .venv/bin/python benchmarks/bench_executor.py [--n 200] [--workers 2] [--concurrency 4]

Last printed line: one JSON object with ``local_s``, ``ray_s``, ``ray_start_s``, ``ratio``
(local_s / ray_s; > 1 means Ray was faster), ``same_records``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))


def _records(path: Path) -> dict:
    out = {}
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        r.get("metadata", {}).pop("seconds", None)
        out[r["id"]] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="RAMP questions")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers")
    ap.add_argument("--concurrency", type=int, default=4, help="runs in flight (locally; per Ray worker)")
    args = ap.parse_args()

    import ray

    from masksearch.data.ramp import generate_ramp
    from masksearch.paths import shared_corpus
    from masksearch.retrieval import build_index
    from masksearch.training.export import run_cot

    tmp = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    corpus = str(shared_corpus())
    build_index(corpus, out=tmp / "bm25", progress=False)
    generate_ramp(corpus, tmp / "ramp.jsonl", n=args.n, max_masks=2, seed=11, progress=False)
    spec = f"bm25:{tmp / 'bm25'}"

    t0 = time.perf_counter()
    run_cot(tmp / "ramp.jsonl", tmp / "local", "provenance", spec, concurrency=args.concurrency, progress=False)
    local_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_cot(tmp / "ramp.jsonl", tmp / "ray", "provenance", spec, concurrency=args.concurrency, progress=False,
            executor="ray", workers=args.workers)
    ray_s = time.perf_counter() - t0
    ray.shutdown()

    same = _records(tmp / "local" / "trajectories.jsonl") == _records(tmp / "ray" / "trajectories.jsonl")
    print(f"cot provenance, {args.n} questions: local {local_s:.1f} s, Ray ({args.workers} workers) {ray_s:.1f} s "
          f"+ {start_s:.1f} s cluster start; local/ray = {local_s / ray_s:.2f}; same records: {same}")
    print(json.dumps({"n": args.n, "workers": args.workers, "cpus": os.cpu_count(), "local_s": round(local_s, 2),
                      "ray_s": round(ray_s, 2), "ray_start_s": round(start_s, 2),
                      "ratio": round(local_s / ray_s, 3), "same_records": same}))


if __name__ == "__main__":
    main()
