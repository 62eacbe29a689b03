"""One resumable job runner, with a local or a Ray executor.

Every long job of the project (``ramp``, ``cot``, ``eval``, ``index``) has the same loop: skip the
ids already in the output, run the rest with a bounded number in flight, show one progress bar,
append each result to a resumable JSONL file, count what failed.  :func:`run_jobs` is that loop,
written once.

* **Work** is what turns an input item into a result: an ``async (item) -> result`` callable (a
  *method* such as ``async (example) -> Trajectory``), or an object with ``async run_batch(items) ->
  list`` for work that batches (RAMP's span scorer).  A :class:`WorkerSpec` names a factory by a
  dotted path plus plain keyword arguments (spec strings, numbers), so a remote worker can build
  the same work once, from strings.
* **Executors** run batches of items.  :class:`LocalExecutor` runs them in this process under an
  ``asyncio`` semaphore.  :class:`RayExecutor` spreads them over Ray actors, each of which builds
  its work (model, retriever) once from the :class:`WorkerSpec`.  The workers *return* results; the
  driver is the only writer, so a Ray run writes the same files as a local one and resumes the same
  way after a kill of the driver or of a worker.
* **The driver side** (:func:`run_jobs`) skips finished ids, drops duplicate ids, commits results
  through the caller's ``on_result`` (which writes through
  :class:`~masksearch.utils.jsonl.ResumableJsonlWriter`), counts failures by cause and keeps one
  progress bar.  ``ordered=True`` commits in input order and can stop early (``stop``): a job that
  wants the first ``n`` good results (RAMP) gets the same file whatever the executor.

Ray is an optional extra (``pip install 'masksearch[ray]'``); without it ``executor="ray"`` fails
with one line saying what to install.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Container, Iterable, Sequence

from masksearch.errors import MaskSearchError

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'masksearch[ray]'  (or: pip install ray)"


class ExecutorError(MaskSearchError):
    """An executor cannot be set up as asked (missing extra, unreachable cluster, bad option)."""


# ----------------------------------------------------------------------------- work
@dataclass
class Failure:
    """One item whose work raised: ``message`` is ``"Type: text"`` (secrets scrubbed, 200 characters)."""

    message: str
    error: BaseException | None = None

    @classmethod
    def of(cls, e: BaseException) -> "Failure":
        from masksearch.utils.scrub import scrub  # error text may echo a key: never kept or shown

        return cls(scrub(f"{type(e).__name__}: {e}")[:200], e)


@dataclass
class WorkerSpec:
    """How a worker builds its work: ``factory`` (``"package.module:function"``) called once with
    ``kwargs`` (plain, picklable values: spec strings and numbers)."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        mod, _, attr = self.factory.partition(":")
        if not mod or not attr:
            raise ExecutorError(f"bad worker factory {self.factory!r}: expected 'package.module:function'")
        fn = getattr(importlib.import_module(mod), attr)
        return fn(**self.kwargs)


def batch_function(work: Any) -> Callable[[list[Any]], Awaitable[list[Any]]]:
    """``work`` as ``async (items) -> list[result | Failure]``, one entry per item, in order.

    An object with ``run_batch`` is called with the whole batch (an exception fails every item of
    it); an ``async (item) -> result`` callable is called per item, concurrently, and an exception
    fails only its item."""
    if isinstance(work, WorkerSpec):
        work = work.build()
    if hasattr(work, "run_batch"):
        async def run_batch(items: list[Any]) -> list[Any]:
            try:
                out = list(await work.run_batch(items))
            except Exception as e:  # noqa: BLE001 - reported per item, the caller decides
                return [Failure.of(e)] * len(items)
            if len(out) != len(items):
                raise ExecutorError(f"run_batch returned {len(out)} results for {len(items)} items")
            return out

        return run_batch
    if not callable(work):
        raise ExecutorError(f"work must be a callable or have run_batch, got {type(work).__name__}")

    async def one(item: Any) -> Any:
        try:
            res = work(item)
            return await res if inspect.isawaitable(res) else res
        except Exception as e:  # noqa: BLE001
            return Failure.of(e)

    async def per_item(items: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(one(x) for x in items)))

    return per_item


# ----------------------------------------------------------------------------- executors
class LocalExecutor:
    """Batches run in this process, at most ``concurrency`` at once."""

    name = "local"

    def __init__(self, work: Any, concurrency: int = 1):
        self._fn = batch_function(work)
        self.slots = max(1, int(concurrency))
        self._sem: asyncio.Semaphore | None = None

    async def submit(self, items: list[Any]) -> list[Any]:
        if self._sem is None:  # created on the running loop
            self._sem = asyncio.Semaphore(self.slots)
        async with self._sem:
            return await self._fn(items)

    def close(self) -> None:
        pass


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`ExecutorError` saying what to install."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


class _RayWorker:
    """A Ray actor: builds its work once from a :class:`WorkerSpec`, then runs batches."""

    def __init__(self, spec: WorkerSpec):
        self._fn = batch_function(spec.build())

    async def run(self, items: list[Any]) -> list[Any]:
        out = await self._fn(items)
        # exceptions travel as text (an exception object need not pickle), re-raised by the driver
        return [Failure(x.message, _picklable(x.error)) if isinstance(x, Failure) else x for x in out]

    def pid(self) -> int:
        return os.getpid()


def _picklable(e: BaseException | None) -> BaseException | None:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return None


class RayExecutor:
    """Batches spread over ``workers`` Ray actors (``concurrency`` batches in flight on each).

    ``address``: ``None`` starts (or joins) a local Ray; ``"auto"`` or ``"ray://HOST:PORT"`` joins a
    cluster.  Each actor builds the work once from ``spec`` (so a model or an index is loaded once
    per worker; a remote model given as an ``http://`` spec is shared over HTTP).  A worker that
    dies is restarted and its batch retried; a batch that still fails is reported as failures of its
    items (not written, so a rerun retries them)."""

    name = "ray"

    def __init__(self, spec: WorkerSpec, *, workers: int | None = None, concurrency: int = 1,
                 address: str | None = None, num_cpus_per_worker: float = 1.0, init_options: dict | None = None):
        if not isinstance(spec, WorkerSpec):
            raise ExecutorError("the Ray executor needs a WorkerSpec (a factory path and plain options), "
                                "not live objects: give the model and retriever as spec strings")
        ray = require_ray()
        self._ray = ray
        if not ray.is_initialized():
            opts = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                    **(init_options or {})}
            if address:
                opts["address"] = address
            # workers import this checkout, as the driver does
            env = {k: os.environ[k] for k in ("PYTHONPATH", "MASKSEARCH_HOME", "MASKSEARCH_SHARED_DATA",
                                              "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
            if env:
                opts.setdefault("runtime_env", {"env_vars": env})
            try:
                ray.init(**opts)
            except Exception as e:  # noqa: BLE001 - one line for the user
                raise ExecutorError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                                    f"{type(e).__name__}: {str(e)[:200]}") from None
        if workers is None:
            workers = max(1, int(ray.available_resources().get("CPU", 1) // max(num_cpus_per_worker, 1e-3)))
        self.workers = max(1, int(workers))
        self.per_worker = max(1, int(concurrency))
        self.slots = self.workers * self.per_worker
        actor = ray.remote(_RayWorker).options(num_cpus=num_cpus_per_worker, max_concurrency=self.per_worker,
                                               max_restarts=2, max_task_retries=2)
        self.actors = [actor.remote(spec) for _ in range(self.workers)]
        self._load = [0] * self.workers
        self._sem: asyncio.Semaphore | None = None

    async def submit(self, items: list[Any]) -> list[Any]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        async with self._sem:
            i = min(range(self.workers), key=self._load.__getitem__)  # the least busy actor
            self._load[i] += 1
            try:
                return list(await self.actors[i].run.remote(items))
            except Exception as e:  # noqa: BLE001 - a lost worker fails its batch, counted
                return [Failure.of(e)] * len(items)
            finally:
                self._load[i] -= 1

    def pids(self) -> list[int]:
        return list(self._ray.get([a.pid.remote() for a in self.actors]))

    def close(self) -> None:
        for a in self.actors:
            try:
                self._ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []


def make_executor(executor: Any, work: Any, *, concurrency: int = 1, address: str | None = None,
                  workers: int | None = None) -> Any:
    """``"local"`` (default) or ``"ray"`` -> an executor for ``work`` (an executor passes through).

    ``concurrency``: batches in flight locally, or on each Ray worker.  Locally ``work`` may be a
    live object or a :class:`WorkerSpec`; Ray needs a :class:`WorkerSpec`."""
    if executor is None or executor == "local":
        return LocalExecutor(work, concurrency)
    if executor == "ray":
        return RayExecutor(work, workers=workers, concurrency=concurrency, address=address)
    if hasattr(executor, "submit"):
        return executor
    raise ExecutorError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")


def executor_options(executor: str | None = None, ray_address: str | None = None,
                     workers: int | None = None) -> dict[str, Any]:
    """The executor keywords of the job functions (``generate_ramp``, ``run_cot``, ``run_eval``,
    ``build_index``) from flags or a recipe: ``{}`` for a local run."""
    if not executor or executor == "local":
        return {}
    return {"executor": executor, "ray_address": ray_address or None, "workers": workers}


# ----------------------------------------------------------------------------- the runner
@dataclass
class JobReport:
    """What one :func:`run_jobs` call did."""

    requested: int = 0          # distinct items seen
    resumed: int = 0            # already done (skipped)
    duplicates: int = 0         # repeated ids, run once
    ran: int = 0                # items sent to the executor
    committed: int = 0          # results handed to on_result
    failed: Counter = field(default_factory=Counter)   # failures by "Type: message"
    stopped: bool = False       # ``stop()`` ended the job early
    wall_s: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())


_UNSUBMITTED = object()


def _default_key(item: Any) -> str:
    return str(item["id"] if isinstance(item, dict) else item.id)


async def run_jobs(items: Iterable[Any], executor: Any, *, on_result: Callable[[Any, Any], int | None],
                   key: Callable[[Any], str] = _default_key, done: Container[str] = (),
                   on_skip: Callable[[Any], int | None] | None = None,
                   on_failure: Callable[[Any, Failure], None] | None = None,
                   batch_size: int | Callable[[int], int] = 1, ordered: bool = False,
                   stop: Callable[[], bool] | None = None, fail_fast: bool = False,
                   progress: dict[str, Any] | None = None, postfix: Callable[[], dict] | None = None) -> JobReport:
    """Run every item whose ``key`` is not in ``done`` through ``executor``; hand each result to
    ``on_result(item, result)`` in the driver.

    * ``on_result`` writes the result (through a ``ResumableJsonlWriter``) and returns the progress
      units it is worth (``None`` = 1; RAMP counts 0 for a skipped passage).  ``on_skip(item)`` is
      called for items already done (``None`` = 1 unit).
    * A failed item is counted in ``report.failed`` (``on_failure`` is told; nothing is written, so
      a rerun retries it), or re-raised when ``fail_fast``.
    * ``batch_size``: items per executor call, or ``f(pending) -> size`` where ``pending`` counts
      the items scanned but not yet committed, before this batch (RAMP asks for no more than it
      still needs, so nothing is computed in vain on one worker).
    * ``ordered=True``: results are committed in input order, and ``stop()`` (checked after each
      commit) ends the job; work in flight is then discarded.  Otherwise results are committed as
      they finish (items are still *submitted* in input order).
    * ``progress``: ``tqdm`` options (``desc``, ``unit``, ``total``, ``position``) for one bar, or
      ``None`` for no bar.  ``postfix()`` is shown beside it.
    """
    rep = JobReport()
    t0 = time.perf_counter()
    seen: set[str] = set()

    def triage(it: Any) -> str:
        """``dup`` (an id seen before), ``done`` (already written) or ``todo``; counted."""
        k = key(it)
        if k in seen:
            rep.duplicates += 1
            return "dup"
        seen.add(k)
        rep.requested += 1
        if k in done:
            rep.resumed += 1
            return "done"
        return "todo"

    src = iter(items)
    bar = None
    # unordered: resolve the skips first, so the bar starts at what is done
    if not ordered:
        todo = []
        initial = 0
        for it in src:
            state = triage(it)
            if state == "done":
                u = on_skip(it) if on_skip else None
                initial += 1 if u is None else u
            elif state == "todo":
                todo.append(it)
        src = iter(todo)
        if progress is not None:
            bar = _make_bar({"total": rep.requested, **progress}, initial)
    elif progress is not None:
        bar = _make_bar(progress, 0)

    # entries not yet committed, in input order: [item, task (None: already done), index in batch]
    entries: deque = deque()
    in_flight: set[asyncio.Future] = set()
    exhausted = False

    def advance(units: int | None) -> None:
        if bar is not None:
            bar.update(1 if units is None else units)
            if postfix is not None:
                bar.set_postfix(postfix(), refresh=False)

    def commit(item: Any, res: Any) -> None:
        if isinstance(res, Failure):
            if fail_fast:
                raise res.error if res.error is not None else MaskSearchError(res.message)
            rep.failed[res.message] += 1
            if on_failure is not None:
                on_failure(item, res)
            advance(0 if ordered else 1)
            return
        rep.committed += 1
        advance(on_result(item, res))

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(in_flight) < executor.slots:
            batch: list[list[Any]] = []  # entries of this batch, already in `entries` (input order)
            while True:
                pending = len(entries) - len(batch)
                size = batch_size(pending) if callable(batch_size) else batch_size
                if len(batch) >= size:
                    break
                try:
                    it = next(src)
                except StopIteration:
                    exhausted = True
                    break
                if ordered:
                    state = triage(it)
                    if state == "dup":
                        continue
                    if state == "done":
                        entries.append([it, None, 0])
                        continue
                e = [it, _UNSUBMITTED, len(batch)]
                entries.append(e)
                batch.append(e)
            if not batch:
                return
            rep.ran += len(batch)
            task = asyncio.ensure_future(executor.submit([e[0] for e in batch]))
            in_flight.add(task)
            for e in batch:
                e[1] = task

    def drain() -> None:
        """Commit what is ready: the resolved head (ordered) or every finished item (unordered)."""
        if ordered:
            while entries and not rep.stopped:
                it, task, j = entries[0]
                if task is not None and not task.done():
                    return
                entries.popleft()
                if task is None:
                    advance(on_skip(it) if on_skip else None)
                else:
                    commit(it, task.result()[j])
                if stop is not None and stop():
                    rep.stopped = True
            return
        keep: deque = deque()
        for e in entries:
            if e[1].done():
                commit(e[0], e[1].result()[e[2]])
            else:
                keep.append(e)
        entries.clear()
        entries.extend(keep)

    try:
        while True:
            drain()
            if rep.stopped:
                break
            fill()
            drain()
            if rep.stopped or (not entries and (exhausted or not in_flight)):
                break
            if in_flight:
                finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight.difference_update(finished)
    finally:
        for t in in_flight:
            t.cancel()
        if bar is not None:
            bar.close()
        rep.wall_s = round(time.perf_counter() - t0, 3)
    return rep


def _make_bar(options: dict[str, Any], initial: int) -> Any:
    from tqdm.auto import tqdm

    opts = {"dynamic_ncols": True, **options}
    return tqdm(initial=initial, **opts)


def run_jobs_sync(items: Sequence[Any], executor: Any, **kw: Any) -> JobReport:
    """:func:`run_jobs` from sync code (Jupyter too)."""
    from masksearch.utils.aio import run_sync

    return run_sync(run_jobs(items, executor, **kw))


__all__ = ["run_jobs", "run_jobs_sync", "JobReport", "Failure", "WorkerSpec", "LocalExecutor", "RayExecutor",
           "make_executor", "executor_options", "require_ray", "batch_function", "ExecutorError", "EXECUTORS", "RAY_INSTALL_HINT"]
