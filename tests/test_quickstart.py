"""The end-to-end quickstart at toy sizes: every stage runs, the report is written, a rerun resumes."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quickstart_end_to_end_and_resume(tmp_path, corpus_path, capsys):
    from masksearch.cli import main

    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--corpus", str(corpus_path), "--ramp-train", "8",
            "--ramp-heldout", "2", "--llm-teacher-examples", "1", "--sft-steps", "1", "--sft-batch-size", "1", "--downstream-steps", "1",
            "--eval-limit", "1", "--benchmarks", "bamboogle", "--max-new-tokens", "16", "--max-turns", "1",
            "--concurrency", "4"]
    assert main(argv) == 0
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == {"index", "ramp", "teacher", "sft", "downstream", "eval", "report"}
    assert stages["teacher"]["provenance"]["trajectories"] == 8
    assert stages["sft"]["steps"] == 1 and (out / "sft" / "config.json").exists()
    report = (out / "REPORT.md").read_text()
    assert "| provenance |" in report and "Bamboogle" in report and "MaskSearch student (SFT" in report
    assert len(stages["eval"]["runs"]) == 4
    # stage 2 started from stage 1's checkpoint; in-domain is the held-out split, never trained on
    assert stages["downstream"]["init"] == str(out / "sft") and stages["downstream"]["steps"] == 1
    held = {json.loads(x)["id"] for x in (out / "downstream" / "split" / "hotpotqa.heldout.jsonl").read_text().splitlines()}
    trained = {json.loads(x)["id"] for x in (out / "downstream" / "teacher" / "sft.jsonl").read_text().splitlines()}
    assert len(held) == 60 and trained and not held & trained
    assert "| Method | held-out RAMP | HotpotQA (in-domain, held out) |" in report
    capsys.readouterr()
    # a rerun resumes: every finished stage is skipped
    assert main(argv) == 0
    log = capsys.readouterr().out
    for name in ("index", "ramp", "teacher", "sft", "downstream", "eval"):
        assert f"{name}: done already" in log


def test_quickstart_without_corpus_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from masksearch.cli import main

    monkeypatch.setenv("MASKSEARCH_SHARED_DATA", str(tmp_path / "nowhere"))
    assert main(["quickstart", "--out", str(tmp_path / "qs")]) == 2
    err = capsys.readouterr().err
    assert "--corpus PATH" in err and "no corpus" in err
