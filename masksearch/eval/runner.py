"""The benchmark runner: a method over benchmarks, concurrent, resumable, scored.

``run_eval(method, model, retriever, benchmarks=[...] | data=[...], limit, concurrency, out_dir)``
runs the questions of each benchmark through the method with up to ``concurrency`` questions in
flight (asyncio; a batching local model turns them into batched ``generate`` calls), and writes

* ``OUT/<benchmark>/predictions.jsonl`` – one record per question: the prediction, its status,
  per-question metric values, optional judge verdict and the full trajectory.  Written as each
  question finishes; a rerun skips the ids already there (a torn last line is repaired);
* ``OUT/results.json`` – per-benchmark means over *every* record in the file (so a resumed run
  reports the whole benchmark), the average over benchmarks, counts and wall time.

A question whose run raises (or ends with status ``error``: a crashed model or retriever) is
counted (``failed``), not written, and retried by a rerun; the warning names the causes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from masksearch.data.benchmarks import benchmark_name, load_benchmark
from masksearch.data.qa import QAExample
from masksearch.eval.baselines import make_method, spec_name
from masksearch.eval.metrics import METRICS, aggregate, score
from masksearch.scoring import example_match
from masksearch.trajectory import Trajectory
from masksearch.utils.jsonl import ReadStats, ResumableJsonlWriter, input_fingerprint, iter_jsonl
from masksearch.utils.scrub import safe_text, scrub, scrub_obj

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"


def _resolve_model(model: Any) -> Any:
    if model is None or isinstance(model, str):
        from masksearch.models import make_chat_model

        spec = model or "smollm2"
        if spec == "smollm2" or spec.startswith("hf:"):
            # greedy decoding for a reproducible score; wait a little longer for concurrent calls
            # so that batches fill up on a busy CPU
            return make_chat_model(spec, temperature=0.0, batch_wait_ms=100)
        return make_chat_model(spec)
    return model


def _resolve_retriever(retriever: Any) -> Any:
    if retriever is None:
        raise ValueError("a retriever is needed: a spec such as 'bm25:PATH' or a retriever object")
    if isinstance(retriever, str):
        from masksearch.retrieval import make_retriever

        return make_retriever(retriever)
    return retriever


def prediction_record(example: QAExample, traj: Trajectory, benchmark: str, elapsed_s: float,
                      verdict: dict[str, Any] | None = None) -> dict[str, Any]:
    metrics = score(traj.answer, example)
    if verdict is not None:
        metrics["judge"] = 1.0 if verdict.get("correct") else 0.0
        traj.verdicts["llm"] = verdict
    traj.verdicts.setdefault("metrics", metrics)
    return {
        "id": example.id,
        "benchmark": benchmark,
        "question": example.question,
        "golden_answers": list(example.golden_answers),
        "answer_match": example.answer_match,
        "prediction": traj.answer,
        "status": traj.status,
        "num_searches": traj.num_searches,
        "metrics": metrics,
        "elapsed_s": round(elapsed_s, 3),
        "trajectory": traj.to_dict(),
    }


def summarize_predictions(path: str | os.PathLike) -> dict[str, Any]:
    """Means of every metric over a predictions file, with counts by status."""
    rows, statuses, searches = [], Counter(), []
    for rec in iter_jsonl(path, stats=ReadStats()):
        rows.append(rec.get("metrics") or {})
        statuses[rec.get("status", "?")] += 1
        searches.append(rec.get("num_searches") or 0)
    return {
        "n": len(rows),
        "metrics": aggregate(rows),
        "status_counts": dict(statuses),
        "avg_searches": sum(searches) / len(searches) if searches else 0.0,
    }


class EvalWorker:
    """The work of one question: ``(benchmark, example) -> prediction record`` (the method, then the
    optional judge, then the metrics).  A run that ends with status ``error`` raises, so it is
    counted as failed, not written."""

    def __init__(self, method: Any, judge: Any = None):
        self.method, self.judge = method, judge

    async def __call__(self, item: tuple[str, QAExample]) -> dict[str, Any]:
        bench, ex = item
        t0 = time.perf_counter()
        traj = await self.method(ex)
        if traj.status == "error":  # the graphs report a crashed run instead of raising
            raise RuntimeError(traj.reason or "run ended with status error")
        verdict = None
        if self.judge is not None:
            v = await self.judge.ajudge(ex.question, ex.golden_answers, traj.answer, example_match(ex))
            verdict = v.to_dict()
        return prediction_record(ex, traj, bench, time.perf_counter() - t0, verdict)


def build_eval_worker(method: str, model: Any = "smollm2", retriever: Any = None, judge: str | None = None,
                      **options: Any) -> EvalWorker:
    """An :class:`EvalWorker` from spec strings (what each Ray worker builds once)."""
    model_obj = _resolve_model(model)
    m = make_method(method, model_obj, _resolve_retriever(retriever), **options)
    j = None
    if judge:
        from masksearch.eval.judge import LLMJudge

        j = LLMJudge(judge)
    return EvalWorker(m, j)


async def _run_benchmark(method: Any, examples: Sequence[QAExample], bench: str, out_path: Path,
                         executor: Any, judge: Any, resume: bool, progress: bool,
                         position: int = 0, job: dict[str, Any] | None = None,
                         inputs: Sequence[Any] = ()) -> dict[str, Any]:
    """One benchmark through the job runner; ``executor`` runs :class:`EvalWorker` items (shared by
    every benchmark of the run).  ``method`` is only named here (the executor holds the work)."""
    from masksearch.utils.jobs import run_jobs

    name = method if isinstance(method, str) else getattr(method, "name", type(method).__name__)
    writer = ResumableJsonlWriter(out_path, resume=resume, job=job, inputs=inputs)
    try:
        rep = await run_jobs([(bench, ex) for ex in examples], executor, key=lambda it: it[1].id,
                             done=writer.done, on_result=lambda _it, rec: writer.write(rec) and None,
                             progress={"desc": f"{name}:{bench}", "unit": "q", "position": position,
                                       "total": len(examples)} if progress else None)
    finally:
        writer.close()
    ran, wall = rep.ran, rep.wall_s
    ids = {ex.id for ex in examples}
    summary = summarize_predictions(out_path) if out_path.exists() else {"n": 0, "metrics": {}}
    # only the requested questions count (a file may hold more from an earlier, larger --limit)
    if summary["n"] != len(ids):
        rows = [r for r in iter_jsonl(out_path, stats=ReadStats()) if r.get("id") in ids]
        summary = {"n": len(rows), "metrics": aggregate([r.get("metrics") or {} for r in rows]),
                   "status_counts": dict(Counter(r.get("status", "?") for r in rows)),
                   "avg_searches": sum(r.get("num_searches") or 0 for r in rows) / len(rows) if rows else 0.0}
    summary.update({"requested": len(examples), "ran": ran, "failed": rep.n_failed,
                    "failures": dict(rep.failed.most_common(5)), "wall_s": round(wall, 2),
                    "questions_per_min": round(ran / wall * 60, 2) if ran and wall > 0 else None})
    return summary


async def arun_eval(method: str | Any = "agent", model: Any = "smollm2", retriever: Any = None,
                    benchmarks: Sequence[str] | None = None, data: Sequence[str] | None = None,
                    limit: int | None = None, concurrency: int = 8, out_dir: str | os.PathLike = "eval-out",
                    k: int = 3, max_turns: int = 4, judge: Any = None, label: str | None = None,
                    resume: bool = True, progress: bool = True, executor: str | None = None,
                    ray_address: str | None = None, workers: int | None = None,
                    **method_options: Any) -> dict[str, Any]:
    """Async :func:`run_eval` (for notebooks with a running event loop)."""
    from masksearch.utils.jobs import LocalExecutor, WorkerSpec, make_executor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources: list[str] = list(benchmarks or []) + list(data or [])
    if not sources:
        raise ValueError("nothing to evaluate: give benchmarks (names) and/or data (files)")
    model_name = method_options.pop("model_name", None) or spec_name(model)
    retriever_name = method_options.pop("retriever_name", None) or spec_name(retriever)
    if executor not in (None, "local"):
        # every worker builds the method (model, retriever) and the judge once, from their specs
        if not isinstance(method, str) or not isinstance(model, (str, type(None))) \
                or not isinstance(retriever, str) or not isinstance(judge, (str, type(None))):
            from masksearch.errors import MaskSearchError

            raise MaskSearchError(f"--executor {executor} builds the method in each worker: give the method by name "
                                  "and the model, retriever and judge as spec strings")
        method_name = method
        spec = WorkerSpec("masksearch.eval.runner:build_eval_worker", dict(
            method=method, model=model, retriever=retriever, judge=judge, k=k,
            max_turns=max_turns, model_name=model_name, retriever_name=retriever_name, **method_options))
        def make_ex() -> Any:
            return make_executor(executor, spec, concurrency=concurrency, address=ray_address, workers=workers)
        judge_name = judge or None
    else:
        if isinstance(method, str):
            method_name = method
            model_obj = _resolve_model(model)
            retr_obj = _resolve_retriever(retriever)
            method = make_method(method, model_obj, retr_obj, k=k, max_turns=max_turns, model_name=model_name,
                                 retriever_name=retriever_name, **method_options)
        else:
            method_name = getattr(method, "name", type(method).__name__)
        if isinstance(judge, str):
            from masksearch.eval.judge import LLMJudge

            judge = LLMJudge(judge)
        judge_name = getattr(judge, "name", None) if judge is not None else None
        work = EvalWorker(method, judge)

        def make_ex() -> Any:
            return LocalExecutor(work, concurrency=max(1, concurrency))

    results_path = out / RESULTS_FILE
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    results: dict[str, Any] = {
        "label": label or previous.get("label") or f"{method_name} ({model_name})",
        "method": method_name, "model": model_name, "retriever": retriever_name,
        "k": k, "max_turns": max_turns, "limit": limit, "concurrency": concurrency,
        "judge": judge_name, "executor": executor or "local",
        "benchmarks": dict(previous.get("benchmarks") or {}),
    }
    t_all = time.perf_counter()
    loaded = []
    names: Counter = Counter()
    for src in sources:
        stats = ReadStats()
        bench = benchmark_name(src)
        names[bench] += 1
        if names[bench] > 1:  # two --data files with the same name get separate result buckets
            bench = f"{bench}-{names[bench]}"
        loaded.append((src, bench, load_benchmark(src, limit=limit, stats=stats), stats))
    # every benchmark's questions share one executor (`concurrency` slots locally, or per Ray
    # worker), so a small --limit per benchmark still fills the model's batches
    ex_obj = make_ex()

    async def bench_task(i: int, src: str, bench: str, examples: list[QAExample], stats: ReadStats) -> None:
        is_file = os.path.exists(str(src))
        job = {"command": "eval", "method": method_name, "model": scrub(model_name),
               "source": input_fingerprint(src) if is_file else str(src)}
        summary = await _run_benchmark(method_name, examples, bench, out / bench / PREDICTIONS_FILE, ex_obj,
                                       judge, resume, progress, position=i, job=job,
                                       inputs=[src] if is_file else [])
        summary["source"] = str(src)
        summary["load"] = stats.summary()
        prev_wall = ((previous.get("benchmarks") or {}).get(bench) or {}).get("wall_s_total", 0.0) if resume else 0.0
        summary["wall_s_total"] = round(prev_wall + summary["wall_s"], 2)
        results["benchmarks"][bench] = summary
        if summary["failed"]:
            print(scrub(f"warning: {bench}: {summary['failed']} question(s) failed and were not written "
                        f"(rerun to retry): {summary['failures']}"))
        _write_results(results_path, results)

    try:
        await asyncio.gather(*(bench_task(i, *item) for i, item in enumerate(loaded)))
    finally:
        ex_obj.close()
    results["wall_s"] = round(time.perf_counter() - t_all, 2)
    results["wall_s_total"] = round(results["wall_s"] + (previous.get("wall_s_total", 0.0) if resume else 0.0), 2)
    _write_results(results_path, results)
    return results


def _write_results(path: Path, results: dict[str, Any]) -> None:
    benches = results["benchmarks"]
    metrics = sorted({m for b in benches.values() for m in (b.get("metrics") or {})},
                     key=lambda m: (METRICS + ("judge",)).index(m) if m in METRICS + ("judge",) else 99)
    results["avg"] = {m: sum(b["metrics"][m] for b in benches.values() if m in b.get("metrics", {}))
                      / max(1, sum(1 for b in benches.values() if m in b.get("metrics", {})))
                      for m in metrics}
    results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(safe_text(json.dumps(scrub_obj(results), indent=2, ensure_ascii=False)), encoding="utf-8")
    os.replace(tmp, path)


def run_eval(method: str | Any = "agent", model: Any = "smollm2", retriever: Any = None,
             benchmarks: Sequence[str] | None = None, data: Sequence[str] | None = None,
             limit: int | None = None, concurrency: int = 8, out_dir: str | os.PathLike = "eval-out",
             **kwargs: Any) -> dict[str, Any]:
    """Evaluate ``method`` (``rag-pe`` | ``agent`` | ``teacher`` or a method object) with ``model``
    (a spec or chat model) and ``retriever`` (a spec or retriever) on ``benchmarks`` (short names)
    and/or ``data`` (files); returns the ``results.json`` content.  See the module docstring."""
    from masksearch.utils.aio import run_sync

    return run_sync(arun_eval(method, model, retriever, benchmarks=benchmarks, data=data, limit=limit,
                              concurrency=concurrency, out_dir=out_dir, **kwargs))


__all__ = ["run_eval", "arun_eval", "summarize_predictions", "prediction_record", "EvalWorker", "build_eval_worker"]
