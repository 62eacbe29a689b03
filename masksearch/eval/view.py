"""A per-question view of evaluated trajectories: question, gold, prediction, metrics, every
search step with its queries and retrieved documents, verdicts.

* :func:`trajectory_html(record_or_traj)` – one question as an HTML fragment (in a notebook:
  ``IPython.display.HTML(trajectory_html(rec))``);
* :func:`write_view(predictions.jsonl, out.html, ids=None, limit=None)` – a self-contained page with
  one collapsible section per question.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any, Iterable

from masksearch.trajectory import Trajectory
from masksearch.utils.jsonl import ReadStats, iter_jsonl

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;color:#222}
details{border:1px solid #ccc;border-radius:6px;margin:.5em 0;padding:.3em .8em}
summary{cursor:pointer} .ok{color:#17803d} .bad{color:#b3261e} .muted{color:#777}
.step{border-left:3px solid #6b8cce;padding-left:.7em;margin:.6em 0}
.doc{background:#f6f7f9;padding:.3em .5em;margin:.3em 0;font-size:.9em;border-radius:4px}
.q{background:#e8eefc;padding:0 .3em;border-radius:3px} pre{white-space:pre-wrap;font-size:.85em}
table.m td{padding:0 .6em}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def trajectory_html(item: dict[str, Any] | Trajectory, max_doc_chars: int = 600) -> str:
    """One question as HTML: accepts a predictions.jsonl record or a :class:`Trajectory`."""
    if isinstance(item, Trajectory):
        rec: dict[str, Any] = {"id": item.id, "question": item.question, "golden_answers": item.golden_answers,
                               "prediction": item.answer, "status": item.status,
                               "metrics": item.verdicts.get("metrics", {})}
        traj = item
    else:
        rec = item
        traj = Trajectory.from_dict(rec["trajectory"]) if rec.get("trajectory") else Trajectory(
            id=str(rec.get("id")), question=rec.get("question", ""))
    metrics = rec.get("metrics") or {}
    good = (metrics.get("token_recall") or 0) >= 0.999 or (metrics.get("cover_em") or 0) >= 1
    parts = [f"<details><summary><b>{_e(rec.get('id'))}</b> "
             f"<span class='{'ok' if good else 'bad'}'>recall {100 * (metrics.get('token_recall') or 0):.0f}%</span> "
             f"— {_e(rec.get('question'))}</summary>"]
    parts.append(f"<p><b>Gold</b> ({_e(rec.get('answer_match', traj.metadata.get('answer_match', 'any')))}): "
                 + " · ".join(_e(g) for g in rec.get("golden_answers") or traj.golden_answers) + "</p>")
    parts.append(f"<p><b>Prediction</b>: {_e(rec.get('prediction'))} "
                 f"<span class='muted'>[status {_e(rec.get('status') or traj.status)}"
                 + (f"; {_e(traj.reason)}" if traj.reason else "") + "]</span></p>")
    if metrics:
        parts.append("<table class='m'><tr>" + "".join(f"<td>{_e(k)}: {float(v):.2f}</td>" for k, v in metrics.items()
                                                       if isinstance(v, (int, float))) + "</tr></table>")
    models = ", ".join(f"{k}={v}" for k, v in (traj.provenance.models or {}).items())
    parts.append(f"<p class='muted'>graph {_e(traj.provenance.graph)}; models {_e(models)}; "
                 f"retriever {_e(traj.provenance.retriever)}</p>")
    for i, step in enumerate(traj.steps, 1):
        parts.append(f"<div class='step'><b>Step {i}</b>")
        if step.thought:
            parts.append(f"<div><i>think</i>: {_e(step.thought)}</div>")
        for q in step.queries:
            parts.append(f"<div>search: <span class='q'>{_e(q)}</span></div>")
        if step.error:
            parts.append(f"<div class='bad'>error: {_e(step.error)}</div>")
        for d in step.documents:
            text = d.text if len(d.text) <= max_doc_chars else d.text[:max_doc_chars] + "…"
            score = f" <span class='muted'>({d.score:.2f})</span>" if isinstance(d.score, (int, float)) else ""
            parts.append(f"<div class='doc'><b>{_e(d.title)}</b>{score} <span class='muted'>{_e(d.id)}</span>"
                         f"<br>{_e(text)}</div>")
        if step.raw:
            parts.append(f"<details><summary class='muted'>raw output</summary><pre>{_e(step.raw)}</pre></details>")
        parts.append("</div>")
    if traj.final_raw:
        parts.append(f"<details><summary class='muted'>final output</summary><pre>{_e(traj.final_raw)}</pre></details>")
    verdicts = {k: v for k, v in (traj.verdicts or {}).items() if k != "metrics"}
    if verdicts:
        parts.append(f"<p><b>Verdicts</b></p><pre>{_e(json.dumps(verdicts, indent=1, ensure_ascii=False))}</pre>")
    parts.append("</details>")
    return "\n".join(parts)


def write_view(predictions: str | os.PathLike, out: str | os.PathLike, ids: Iterable[str] | None = None,
               limit: int | None = None, title: str | None = None) -> int:
    """An HTML page of the questions in a predictions file; returns how many it shows."""
    wanted = set(ids) if ids else None
    items = []
    for rec in iter_jsonl(predictions, stats=ReadStats()):
        if wanted is not None and str(rec.get("id")) not in wanted:
            continue
        items.append(trajectory_html(rec))
        if limit is not None and len(items) >= limit:
            break
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title or predictions)}</title>"
            f"<style>{_CSS}</style></head><body><h2>{_e(title or predictions)}</h2>"
            f"<p class='muted'>{len(items)} question(s)</p>\n" + "\n".join(items) + "</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return len(items)
