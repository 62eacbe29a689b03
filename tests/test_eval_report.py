"""The report's table from known result files: layout, values, Avg, CSV, chart, metric choice."""

import csv
import json

import pytest

from masksearch.eval.report import ReportError, make_report

BENCHES = ["hotpotqa", "fanoutqa", "musique", "2wiki", "bamboogle", "freshqa"]


def _run(tmp_path, name, label, recalls, ems=None):
    d = tmp_path / name
    d.mkdir()
    benches = {b: {"n": 50, "metrics": {"token_recall": r, "em": (ems or recalls)[i] / 2}}
               for i, (b, r) in enumerate(zip(BENCHES, recalls)) if r is not None}
    (d / "results.json").write_text(json.dumps({"label": label, "method": name, "benchmarks": benches}))
    return d


def test_table_layout_values_and_avg(tmp_path):
    a = _run(tmp_path, "rag", "RAG-PE", [0.30, 0.10, 0.20, 0.40, 0.05, 0.15])
    b = _run(tmp_path, "agent", "Agent-PE", [0.50, 0.20, 0.30, 0.60, 0.25, 0.35])
    rep = make_report([a, b], out=tmp_path / "rep")
    md = rep["markdown"].splitlines()
    assert md[0] == "| Method | HotpotQA | FanoutQA | MuSiQue | 2Wiki | Bamboogle | FreshQA | Avg |"
    assert md[2] == "| RAG-PE | 30.0 | 10.0 | 20.0 | 40.0 | 5.0 | 15.0 | 20.0 |"
    assert md[3] == "| Agent-PE | 50.0 | 20.0 | 30.0 | 60.0 | 25.0 | 35.0 | 36.7 |"
    assert "token recall (%)" in rep["markdown"]

    rows = list(csv.reader(open(tmp_path / "rep" / "table.csv")))
    assert rows[0] == ["method", "HotpotQA", "FanoutQA", "MuSiQue", "2Wiki", "Bamboogle", "FreshQA", "Avg"]
    assert rows[2][0] == "Agent-PE" and float(rows[2][-1]) == pytest.approx(36.6667, abs=0.01)
    png = (tmp_path / "rep" / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_selectable_metric_and_incomplete_rows(tmp_path):
    a = _run(tmp_path, "rag", "RAG-PE", [0.40, None, 0.20, None, None, None])
    rep = make_report([a], out=tmp_path / "rep", metric="em", chart=False)
    row = rep["markdown"].splitlines()[2]
    # em = recall / 2 here; missing benchmarks are dashes, the Avg is over present ones and starred
    assert row == "| RAG-PE | 20.0 | – | 10.0 | – | – | – | 15.0* |"
    assert "EM (%)" in rep["markdown"]
    assert not (tmp_path / "rep" / "chart.png").exists()


def test_errors_are_clear(tmp_path):
    with pytest.raises(ReportError, match="no results.json"):
        make_report([tmp_path / "missing"], out=tmp_path / "rep")
    a = _run(tmp_path, "rag", "RAG-PE", [0.4] * 6)
    with pytest.raises(ReportError, match="available: em, token_recall"):
        make_report([a], out=tmp_path / "rep", metric="judge")


def test_partial_run_without_results_json_is_summarised_from_predictions(tmp_path):
    run = tmp_path / "killed-run"
    (run / "hotpotqa").mkdir(parents=True)
    recs = [{"id": "a", "status": "answered", "metrics": {"token_recall": 1.0, "em": 1.0}},
            {"id": "b", "status": "answered", "metrics": {"token_recall": 0.5, "em": 0.0}}]
    (run / "hotpotqa" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = make_report([run], out=tmp_path / "rep", chart=False)
    assert rep["markdown"].splitlines()[2] == "| killed-run | 75.0 | – | – | – | – | – | 75.0* |"
