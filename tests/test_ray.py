"""The Ray executor on a local cluster (``ray.init(num_cpus=2)``, once for the module): the Ray run
and the local run of ``cot --teacher provenance``, ``eval --method rag-pe``, ``ramp`` and ``index``
write the same records; a run whose driver dies resumes without duplicates; a killed worker
loses nothing."""

from __future__ import annotations

import json
import os
import signal

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

TIMINGS = {"seconds", "elapsed_s", "built_at", "build_s"}


def _strip(o):
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k not in TIMINGS}
    if isinstance(o, list):
        return [_strip(x) for x in o]
    return o


def records(path) -> dict[str, dict]:
    """id -> record without timings; fails on a duplicate id."""
    out: dict[str, dict] = {}
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        assert r["id"] not in out, f"duplicate id {r['id']} in {path}"
        out[r["id"]] = _strip(r)
    return out


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for attempt in range(3):  # on a crowded machine the raylet can miss Ray's fixed 30 s start window
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "HF_HUB_OFFLINE": "1",
                                               "TRANSFORMERS_OFFLINE": "1"}})
            break
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ramp_file(tmp_path_factory, corpus_path):
    from masksearch.data.ramp import generate_ramp

    out = tmp_path_factory.mktemp("ramp") / "ramp.jsonl"
    generate_ramp(str(corpus_path), out, n=16, strategy="rules", max_masks=2, seed=7, progress=False)
    return out


def test_cot_provenance_ray_equals_local(cluster, ramp_file, bm25_dir, tmp_path):
    from masksearch.training.export import run_cot

    spec = f"bm25:{bm25_dir}"
    a = run_cot(ramp_file, tmp_path / "local", "provenance", spec, progress=False)
    b = run_cot(ramp_file, tmp_path / "ray", "provenance", spec, progress=False, executor="ray", workers=2)
    assert b["executor"] == "ray" and b["trajectories"] == a["trajectories"] == 16
    for f in ("trajectories.jsonl", "sft.jsonl"):
        ra, rb = records(tmp_path / "local" / f), records(tmp_path / "ray" / f)
        assert ra.keys() == rb.keys() and ra == rb
    assert a["accepted"] == b["accepted"] and a["rejected_by_reason"] == b["rejected_by_reason"]


def test_cot_ray_driver_killed_then_resumed_no_duplicates(cluster, ramp_file, bm25_dir, tmp_path, monkeypatch):
    """The driver dies after 5 trajectories (between writing a trajectory and its SFT row); the
    rerun skips what is written, writes the lost row, and finishes with every id exactly once."""
    import masksearch.training.export as E

    real = E.trajectory_to_sft_row
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += "search_queries" in kw  # the driver's SFT write (the accept filter calls it too)
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as a kill would, mid-way through the driver's writes
        return real(*a, **kw)

    monkeypatch.setattr(E, "trajectory_to_sft_row", dying)
    out = tmp_path / "out"
    spec = f"bm25:{bm25_dir}"
    with pytest.raises(KeyboardInterrupt):
        E.run_cot(ramp_file, out, "provenance", spec, progress=False, accept="none", executor="ray", workers=2,
                  concurrency=1)
    first = records(out / "trajectories.jsonl")
    assert len(first) == 5 and len(records(out / "sft.jsonl")) == 4
    monkeypatch.setattr(E, "trajectory_to_sft_row", real)
    s = E.run_cot(ramp_file, out, "provenance", spec, progress=False, accept="none", executor="ray", workers=2)
    assert s["resumed"] == len(first) and s["new_this_run"] == 16 - len(first)
    trajs, sft = records(out / "trajectories.jsonl"), records(out / "sft.jsonl")
    assert len(trajs) == 16 and trajs.keys() == sft.keys()


def test_killed_worker_loses_nothing(cluster, ramp_file, bm25_dir, tmp_path):
    """SIGKILL one of two workers after the first result: Ray restarts it and retries its batch;
    every question is written once, none failed."""
    from masksearch.data.qa import load_qa
    from masksearch.utils.jobs import RayExecutor, WorkerSpec, run_jobs_sync
    from masksearch.utils.jsonl import ResumableJsonlWriter

    examples = load_qa(ramp_file)
    ex = RayExecutor(WorkerSpec("masksearch.training.export:build_cot_method",
                                {"teacher": "provenance", "retriever": f"bm25:{bm25_dir}"}), workers=2)
    pids = ex.pids()
    w = ResumableJsonlWriter(tmp_path / "t.jsonl")

    def on_result(_ex, traj):
        if not w.done:
            os.kill(pids[1], signal.SIGKILL)
        w.write(traj.to_dict())

    try:
        rep = run_jobs_sync(examples, ex, done=w.done, on_result=on_result)
    finally:
        ex.close()
        w.close()
    assert rep.n_failed == 0, rep.failed
    assert sorted(records(tmp_path / "t.jsonl")) == sorted(e.id for e in examples)


def test_eval_rag_pe_ray_equals_local(cluster, bench_path, bm25_dir, tmp_path):
    """Each worker builds the embedded model and the BM25 retriever once from their specs; one
    question at a time per model, so both runs decode the same unbatched prompts."""
    from masksearch.eval.runner import run_eval

    kw = dict(model="smollm2", retriever=f"bm25:{bm25_dir}", data=[str(bench_path("hotpotqa"))], limit=4,
              concurrency=1, progress=False, max_new_tokens=16)
    a = run_eval("rag-pe", out_dir=tmp_path / "local", **kw)
    b = run_eval("rag-pe", out_dir=tmp_path / "ray", executor="ray", workers=2, **kw)
    bench = next(iter(a["benchmarks"]))
    ra = records(tmp_path / "local" / bench / "predictions.jsonl")
    rb = records(tmp_path / "ray" / bench / "predictions.jsonl")
    assert len(ra) == 4 and ra == rb
    assert a["benchmarks"][bench]["metrics"] == b["benchmarks"][bench]["metrics"]
    assert b["executor"] == "ray" and b["benchmarks"][bench]["failed"] == 0


def test_ramp_and_index_ray_equal_local(cluster, corpus_path, tmp_path):
    from masksearch.data.ramp import generate_ramp
    from masksearch.retrieval import build_index

    a = generate_ramp(str(corpus_path), tmp_path / "a.jsonl", n=300, seed=5, progress=False)
    b = generate_ramp(str(corpus_path), tmp_path / "b.jsonl", n=300, seed=5, progress=False, executor="ray",
                      workers=2)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert {k: a[k] for k in ("kept", "skipped", "span_drops", "mask_counts")} == \
           {k: b[k] for k in ("kept", "skipped", "span_drops", "mask_counts")}

    la = build_index(str(corpus_path), out=tmp_path / "ia", progress=False)
    lb = build_index(str(corpus_path), out=tmp_path / "ib", progress=False, executor="ray", workers=2)
    assert la["count"] == lb["count"] and la["read_stats"] == lb["read_stats"]
    assert (tmp_path / "ia" / "store.jsonl").read_bytes() == (tmp_path / "ib" / "store.jsonl").read_bytes()
