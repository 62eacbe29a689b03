"""Generation: the ``generate_ramp`` job (:func:`generate_ramp`) on the runner of
:mod:`masksearch.utils.jobs`, its worker (:class:`RampWorker`) and its summary (:func:`format_summary`).

Candidates come from :mod:`~masksearch.data.ramp.selection`, each worker runs the strategy's
extractor (:mod:`~masksearch.data.ramp.extractors`); the driver drops samples that start with
``[mask]`` and duplicate masked passages, and writes one JSONL record per example
(:data:`~masksearch.data.ramp.common.RECORD_FIELDS`) through
:class:`~masksearch.utils.jsonl.ResumableJsonlWriter`: ids are derived from passage id, strategy and
seed, so a rerun after a kill skips what is done and duplicates nothing.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from typing import Any, Sequence

from masksearch.data.ramp.common import STRATEGIES, RampError
from masksearch.data.ramp.extractors import make_extractor
from masksearch.data.ramp.masking import MaskConfig, example_id
from masksearch.data.ramp.selection import Candidate, PassageFilter, select_passages
from masksearch.errors import UnknownSpecError
from masksearch.utils.aio import run_sync
from masksearch.utils.jobs import LocalExecutor, WorkerSpec, make_executor, run_jobs
from masksearch.utils.jsonl import ReadStats, ResumableJsonlWriter, input_fingerprint, iter_jsonl, parse_shard

def _masked_key(masked: str) -> str:
    return hashlib.sha1(masked.encode()).hexdigest()


class RampWorker:
    """The span-extraction work of one worker (local, or a Ray actor built from plain options).

    ``run_batch(cands)`` -> one ``(record | skip reason, stats)`` per candidate, in order; the first
    entry's ``stats`` carry the batch's span drops and unparseable replies (counted by the driver),
    the others ``None``."""

    def __init__(self, strategy: str, seed: int = 0, max_masks: int = 4, mask_dist: Sequence[float] | None = None,
                 model: Any = None, concurrency: int = 8):
        self.drops: Counter = Counter()
        self.extractor = make_extractor(strategy, MaskConfig(max_masks=max_masks, mask_dist=mask_dist), seed,
                                        self.drops, model, concurrency)

    async def run_batch(self, cands: Sequence[Candidate]) -> list[tuple[dict[str, Any] | str, dict | None]]:
        before, unp = Counter(self.drops), getattr(self.extractor, "replies_unparseable", 0)
        results = await self.extractor.process(cands)
        stats = {"drops": dict(self.drops - before),
                 "unparseable": getattr(self.extractor, "replies_unparseable", 0) - unp}
        return [(r, stats if i == 0 else None) for i, r in enumerate(results)]


def generate_ramp(corpus: Any, out: str | os.PathLike, n: int, strategy: str = "rules", model: Any = None,
                  max_masks: int = 4, seed: int = 0, shard: str | None = None, concurrency: int = 8,
                  progress: bool = True, *, mask_dist: Sequence[float] | None = None,
                  passage_filter: PassageFilter | None = None, oversample: float | None = None,
                  resume: bool = True, executor: str | None = None, ray_address: str | None = None,
                  workers: int | None = None) -> dict[str, Any]:
    """Generate ``n`` RAMP examples (this shard's share of ``n`` with ``shard="i/k"``) into ``out``.

    ``corpus``: a corpus path (any format of ``masksearch.retrieval.read_corpus``) or an iterable
    of passages/dicts.  ``model``: for ``llm`` any chat model or spec (default ``smollm2``); for
    ``ppl`` a local model, spec, ``(model, tokenizer)`` or :class:`PplScorer`.  ``concurrency``
    bounds the model calls in flight (they are batched by a ``LocalChatModel``).  Rerunning with the
    same arguments resumes: finished ids are skipped, nothing is lost or duplicated.

    ``executor="ray"`` (``ray_address``, ``workers``) spreads the span extraction over Ray workers,
    each building its extractor (and model, from a spec string) once; the driver selects the
    passages, commits the results in candidate order and is the only writer, so the file is the one
    a local run writes.

    Returns a summary: ``kept`` (in the file for this job), ``written`` (this run), ``resumed``,
    ``skipped`` (by reason), ``filtered`` (passages the selection dropped, by reason),
    ``span_drops``, ``mask_counts`` and timing (``pps`` = passages processed per wall-clock second
    of the generation phase, ``cpu_pps`` per CPU second of this process, ``end_to_end_pps`` with the
    corpus scan).
    """
    i_shard, n_shards = _check_options(strategy, n, shard, executor, model, max_masks, mask_dist)
    shard_s = f"{i_shard}/{n_shards}"
    target = n // n_shards + (1 if i_shard < n % n_shards else 0)
    oversample = oversample if oversample is not None else (2.0 if strategy == "rules" else 4.0)
    t0 = time.perf_counter()
    filtered: Counter = Counter()
    stats = ReadStats()
    pool = int(math.ceil(target * oversample)) + (64 if strategy == "rules" else 0)
    writer = _open_writer(corpus, out, strategy, seed, shard_s, resume)
    try:
        cands = select_passages(corpus, pool, seed=seed,
                                shard=(i_shard, n_shards), flt=passage_filter, filtered=filtered, stats=stats)
    except BaseException:
        writer.close()
        raise
    t_select = time.perf_counter() - t0

    tally = _Tally(writer, strategy, seed)
    worker = dict(strategy=strategy, seed=seed, max_masks=max_masks, mask_dist=list(mask_dist) if mask_dist else None,
                  model=model, concurrency=concurrency)
    chunk_size = 256 if strategy == "rules" else max(1, concurrency)
    try:
        summary = run_sync(_extract(cands, tally, worker, target, chunk_size, progress,
                                    executor=executor, ray_address=ray_address, workers=workers))
    finally:
        writer.close()
    total_s = time.perf_counter() - t0
    summary.update(
        out=str(out), strategy=strategy, seed=seed, shard=shard_s, target=target,
        exhausted=summary.get("kept", 0) < target,
        skipped=dict(tally.skipped.most_common()), filtered=dict(filtered.most_common()),
        span_drops=dict(tally.drops.most_common()),
        mask_counts={k: tally.mask_counts[k] for k in sorted(tally.mask_counts)},
        corpus=stats.summary(), candidates=len(cands), select_s=round(t_select, 3), total_s=round(total_s, 3),
        end_to_end_pps=round(summary.get("processed", 0) / total_s, 2) if total_s > 0 else None,
        executor=executor or "local",
    )
    return summary


def _check_options(strategy: str, n: int, shard: str | tuple[int, int] | None, executor: str | None, model: Any,
                   max_masks: int, mask_dist: Sequence[float] | None) -> tuple[int, int]:
    """The shard ``(i, k)`` of the job; a bad option fails here, before any work."""
    if strategy not in STRATEGIES:
        raise UnknownSpecError(f"unknown RAMP strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if n < 0:
        raise RampError(f"n must be >= 0, got {n}")
    try:
        i_shard, n_shards = parse_shard(shard) if isinstance(shard, (str, type(None))) else shard
    except ValueError as e:
        raise RampError(str(e)) from None
    if executor == "ray" and not (model is None or isinstance(model, str)):
        raise RampError("--executor ray builds the model in each worker: give --model as a spec string")
    MaskConfig(max_masks=max_masks, mask_dist=mask_dist)
    return i_shard, n_shards


def _open_writer(corpus: Any, out: str | os.PathLike, strategy: str, seed: int, shard: str,
                 resume: bool) -> ResumableJsonlWriter:
    """The output with the job's identity beside it: a rerun resumes only the same job, never an input."""
    is_path = isinstance(corpus, (str, os.PathLike))
    if is_path and not str(corpus).startswith("hf:") and not os.path.exists(corpus):
        raise RampError(f"corpus not found: {corpus} (give a JSONL/TSV file, a folder, or hf:NAME)")
    job = {"command": "ramp", "strategy": strategy, "seed": seed, "shard": shard,
           "input": input_fingerprint(corpus) if is_path else "iterable"}
    return ResumableJsonlWriter(out, resume=resume, job=job, inputs=[corpus] if is_path else [])


class _Tally:
    """The job's counts, kept by the runner's callbacks (``on_skip``, ``on_result``); the masked
    passages and mask counts already in the file (a resumed job) are read first."""

    def __init__(self, writer: ResumableJsonlWriter, strategy: str, seed: int):
        self.writer, self.strategy, self.seed = writer, strategy, seed
        self.seen_masked: set[str] = set()
        self.existing_counts: dict[str, int] = {}
        if writer.done and os.path.exists(writer.path):
            for rec in iter_jsonl(writer.path):
                if isinstance(rec.get("masked_passage"), str):
                    self.seen_masked.add(_masked_key(rec["masked_passage"]))
                if "id" in rec:
                    self.existing_counts[str(rec["id"])] = int(rec.get("mask_count") or 0)
        self.drops: Counter = Counter()
        self.skipped: Counter = Counter()
        self.mask_counts: Counter = Counter()
        self.c: Counter = Counter()  # kept, resumed, written, processed, unparseable

    def key(self, cand: Candidate) -> str:
        return example_id(cand.passage_id, self.strategy, self.seed)

    def on_skip(self, cand: Candidate) -> int:  # already in the file: counts towards the target
        self.c["kept"] += 1
        self.c["resumed"] += 1
        self.mask_counts[self.existing_counts.get(self.key(cand), 0)] += 1
        return 1

    def on_result(self, cand: Candidate, out: tuple[dict[str, Any] | str, dict | None]) -> int:
        res, st = out
        self.c["processed"] += 1
        if st:
            self.drops.update(st["drops"])
            self.c["unparseable"] += st["unparseable"]
        if isinstance(res, str):
            self.skipped[res] += 1
            return 0
        mk = _masked_key(res["masked_passage"])
        if mk in self.seen_masked:
            self.skipped["duplicate"] += 1
            return 0
        self.seen_masked.add(mk)
        if self.writer.write(res):
            self.c["written"] += 1
        self.c["kept"] += 1
        self.mask_counts[res["mask_count"]] += 1
        return 1


async def _extract(cands: list[Candidate], tally: _Tally, worker: dict[str, Any], target: int, chunk_size: int,
                   progress: bool, *, executor: str | None, ray_address: str | None,
                   workers: int | None) -> dict[str, Any]:
    """Run the workers over the candidates until ``target`` examples are kept; the first part of the
    summary (counts and generation timing)."""
    c = tally.c
    if executor in (None, "local"):
        ex = LocalExecutor(RampWorker(**worker), concurrency=1)
    else:
        ex = make_executor(executor, WorkerSpec("masksearch.data.ramp.generation:RampWorker", worker), concurrency=1,
                           address=ray_address, workers=workers)
    t1, c1 = time.perf_counter(), time.process_time()
    try:
        await run_jobs(cands, ex, key=tally.key, done=tally.writer.done,
                       on_result=tally.on_result, on_skip=tally.on_skip, ordered=True, fail_fast=True,
                       batch_size=lambda pending: min(chunk_size, target - c["kept"] - pending),
                       stop=lambda: c["kept"] >= target,
                       progress={"total": target, "desc": f"ramp {worker['strategy']}", "unit": "ex"} if progress else None,
                       postfix=lambda: {"skipped": sum(tally.skipped.values())})
    finally:
        ex.close()
    elapsed, cpu = time.perf_counter() - t1, time.process_time() - c1
    processed = c["processed"]
    return dict(kept=c["kept"], written=c["written"], resumed=c["resumed"], processed=processed,
                gen_s=round(elapsed, 3), pps=round(processed / elapsed, 2) if elapsed > 0 else None,
                gen_cpu_s=round(cpu, 3), cpu_pps=round(processed / cpu, 2) if cpu > 0 else None,
                unparseable_replies=c["unparseable"])


def format_summary(s: dict[str, Any]) -> str:
    """The end-of-job summary as a few human lines."""
    lines = [
        f"RAMP {s['strategy']} (seed {s['seed']}, shard {s['shard']}): kept {s['kept']}/{s['target']} "
        f"({s['written']} written now, {s['resumed']} already there) -> {s['out']}",
        "mask counts: " + (", ".join(f"{k}: {v}" for k, v in s["mask_counts"].items()) or "none"),
        "skipped: " + (", ".join(f"{k}: {v}" for k, v in s["skipped"].items()) or "none"),
        "passages filtered out: " + (", ".join(f"{k}: {v}" for k, v in s["filtered"].items()) or "none"),
        f"{s['processed']} passages processed in {s['gen_s']} s ({s['pps']} /s); selection {s['select_s']} s; "
        f"corpus: {s['corpus']}",
    ]
    if s.get("exhausted"):
        lines.append("warning: ran out of candidate passages before reaching n "
                     "(raise --n less, loosen the filters, or use a bigger corpus)")
    return "\n".join(lines)

