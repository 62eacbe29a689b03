"""`bench_teacher_llm.py --report-only`: the figures of a stopped run, read from its folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from test_export import RAMP, _write
from test_teacher_fakes import MemoryRetriever

from masksearch.training.export import run_cot

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_teacher_llm.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_teacher_llm", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _keep(src: Path, dst: Path, ids: list[str]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    rows = [line for line in src.read_text().splitlines() if json.loads(line)["id"] in ids]
    dst.write_text("\n".join(rows) + "\n")


def test_report_only_reads_a_stopped_run_with_its_finished_prefix(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    _write(out / "ramp.jsonl", RAMP)  # r1, r2, r3 (its span is nowhere: rejected), r4
    run_cot(out / "ramp.jsonl", out / "provenance", "provenance", MemoryRetriever(), progress=False)
    prov = out / "provenance" / "trajectories.jsonl"
    # a "1.5b" pass stopped with r1, r2 and r4 done (r3 still running), and an earlier run of r1, r3, r4
    _keep(prov, out / "1.5b" / "trajectories.jsonl", ["r4", "r1", "r2"])
    _keep(prov, tmp_path / "old" / "1.5b" / "trajectories.jsonl", ["r1", "r3", "r4"])
    _bench().report_only(out, ["1.5b"], n=4, baseline=tmp_path / "old")
    lines = capsys.readouterr().out.strip().splitlines()
    final = json.loads(lines[-1])
    assert final["acceptance_rate_provenance"] == 0.75
    assert final["trajectories_1p5b"] == 3 and final["accepted_1p5b"] == 3
    assert final["complete_1p5b"] is False
    assert final["prefix_1p5b"] == 2 and final["prefix_acceptance_rate_1p5b"] == 1.0  # r1, r2: r3 not done
    assert final["paired_1p5b"] == {"n": 2, "baseline": 2, "now": 2, "gained": 0, "lost": 0}  # r1, r4
    assert any("2 questions both finished" in x for x in lines)
