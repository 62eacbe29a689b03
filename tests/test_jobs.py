"""The one job runner (masksearch.utils.jobs) without Ray: skipping, bounds, order, failures, and the
one-line message when Ray is missing."""

from __future__ import annotations

import asyncio
import sys

import pytest

from masksearch.utils.jobs import ExecutorError, Failure, LocalExecutor, WorkerSpec, make_executor, run_jobs


class Slow:
    """``async (item) -> item * 10``; later items finish first; counts calls in flight."""

    def __init__(self, fail: set[int] = frozenset()):
        self.in_flight = self.max_in_flight = 0
        self.calls: list[int] = []
        self.fail = fail

    async def __call__(self, item: dict) -> int:
        self.calls.append(item["n"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02 * (10 - item["n"]) / 10)
            if item["n"] in self.fail:
                raise RuntimeError(f"bad item {item['n']}")
            return item["n"] * 10
        finally:
            self.in_flight -= 1


def items(n: int) -> list[dict]:
    return [{"id": f"q{i}", "n": i} for i in range(n)]


def test_skips_done_dedupes_bounds_and_counts_failures():
    work = Slow(fail={3})
    got: dict[str, int] = {}
    failed: list[str] = []
    src = items(8) + [{"id": "q1", "n": 1}]  # a repeated id runs once
    rep = asyncio.run(run_jobs(src, LocalExecutor(work, concurrency=3), done={"q0", "q5"},
                               on_result=lambda it, r: got.__setitem__(it["id"], r),
                               on_failure=lambda it, f: failed.append(f"{it['id']} {f.message}")))
    assert sorted(work.calls) == [1, 2, 3, 4, 6, 7]
    assert work.max_in_flight == 3
    assert got == {"q1": 10, "q2": 20, "q4": 40, "q6": 60, "q7": 70}
    assert failed == ["q3 RuntimeError: bad item 3"]
    assert (rep.requested, rep.resumed, rep.duplicates, rep.ran, rep.committed, rep.n_failed) == (8, 2, 1, 6, 5, 1)


def test_fail_fast_reraises_the_original_error():
    with pytest.raises(RuntimeError, match="bad item 2"):
        asyncio.run(run_jobs(items(5), LocalExecutor(Slow(fail={2}), 2), on_result=lambda it, r: None,
                             fail_fast=True))


class Doubler:
    """Batch work: ``run_batch(items) -> [n * 2]``; records each batch's size."""

    def __init__(self):
        self.batches: list[int] = []

    async def run_batch(self, batch: list[dict]) -> list[int]:
        self.batches.append(len(batch))
        await asyncio.sleep(0.01 * (5 - len(self.batches) % 5))  # later batches may finish first
        return [x["n"] * 2 for x in batch]


def test_ordered_commit_with_early_stop_and_pending_aware_batches():
    """Ordered commit sees items (done ones included) in input order, whatever finishes first; the
    job stops at the target and asks for no more than it still needs."""
    work = Doubler()
    seen: list[str] = []
    kept = [0]

    def on_result(it, r):
        seen.append(it["id"])
        if r % 4 == 0:  # even n only counts
            kept[0] += 1
            return 1
        return 0

    def on_skip(it):
        seen.append(it["id"] + "*")
        kept[0] += 1
        return 1

    target = 6
    rep = asyncio.run(run_jobs(items(40), LocalExecutor(work, concurrency=3), done={"q1", "q3"}, ordered=True,
                               on_result=on_result, on_skip=on_skip, stop=lambda: kept[0] >= target,
                               batch_size=lambda pending: min(4, target - kept[0] - pending)))
    assert kept[0] == target and rep.stopped
    # q0, q2, q4, q6 and the two done ones make six; nothing after q6 is committed
    assert seen == ["q0", "q1*", "q2", "q3*", "q4", "q5", "q6"]
    # the first batch is [q0, q2, q4, q5] (two done items pending: 6 - 2 = 4), then only [q6]
    assert work.batches == [4, 1] and rep.ran == 5


def test_batch_error_fails_each_item_of_the_batch():
    class Broken:
        async def run_batch(self, batch):
            raise ValueError("scorer crashed")

    rep = asyncio.run(run_jobs(items(5), LocalExecutor(Broken(), 1), batch_size=2, on_result=lambda it, r: None))
    assert rep.failed == {"ValueError: scorer crashed": 5} and rep.committed == 0


def test_worker_spec_builds_from_a_dotted_path():
    work = WorkerSpec("masksearch.retrieval.index:CorpusBlockWorker", {"stem": "c.jsonl"}).build()
    passages, st = work((1, [b'{"id": "a", "title": "T", "text": "one two"}\n', b"not json\n"]))
    assert [p.id for p in passages] == ["a"] and st == {"read": 1, "skipped": {"invalid_json": 1}}
    with pytest.raises(ExecutorError, match="package.module:function"):
        WorkerSpec("nocolon").build()
    assert Failure.of(KeyError("x")).message == "KeyError: 'x'"


def test_missing_ray_says_what_to_install(monkeypatch, tmp_path, capsys):
    """Without the extra, --executor ray fails with one line naming the install command."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ExecutorError, match=r"pip install 'masksearch\[ray\]'"):
        make_executor("ray", WorkerSpec("masksearch.eval.runner:build_eval_worker"))
    with pytest.raises(ExecutorError, match="unknown executor 'spark'"):
        make_executor("spark", lambda x: x)

    from masksearch.cli import main

    ramp = tmp_path / "r.jsonl"
    ramp.write_text('{"id": "r1", "question": "q [mask]", "answers": ["a"], "mask_count": 1}\n')
    rc = main(["cot", "--input", str(ramp), "--out", str(tmp_path / "o"), "--teacher", "provenance",
               "--retriever", "bm25:/nonexistent", "--executor", "ray", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs Ray" in err[0] and "pip install" in err[0]
