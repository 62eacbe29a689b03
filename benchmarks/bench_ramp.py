"""RAMP generation speed and solvability on the shared corpus (figures, not a timed test).

    .venv/bin/python benchmarks/bench_ramp.py [--n-rules 5000] [--n-llm 16] [--n-ppl 16]

Measures passages processed per second (kept + skipped, model/extraction phase; the one-off
corpus scan is reported separately) for ``rules``, ``llm`` with the embedded SmolLM2-135M at
concurrency 1 and 16, and ``ppl``; then the share of examples whose source passage is in the
BM25 top-5 for the masked passage, per strategy and mask count.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=None, help="default: ../shared/data/corpus/wiki_passages.jsonl")
    ap.add_argument("--n-rules", type=int, default=5000)
    ap.add_argument("--n-llm", type=int, default=16, help="examples asked of the llm strategy (per concurrency)")
    ap.add_argument("--n-ppl", type=int, default=16)
    ap.add_argument("--skip-models", action="store_true", help="rules + solvability only")
    ap.add_argument("--index", default=None, help="an existing BM25 index folder of the corpus (else built)")
    ap.add_argument("--out", default=None, help="folder for the generated files (default: a temp dir)")
    args = ap.parse_args()

    from masksearch.data.ramp import _make_model, generate_ramp, solvability_report
    from masksearch.paths import shared_corpus

    corpus = args.corpus or str(shared_corpus())
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-ramp-"))
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"corpus": corpus, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}

    s = generate_ramp(corpus, out / "rules.jsonl", args.n_rules, "rules", progress=False, resume=False)
    res["rules_pps"] = s["pps"]
    res["rules_cpu_pps"] = s["cpu_pps"]  # per CPU second: the figure for a quiet core
    res["rules_end_to_end_pps"] = s["end_to_end_pps"]
    res["rules_select_s"] = s["select_s"]
    res["rules_mask_counts"] = s["mask_counts"]
    res["rules_skipped"] = s["skipped"]
    print(f"rules: {s['processed']} passages in {s['gen_s']} s = {s['pps']}/s "
          f"({s['cpu_pps']} per CPU second; with the corpus scan {s['end_to_end_pps']}/s); kept {s['kept']}", flush=True)

    files = {"rules": out / "rules.jsonl"}
    if not args.skip_models:
        t = time.perf_counter()
        chat = _make_model("smollm2", temperature=0.0, max_new_tokens=96, max_batch_size=32)
        res["model_load_s"] = round(time.perf_counter() - t, 2)
        for c in (1, 16):
            n = max(2, args.n_llm // 4) if c == 1 else args.n_llm
            s = generate_ramp(corpus, out / f"llm_c{c}.jsonl", n, "llm", model=chat, concurrency=c,
                              progress=False, resume=False)
            res[f"llm_pps_c{c}"] = s["pps"]
            res[f"llm_cpu_pps_c{c}"] = s["cpu_pps"]
            res[f"llm_c{c}_detail"] = {k: s[k] for k in ("kept", "processed", "gen_s", "skipped", "mask_counts")}
            print(f"llm c={c}: {s['processed']} passages in {s['gen_s']} s = {s['pps']}/s; kept {s['kept']}; "
                  f"skipped {s['skipped']}", flush=True)
        files["llm"] = out / "llm_c16.jsonl"
        s = generate_ramp(corpus, out / "ppl.jsonl", args.n_ppl, "ppl", model=chat, concurrency=8,
                          progress=False, resume=False)
        res["ppl_pps"] = s["pps"]
        res["ppl_cpu_pps"] = s["cpu_pps"]
        res["ppl_detail"] = {k: s[k] for k in ("kept", "processed", "gen_s", "mask_counts")}
        print(f"ppl: {s['processed']} passages in {s['gen_s']} s = {s['pps']}/s", flush=True)
        files["ppl"] = out / "ppl.jsonl"

    from masksearch.retrieval import build_index

    idx = Path(args.index) if args.index else out / "bm25"
    if not args.index:
        t = time.perf_counter()
        build_index(corpus, kind="bm25", out=str(idx))
        res["bm25_build_s"] = round(time.perf_counter() - t, 2)
    solv = {}
    for name, path in files.items():
        rep = solvability_report(path, f"bm25:{idx}", k=5)
        solv[name] = {"overall": rep["rate"], "n": rep["n"],
                      **{str(m): v["rate"] for m, v in rep["by_mask_count"].items()}}
        short = solvability_report(path, f"bm25:{idx}", k=5, query_words=16, limit=1000)
        solv[name + "_first16words"] = {"overall": short["rate"], "n": short["n"],
                                        **{str(m): v["rate"] for m, v in short["by_mask_count"].items()}}
        print(f"solvable top-5 {name}: {rep['rate']} of {rep['n']}; by mask count "
              f"{ {m: v['rate'] for m, v in rep['by_mask_count'].items()} }", flush=True)
    res["solvable_top5"] = solv
    res["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
