"""The LLM teacher measured: Qwen2.5-Coder 0.5B and 1.5B through a real llama.cpp server, beside
the provenance teacher, on the same RAMP questions.

Each Qwen model plays every role (planner, rewriter, observer) of the teacher graph, answering in
JSON schemas (constrained decoding); BM25 (tantivy) over the shared 31k-passage corpus is the
search tool. The accept rule is the one ``masksearch cot`` uses: answered, well formed, string
verdict (EM against every masked span), grounded, and no degenerate queries. Printed per teacher:
acceptance rate, rejection and malformed-reply reasons, trajectories per minute (the llama.cpp
server is started before the clock), mean searches and turns; then the ratio to the provenance
teacher's acceptance.

Needs the 1.5B parts: ``make teacher-1p5b``. Resumable: a rerun with the same ``--out`` keeps the
trajectories already written and adds the rest (wall time and counts accumulate in
``OUT/bench_state.json``), so a long run on a busy machine can be stopped and continued.

    nice -n 19 .venv/bin/python benchmarks/bench_teacher_llm.py [--n 48] [--models 1.5b,0.5b]
        [--concurrency 8] [--max-turns 4] [--out runs/bench_teacher_llm]

Last printed line: one JSON object with ``acceptance_rate_1p5b``, ``acceptance_rate_0p5b``,
``tpm_1p5b``, ``tpm_0p5b`` (and the provenance teacher's ``acceptance_rate_provenance``).

``--report-only`` starts nothing: it prints the same report from what ``OUT`` holds, for a run that
was stopped or is still going. Its JSON line says ``complete: false`` per model while runs are
missing and adds ``prefix_*``: the figures on the longest run of questions, in file order, that all
finished. (Runs finish out of order; the short ones, which are mostly the accepted ones, first, so
the rate on all finished runs of an unfinished pass leans high.) Its trajectories a minute for a
pass that was stopped is estimated from file times: the job file (written at the pass's start) to
the last trajectory written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = {"0.5b": "qwen2.5-coder-0.5b", "1.5b": "qwen2.5-coder-1.5b"}


def _key(tag: str) -> str:
    return tag.replace(".", "p")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="RAMP questions")
    ap.add_argument("--models", default="1.5b,0.5b", help="comma list of 0.5b, 1.5b")
    ap.add_argument("--concurrency", type=int, default=8, help="runs in flight = llama.cpp slots")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all usable cores)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_teacher_llm")
    ap.add_argument("--index", default=None, help="BM25 index of the shared corpus (default: the cache's "
                                                  "bm25-shared, built once if missing)")
    ap.add_argument("--report-only", action="store_true", help="print the report from OUT as it stands; run nothing")
    ap.add_argument("--baseline", default=None, help="with --report-only: an earlier OUT on the same questions; "
                                                     "prints accepted runs paired question by question")
    args = ap.parse_args()
    tags = [t.strip() for t in args.models.split(",") if t.strip()]
    if args.report_only:
        report_only(Path(args.out), tags, args.n, Path(args.baseline) if args.baseline else None)
        return

    from masksearch.data.ramp import generate_ramp
    from masksearch.models.llamacpp import server_metrics, shared_server
    from masksearch.paths import home, shared_corpus
    from masksearch.retrieval import build_index
    from masksearch.training.export import run_cot

    corpus = shared_corpus()
    if corpus is None:
        sys.exit("the shared corpus (../shared/data/corpus/wiki_passages.jsonl) is missing")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = Path(args.index) if args.index else home() / "bm25-shared"
    if not (index / "manifest.json").exists():
        build_index(str(corpus), kind="bm25", out=str(index))
    ramp = out / "ramp.jsonl"
    if not ramp.exists():
        generate_ramp(str(corpus), ramp, n=args.n, strategy="rules", max_masks=2, seed=args.seed, progress=False)
    retriever = f"bm25:{index}"
    state_path = out / "bench_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    print(f"{args.n} RAMP questions ({ramp}), BM25 {index}, max_turns {args.max_turns}, concurrency "
          f"{args.concurrency}; host {platform.machine()} {os.cpu_count()} cpus "
          f"(a shared machine: other jobs' load slows every figure)")

    results: dict[str, dict] = {}
    prov = run_cot(ramp, out / "provenance", teacher="provenance", retriever=retriever, limit=args.n,
                   concurrency=4, progress=False)
    results["provenance"] = prov

    for tag in tags:
        name = MODELS[tag]
        opts = {"n_parallel": args.concurrency, "max_new_tokens": args.max_new_tokens, "temperature": 0.0}
        if args.threads:
            opts["n_threads"] = args.threads
        t = time.perf_counter()
        srv = shared_server(name, n_parallel=args.concurrency, n_threads=args.threads)  # loaded before the clock
        print(f"[{tag}] llama.cpp server ready in {time.perf_counter() - t:.1f}s")
        s = run_cot(ramp, out / tag, teacher=f"llamacpp:{name}", retriever=retriever, limit=args.n,
                    concurrency=args.concurrency, max_turns=args.max_turns, model_options=opts, progress=False)
        try:  # where this pass's compute went: prompt tokens evaluated vs. tokens generated
            s["server"] = server_metrics(srv.url)
        except Exception as e:  # noqa: BLE001 - a report line, never the benchmark's failure
            print(f"[{tag}] no server metrics: {e}")
        st = state.setdefault(tag, {"seconds": 0.0, "new": 0})
        st["seconds"] += s["seconds"]
        st["new"] += s["new_this_run"]
        state_path.write_text(json.dumps(state, indent=2))
        s["tpm_total"] = round(st["new"] / st["seconds"] * 60, 3) if st["seconds"] > 0 else 0.0
        results[tag] = s

    _print_report(results, tags, args.n)


def _print_report(results: dict[str, dict], tags: list[str], n: int, extra: dict | None = None) -> None:
    print(f"\n{'teacher':<12}{'runs':>6}{'accepted':>10}{'rate':>8}{'traj/min':>10}{'searches':>10}{'turns':>8}")
    for k, s in results.items():
        tpm = s.get("tpm_total", s.get("trajectories_per_minute")) or 0.0
        print(f"{k:<12}{s['trajectories']:>6}{s['accepted']:>10}{s['acceptance_rate']:>8.2f}{tpm:>10.2f}"
              f"{s['mean_searches']:>10.2f}{s['mean_turns']:>8.2f}")
    for k, s in results.items():
        print(f"[{k}] rejected: {s['rejected_by_reason']}  malformed replies: {s['malformed_role_outputs']}  "
              f"status: {s['by_status']}  re-planned after a refusal: {s.get('runs_replanned_after_refusal', 0)}")
    for k, s in results.items():
        if k == "provenance":
            continue
        tok = s.get("tokens_by_role") or {}
        if tok:
            print(f"[{k}] tokens per run by role (prompt / cached / completion): "
                  + ", ".join(f"{r} {v['prompt']:.0f}/{v['cached']:.0f}/{v['completion']:.0f}" for r, v in tok.items()))
        m = s.get("server")
        if m:
            ev, ca, gen = m.get("prompt_tokens_evaluated", 0), m.get("prompt_tokens_cached", 0), m.get("tokens_generated", 0)
            print(f"[{k}] server: {ev:.0f} prompt tokens evaluated, {ca:.0f} from the prompt cache "
                  f"({ca / (ev + ca) if ev + ca else 0:.0%}), {gen:.0f} generated; evaluated per generated token "
                  f"{ev / gen if gen else 0:.1f}")
    prov = results.get("provenance", {})
    p_rate = prov.get("acceptance_rate") or 0.0
    for tag in tags:
        if tag in results:
            r = results[tag]["acceptance_rate"]
            print(f"[{tag}] acceptance {r:.2f} vs provenance {p_rate:.2f}: ratio {r / p_rate if p_rate else 0:.2f}")
    final: dict = {"n": n, "acceptance_rate_provenance": p_rate}
    for tag in ("1.5b", "0.5b"):
        s = results.get(tag)
        final[f"acceptance_rate_{_key(tag)}"] = s["acceptance_rate"] if s else None
        final[f"tpm_{_key(tag)}"] = s.get("tpm_total") if s else None
        final[f"accepted_{_key(tag)}"] = s["accepted"] if s else None
        final[f"trajectories_{_key(tag)}"] = s["trajectories"] if s else None
    final.update(extra or {})
    print(json.dumps(final))


def _accepted_by_id(path: Path) -> dict[str, bool]:
    from masksearch.training.export import AcceptFilter
    from masksearch.trajectory import read_trajectories

    filt = AcceptFilter()
    return {t.id: filt.check(t)[0] for t in read_trajectories(str(path))}


def report_only(out: Path, tags: list[str], n: int, baseline: Path | None = None) -> None:
    """The report from ``out`` as it stands (see the module docstring); starts no server. With a
    ``baseline`` (an earlier ``OUT``), the accepted runs of both on the questions both finished."""
    from masksearch.training.export import summarize_trajectories

    order = [json.loads(line)["id"] for line in open(out / "ramp.jsonl", encoding="utf-8") if line.strip()][:n]
    state_path = out / "bench_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    results: dict[str, dict] = {}
    extra: dict = {}
    for tag in ["provenance"] + tags:
        path = out / tag / "trajectories.jsonl"
        if not path.exists():
            continue
        now = _accepted_by_id(path)  # every finished run, read once
        done = set(now) & set(order)
        s = summarize_trajectories(path, ids=set(order))
        if tag != "provenance":
            st = state.get(tag, {"seconds": 0.0, "new": 0})
            seconds, new = st["seconds"], st["new"]
            job = out / tag / "trajectories.jsonl.job.json"
            if len(done) > new and job.exists():  # a pass stopped before it wrote its state
                seconds += max(0.0, path.stat().st_mtime - job.stat().st_mtime)
                new = len(done)
            s["tpm_total"] = round(new / seconds * 60, 3) if seconds > 0 else None
            k = 0
            while k < len(order) and order[k] in done:
                k += 1
            pre = summarize_trajectories(path, ids=set(order[:k])) if k else None
            extra[f"complete_{_key(tag)}"] = len(done) == len(order)
            extra[f"prefix_{_key(tag)}"] = k
            extra[f"prefix_acceptance_rate_{_key(tag)}"] = pre["acceptance_rate"] if pre else None
            print(f"[{tag}] {len(done)} of {len(order)} questions done; the first {k} (file order) all done: "
                  f"{pre['accepted'] if pre else 0} accepted ({pre['acceptance_rate'] if pre else 0:.2%})")
            base_path = baseline / tag / "trajectories.jsonl" if baseline else None
            if base_path is not None and base_path.exists():
                before = _accepted_by_id(base_path)
                both = [i for i in order if i in now and i in before]
                gained = sum(1 for i in both if now[i] and not before[i])
                lost = sum(1 for i in both if before[i] and not now[i])
                print(f"[{tag}] paired with {baseline} on the {len(both)} questions both finished: accepted "
                      f"{sum(before[i] for i in both)} then, {sum(now[i] for i in both)} now ({gained} gained, {lost} lost)")
                extra[f"paired_{_key(tag)}"] = {"n": len(both), "baseline": sum(before[i] for i in both),
                                                "now": sum(now[i] for i in both), "gained": gained, "lost": lost}
        results[tag] = s
    _print_report(results, tags, n, extra)


if __name__ == "__main__":
    main()
