"""The paper's results table from run folders: methods as rows, the six benchmarks plus Avg.

``make_report(["runs/rag-pe", "runs/agent-pe"], out="report", metric="token_recall")`` reads each
run's ``results.json`` (written by :func:`masksearch.eval.runner.run_eval`) and writes
``table.md``, ``table.csv`` and ``chart.png`` (grouped bars) under ``out``; values are percentages.
Avg is the mean over the benchmarks a row has (a row missing some shows ``–`` there, and its Avg
is marked with ``*``, so it is never silently compared with complete rows).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

from masksearch.data.benchmarks import DISPLAY_NAMES, PAPER_BENCHMARKS
from masksearch.errors import MaskSearchError
from masksearch.eval.metrics import HEADLINE_METRIC

METRIC_NAMES = {"token_recall": "token recall", "em": "EM", "f1": "F1", "cover_em": "cover-EM",
                "precision": "precision", "judge": "LLM judge"}


class ReportError(MaskSearchError, ValueError):
    pass


def load_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``results.json``; for a run still in progress (or killed) without one, the means
    are computed from its ``<benchmark>/predictions.jsonl`` files (marked ``partial``)."""
    p = Path(run_dir)
    f = p / "results.json" if p.is_dir() else p
    if f.exists():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{f}: not valid JSON ({e})") from e
    preds = sorted(p.glob("*/predictions.jsonl")) if p.is_dir() else []
    if not preds:
        raise ReportError(f"{run_dir}: no results.json; run `masksearch eval ... --out {run_dir}` first")
    from masksearch.eval.runner import summarize_predictions

    benches = {q.parent.name: summarize_predictions(q) for q in preds}
    return {"label": p.name, "method": p.name, "partial": True,
            "benchmarks": {b: v for b, v in benches.items() if v["n"]}}


def results_table(results: Sequence[dict[str, Any]], metric: str = HEADLINE_METRIC,
                  benchmarks: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: columns are benchmark short names + ``avg``; each row has ``method``
    (its label), one value per column (a percentage or ``None``) and ``complete``."""
    if benchmarks is None:
        present = {b for r in results for b in r.get("benchmarks", {})}
        benchmarks = [b for b in PAPER_BENCHMARKS] + sorted(present - set(PAPER_BENCHMARKS))
    rows = []
    for res in results:
        row: dict[str, Any] = {"method": res.get("label") or res.get("method", "?")}
        vals = []
        for b in benchmarks:
            m = ((res.get("benchmarks") or {}).get(b) or {}).get("metrics") or {}
            v = m.get(metric)
            row[b] = None if v is None else 100.0 * float(v)
            if v is not None:
                vals.append(row[b])
        row["avg"] = sum(vals) / len(vals) if vals else None
        row["complete"] = len(vals) == len(benchmarks)
        row["n"] = {b: ((res.get("benchmarks") or {}).get(b) or {}).get("n") for b in benchmarks}
        rows.append(row)
    return list(benchmarks) + ["avg"], rows


def _header(col: str) -> str:
    return "Avg" if col == "avg" else DISPLAY_NAMES.get(col, col)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def to_markdown(columns: Sequence[str], rows: Sequence[dict[str, Any]], metric: str = HEADLINE_METRIC) -> str:
    lines = ["| Method | " + " | ".join(_header(c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for r in rows:
        cells = [_fmt(r.get(c)) + ("*" if c == "avg" and not r["complete"] and r.get(c) is not None else "")
                 for c in columns]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    note = f"\n{METRIC_NAMES.get(metric, metric)} (%)."
    if any(not r["complete"] for r in rows):
        note += " `*`: average over the benchmarks that row has."
    return "\n".join(lines) + "\n" + note + "\n"


def to_csv(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method"] + [_header(c) for c in columns])
        for r in rows:
            w.writerow([r["method"]] + ["" if r.get(c) is None else f"{r[c]:.2f}" for c in columns])


def bar_chart(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[dict[str, Any]],
              metric: str = HEADLINE_METRIC, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(rows))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) + 1), 4.3), dpi=120)
    for i, r in enumerate(rows):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(columns))]
        ys = [r.get(c) or 0.0 for c in columns]
        ax.bar(xs, ys, width=width * 0.95, label=r["method"])
        for x, y, c in zip(xs, ys, columns):
            if r.get(c) is not None:
                ax.text(x, y + 0.5, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([_header(c) for c in columns])
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (%)")
    top = max([r.get(c) or 0.0 for r in rows for c in columns] + [1.0])
    ax.set_ylim(0, min(100.0, top * 1.2 + 2))
    ax.set_title(title or f"MaskSearch evaluation: {METRIC_NAMES.get(metric, metric)}")
    # below the axes, so no bar or value label is ever hidden behind it
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, max(1, len(rows))), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def make_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike = "report",
                metric: str = HEADLINE_METRIC, benchmarks: Sequence[str] | None = None,
                chart: bool = True) -> dict[str, Any]:
    """Merge runs into ``table.md``, ``table.csv`` and ``chart.png`` under ``out``; returns
    ``{"markdown", "columns", "rows", "files"}``."""
    if not run_dirs:
        raise ReportError("no run folders given")
    results = [load_results(d) for d in run_dirs]
    if not any(metric in (b.get("metrics") or {}) for r in results for b in (r.get("benchmarks") or {}).values()):
        known = sorted({m for r in results for b in (r.get("benchmarks") or {}).values() for m in (b.get("metrics") or {})})
        raise ReportError(f"metric {metric!r} is in none of the runs; available: {', '.join(known) or 'none'}")
    columns, rows = results_table(results, metric, benchmarks)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    md = to_markdown(columns, rows, metric)
    (outp / "table.md").write_text(md, encoding="utf-8")
    to_csv(outp / "table.csv", columns, rows)
    files = [str(outp / "table.md"), str(outp / "table.csv")]
    if chart:
        bar_chart(outp / "chart.png", columns, rows, metric)
        files.append(str(outp / "chart.png"))
    return {"markdown": md, "columns": columns, "rows": rows, "files": files}
