"""The paper's ablation in miniature: five rows, same student, retriever and decoding.

Rows (:data:`ROWS`): ``agent-pe`` (the untrained student in the agent loop), ``rag-pe`` (one
retrieval + one answer call), ``downstream-sft`` (SFT on downstream trajectories from the base
model), ``ramp+downstream-sft`` (RAMP SFT, then the *same* downstream SFT: same rows, same steps)
and ``ramp+downstream-sft+grpo`` (GRPO on downstream questions from that checkpoint).

:func:`ablation_config` turns a training budget in minutes (at a reference speed) into a
:class:`PipelineConfig` with step counts (see :func:`plan_budget`), :func:`run_ablation` runs it resumably, and :func:`ablation_report`
scores the stored predictions **at report time** through :func:`masksearch.eval.metrics.score`
(rescoring after a metric change is one call, no rerun), pairs every two adjacent rows on the same
questions and puts a paired-bootstrap 95 % interval on each difference.
"""

from __future__ import annotations

import json
from collections import Counter
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from masksearch.pipelines.two_stage import EvalConfig, Pipeline, PipelineConfig, StageConfig

ROWS = ("agent-pe", "rag-pe", "downstream-sft", "ramp+downstream-sft", "ramp+downstream-sft+grpo")
BENCH_COLUMNS = ("hotpotqa", "fanoutqa", "musique", "2wiki", "bamboogle", "freshqa")
TABLE_METRICS = ("token_recall", "em", "f1")
PLAN_FILE = "plan.json"

# the evaluated row -> (method, model: "base" or the training stage it uses)
ROW_SOURCES = {
    "agent-pe": ("agent", "base"),
    "rag-pe": ("rag-pe", "base"),
    "downstream-sft": ("agent", "downstream-sft"),
    "ramp+downstream-sft": ("agent", "ramp-downstream-sft"),
    "ramp+downstream-sft+grpo": ("agent", "ramp-downstream-grpo"),
}

# budget shares of the training minutes (see plan_budget)
SHARE_RAMP, SHARE_DOWNSTREAM_EACH, SHARE_GRPO = 0.4, 0.2, 0.2
# the reference speed of the current code (docs/training.md, "Figures with the shared prompt
# prefix"): an SFT step of 4 rows (~750 tokens) takes ~16 s on a quiet 2-core CPU (it was 31-37 s
# before the fused head, packing and prefix sharing); a GRPO step of 2 questions x 4 rollouts ~42 s
# (the third ablation run: 336 s for 8 steps), i.e. ~2.6 SFT steps.  The speed-up buys steps.
REFERENCE_SFT_STEP_SECONDS = 16.0
GRPO_STEP_OVER_SFT_STEP = 2.6


def plan_budget(budget_minutes: float, sft_step_seconds: float = REFERENCE_SFT_STEP_SECONDS) -> dict[str, Any]:
    """Training steps from a budget of ``M`` minutes *at the reference speed* ``s`` (seconds per SFT
    step of 4 rows; default: the quiet 2-core CPU figure of docs/training.md).  RAMP SFT gets 40 %:
    ``floor(0.4·M·60 / s)`` steps; each of the two downstream SFT rows gets the **same**
    ``floor(0.2·M·60 / s)`` steps (equal downstream budget); GRPO gets ``floor(0.2·M·60 / 2.5s)``
    steps.  Steps, not wall seconds, so that the plan (and the result) does not depend on how busy
    the machine is; on a busy machine the wall time is longer."""
    t = budget_minutes * 60.0
    s = float(sft_step_seconds)
    return {
        "budget_minutes": budget_minutes,
        "reference_sft_step_seconds": s,
        "ramp_sft_steps": max(2, math.floor(SHARE_RAMP * t / s)),
        "downstream_sft_steps": max(2, math.floor(SHARE_DOWNSTREAM_EACH * t / s)),
        "grpo_steps": max(1, math.floor(SHARE_GRPO * t / (GRPO_STEP_OVER_SFT_STEP * s))),
    }


def ablation_config(out: str, budget_minutes: float, *, eval_dir: str | None = None, model: str = "smollm2",
                    eval_limit: int = 20, eval_limit_in_domain: int | None = None, ramp_n: int = 300, eval_n: int = 60,
                    sft_step_seconds: float = REFERENCE_SFT_STEP_SECONDS,
                    batch_size: int = 4, learning_rate: float = 1e-4, grpo_learning_rate: float = 1e-5,
                    max_length: int = 768, concurrency: int = 16, plan: dict[str, Any] | None = None,
                    **shared: Any) -> PipelineConfig:
    """The ablation's pipeline recipe for a budget (``plan`` overrides the step counts)."""
    plan = plan or plan_budget(budget_minutes, sft_step_seconds)
    stages = [
        StageConfig("ramp-sft", "sft", "base", "ramp", plan["ramp_sft_steps"], learning_rate, batch_size, max_length),
        StageConfig("ramp-downstream-sft", "sft", "ramp-sft", "downstream", plan["downstream_sft_steps"],
                    learning_rate, batch_size, max_length),
        StageConfig("downstream-sft", "sft", "base", "downstream", plan["downstream_sft_steps"],
                    learning_rate, batch_size, max_length),
        # DAPO's dynamic sampling (zero-signal groups dropped and refilled), and a search cache that
        # starts empty with the stage, so its hit rate is the GRPO run's own (issue 16)
        StageConfig("ramp-downstream-grpo", "grpo", "ramp-downstream-sft", "downstream", plan["grpo_steps"],
                    grpo_learning_rate, max_length=320, num_generations=4,
                    options={"dynamic_sampling": "true",
                             "search_cache": str(Path(out) / "data" / "search_cache.grpo.sqlite")}),
    ]
    evals = [EvalConfig(row, method, src) for row, (method, src) in ROW_SOURCES.items()]
    return PipelineConfig(out=out, model=model, eval_dir=eval_dir, eval_limit=eval_limit,
                          eval_limit_in_domain=eval_limit_in_domain, ramp_n=ramp_n,
                          eval_n=eval_n, concurrency=concurrency, stages=stages, evals=evals, **shared)


# the order rows are run in: the comparison the method is about first, so a partial run has it
RUN_ORDER = ("downstream-sft", "ramp+downstream-sft", "agent-pe", "rag-pe", "ramp+downstream-sft+grpo")
# (several processes may share one run folder: stages and rows are locked, see two_stage._Lock)


PLAN_STEP_KEYS = {"ramp": "ramp_sft_steps", "downstream": "downstream_sft_steps", "grpo": "grpo_steps"}


def parse_steps(text: str) -> dict[str, int]:
    """``"ramp=120,downstream=20"`` -> ``{"ramp_sft_steps": 120, "downstream_sft_steps": 20}`` (the
    plan keys :func:`plan_budget` writes); a clear error for an unknown stage or a bad count."""
    from masksearch.pipelines.two_stage import PipelineError

    out: dict[str, int] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, _, value = part.partition("=")
        key = PLAN_STEP_KEYS.get(name.strip())
        if key is None or not value.strip().isdigit() or int(value) < 1:
            raise PipelineError(f"bad step override {part!r}: use NAME=STEPS with NAME one of "
                                f"{', '.join(PLAN_STEP_KEYS)} and STEPS >= 1, e.g. ramp=120,downstream=20")
        out[key] = int(value)
    return out


def resolve_plan(out: str | os.PathLike, budget_minutes: float, steps: dict[str, int] | None = None,
                 sft_step_seconds: float = REFERENCE_SFT_STEP_SECONDS) -> dict[str, Any]:
    """The run's plan: ``OUT/plan.json`` when it exists (refused if ``steps`` disagree with it), else
    :func:`plan_budget` with ``steps`` laid over it, written there."""
    from masksearch.pipelines.two_stage import PipelineError

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    plan_path = root / PLAN_FILE
    steps = dict(steps or {})
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        clash = {k: (plan.get(k), v) for k, v in steps.items() if plan.get(k) != v}
        if clash:
            raise PipelineError(f"{plan_path} plans other step counts than asked ({clash}: stored, asked): "
                                "use a new --out for a new plan")
        return plan
    plan = {**plan_budget(budget_minutes, sft_step_seconds), **steps}
    if steps:
        plan["overridden"] = sorted(steps)
    plan_path.write_text(json.dumps(plan, indent=2))
    return plan


def run_ablation(out: str, budget_minutes: float, *, rows: Sequence[str] = RUN_ORDER,
                 steps: dict[str, int] | None = None, **kw: Any) -> dict[str, Any]:
    """Run (or resume) the data, the four training stages and the five evaluated rows.

    Pass 1 trains each row's stages and evaluates it on the in-domain benchmark only; pass 2 adds
    the other benchmarks (evaluations resume per question, so nothing is run twice).  The plan
    (step counts) is written to ``OUT/plan.json`` on the first run and reused on every rerun, so a
    resumed run trains exactly what the first one planned.  ``steps`` (plan keys, see
    :func:`parse_steps`) overrides the budget's step counts in a new plan; a rerun whose ``steps``
    disagree with the stored plan is refused rather than mixing two plans in one folder."""
    from masksearch.pipelines.two_stage import PipelineError

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise PipelineError(f"unknown ablation row(s) {unknown}: use {', '.join(ROWS)}")
    plan = resolve_plan(out, budget_minutes, steps, kw.get("sft_step_seconds", REFERENCE_SFT_STEP_SECONDS))
    t0 = time.perf_counter()
    pipe = Pipeline(ablation_config(out, budget_minutes, plan=plan, **kw))
    pipe.state["plan"] = plan
    from masksearch.data.benchmarks import benchmark_name

    in_domain = benchmark_name(pipe.cfg.downstream_pool)
    for row in rows:
        pipe.run_eval_row(row, benchmarks=[in_domain])
    for row in rows:
        pipe.run_eval_row(row)
    pipe.state["ablation_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    pipe._save()
    return pipe.state


# --------------------------------------------------------------------------- the report
def _scored(pred_file: Path) -> dict[str, dict[str, Any]]:
    """id -> {metrics (rescored now from the stored prediction), record}."""
    from masksearch.eval import metrics as M
    from masksearch.utils.jsonl import ReadStats, iter_jsonl

    out: dict[str, dict[str, Any]] = {}
    for rec in iter_jsonl(pred_file, stats=ReadStats()):
        if "id" not in rec:
            continue
        ex = {"golden_answers": rec.get("golden_answers") or [], "answer_match": rec.get("answer_match", "any")}
        out[str(rec["id"])] = {"metrics": M.score(rec.get("prediction"), ex), "record": rec}
    return out


def row_folder(root: str | os.PathLike, row: str, force_answer: bool = False) -> Path:
    """Where a row's evaluation lives (the ablation's side of :meth:`Pipeline.eval_out`)."""
    from masksearch.pipelines.two_stage import eval_folder

    return eval_folder(root, row, ROW_SOURCES.get(row, ("agent",))[0], force_answer)


def load_row_scores(root: str | os.PathLike, rows: Sequence[str] = ROWS,
                    benchmarks: Sequence[str] = BENCH_COLUMNS,
                    force_answer: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """row -> benchmark -> id -> scored record, from ``<row folder>/<bench>/predictions.jsonl``."""
    data: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        for b in benchmarks:
            f = row_folder(root, row, force_answer) / b / "predictions.jsonl"
            if f.exists():
                scored = _scored(f)
                if scored:
                    data.setdefault(row, {})[b] = scored
    return data


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def ablation_report(root: str | os.PathLike, out: str | os.PathLike | None = None, *, rows: Sequence[str] = ROWS,
                    benchmarks: Sequence[str] = BENCH_COLUMNS, n_boot: int = 10_000, seed: int = 0,
                    chart: bool = True, force_answer: bool = False) -> dict[str, Any]:
    """Score, pair and tabulate whatever predictions exist under ``root`` (partial runs too).

    ``force_answer``: the evaluation of the agent rows with budget forcing (``eval-forced/``,
    RAG-PE's row is the same either way); its report goes to ``ROOT/report-forced``.

    Per benchmark, every row is scored on the same questions: those that every row with a file for
    that benchmark has answered.  ``diffs["B - A"]`` (adjacent rows A, B) is the paired-bootstrap
    mean difference of B minus A in percentage points with its 95 % interval: ``avg`` resampled
    within each benchmark (the mean of per-benchmark means, like the table), and per benchmark.
    """
    from masksearch.eval.report import bar_chart, to_markdown
    from masksearch.eval.stats import paired_bootstrap

    out = Path(out or Path(root) / ("report-forced" if force_answer else "report"))
    out.mkdir(parents=True, exist_ok=True)
    data = load_row_scores(root, rows, benchmarks, force_answer)
    present = [r for r in rows if r in data]
    common: dict[str, list[str]] = {}
    for b in benchmarks:
        sets = [set(data[r][b]) for r in present if b in data[r]]
        if sets:
            common[b] = sorted(set.intersection(*sets))
    table: dict[str, dict[str, dict[str, float | None]]] = {m: {} for m in TABLE_METRICS}
    for m in TABLE_METRICS:
        for r in present:
            vals: dict[str, float | None] = {}
            for b in benchmarks:
                ids = common.get(b) or []
                if b not in data[r] or not ids:
                    vals[b] = None
                    continue
                vals[b] = _pct(sum(data[r][b][i]["metrics"][m] for i in ids) / len(ids))
            have = [v for v in vals.values() if v is not None]
            vals["avg"] = round(sum(have) / len(have), 2) if have else None
            table[m][r] = vals
    diffs: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in TABLE_METRICS}
    for a, bname in zip(rows, rows[1:]):
        if a not in data or bname not in data:
            continue
        key = f"{bname} - {a}"
        for m in TABLE_METRICS:
            xs, ys, strata, per = [], [], [], {}
            for b in benchmarks:
                ids = common.get(b) or []
                if b not in data[a] or b not in data[bname] or not ids:
                    continue
                xa = [data[a][b][i]["metrics"][m] for i in ids]
                xb = [data[bname][b][i]["metrics"][m] for i in ids]
                bs = paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed)
                per[b] = _diff_pct(bs)
                xs += xa
                ys += xb
                strata += [b] * len(ids)
            if xs:
                entry = _diff_pct(paired_bootstrap(xs, ys, strata=strata, n_boot=n_boot, seed=seed))
                entry["per_benchmark"] = per
                diffs[m][key] = entry
    n_questions = {b: len(ids) for b, ids in common.items()}
    outcomes = {r: run_outcomes([data[r]["hotpotqa"][i]["record"] for i in common.get("hotpotqa") or []])
                for r in present if "hotpotqa" in data[r]}
    md = _markdown(table, diffs, n_questions, present, benchmarks, to_markdown, outcomes)
    (out / "table.md").write_text(md, encoding="utf-8")
    files = [str(out / "table.md")]
    if chart and present:
        cols = list(benchmarks) + ["avg"]
        chart_rows = [{"method": r, **table["token_recall"][r], "complete": True} for r in present]
        bar_chart(out / "chart.png", cols, chart_rows, "token_recall",
                  title="Ablation: token recall (%), same questions per benchmark")
        files.append(str(out / "chart.png"))
    (out / "samples.md").write_text(sample_trajectories(data, present, common), encoding="utf-8")
    files.append(str(out / "samples.md"))
    result = {
        "rows": {r: table["token_recall"][r] for r in present},
        "diffs": diffs["token_recall"],
        "metrics": {m: {"rows": {r: table[m][r] for r in present}, "diffs": diffs[m]} for m in ("em", "f1")},
        "n_questions": n_questions,
        "outcomes_hotpotqa": outcomes,
        "missing_rows": [r for r in rows if r not in data],
        "n_boot": n_boot,
        "scored_with": "masksearch.eval.metrics.score (at report time, from stored predictions)",
    }
    result["wall_seconds"] = wall_times(root, rows, force_answer)
    result["force_answer"] = force_answer
    plan_file = Path(root) / PLAN_FILE
    if plan_file.exists():
        result["plan"] = json.loads(plan_file.read_text())
    (out / "ablation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    files.append(str(out / "ablation.json"))
    result["files"] = files
    return result


def wall_times(root: str | os.PathLike, rows: Sequence[str] = ROWS, force_answer: bool = False) -> dict[str, Any]:
    """Wall seconds of each data step, training stage (with its steps) and evaluated row, read
    from the files each one writes (``done.json``, ``stage.json``, ``results.json``)."""
    root = Path(root)
    out: dict[str, Any] = {"data": {}, "stages": {}, "steps": {}, "evals": {}}
    for f in sorted(root.glob("data/*/done.json")):
        out["data"][f.parent.name] = json.loads(f.read_text()).get("seconds")
    for f in sorted(root.glob("stages/*/stage.json")):
        rep = json.loads(f.read_text())
        out["stages"][f.parent.name] = rep.get("seconds")
        out["steps"][f.parent.name] = rep.get("steps")
    for row in rows:
        f = row_folder(root, row, force_answer) / "results.json"
        if f.exists():
            res = json.loads(f.read_text())
            out["evals"][row] = res.get("wall_s_total") or res.get("wall_s")
    return out


def run_outcomes(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the runs ended: status counts (a forced answer counted as ``forced``, not
    ``answered``) and mean searches per question."""
    counts: Counter = Counter()
    for rec in records:
        meta = (rec.get("trajectory") or {}).get("metadata") or {}
        st = rec.get("status") or "?"
        counts["forced" if st == "answered" and meta.get("forced_answer") else st] += 1
    n = len(records)
    out = {"n": n, "status": dict(counts),
           "searches": round(sum(r.get("num_searches") or 0 for r in records) / n, 2) if n else None}
    evidence = evidence_outcomes(records)
    if evidence["quotes"]:
        out["evidence"] = evidence
    return out


def evidence_outcomes(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What the final thoughts' quotes (``The passage "T" says: "…".``, the provenance teachers'
    form) did: runs with one search, runs whose shown ``<information>`` holds a gold answer, quotes,
    quotes that are word for word in the shown information, answers taken from the quote (the answer
    a span of it), answers that are the whole quote, and quotes that hold a gold answer."""
    from masksearch.scoring import span_in_text
    from masksearch.training.provenance import quoted_evidence

    c: Counter = Counter()
    for rec in records:
        traj = rec.get("trajectory") or {}
        steps = traj.get("steps") or []
        info = " ".join(" ".join((st.get("information") or "").split()) for st in steps)
        golds = [str(g) for g in rec.get("golden_answers") or []]
        c["one_search"] += len(steps) == 1
        c["gold_shown"] += any(span_in_text(info, g) for g in golds)
        found = quoted_evidence(traj.get("final_thought") or "")
        if found is None:
            continue
        quote, pred = found[1], str(rec.get("prediction") or "").strip()
        c["quotes"] += 1
        c["quote_literal"] += bool(quote) and quote in info
        c["answer_from_quote"] += bool(pred) and span_in_text(quote, pred)
        c["answer_is_quote"] += bool(pred) and pred.rstrip(". ") == quote.strip().rstrip(". ")
        c["quote_has_gold"] += any(span_in_text(quote, g) for g in golds)
    keys = ("one_search", "gold_shown", "quotes", "quote_literal", "answer_from_quote", "answer_is_quote",
            "quote_has_gold")
    return {k: int(c[k]) for k in keys}


def _diff_pct(bs: dict[str, Any]) -> dict[str, Any]:
    return {"mean": round(100 * bs["mean"], 2), "ci95": [round(100 * bs["lo"], 2), round(100 * bs["hi"], 2)],
            "n": bs["n"]}


def _markdown(table: dict, diffs: dict, n_questions: dict, present: list[str], benchmarks: Sequence[str],
              to_markdown: Any, outcomes: dict[str, dict[str, Any]] | None = None) -> str:
    cols = list(benchmarks) + ["avg"]
    names = {"token_recall": "Token recall", "em": "Exact match", "f1": "F1"}
    parts = ["Questions per benchmark (the same for every row): "
             + ", ".join(f"{b} {n}" for b, n in n_questions.items()), ""]
    for m in TABLE_METRICS:
        rows = [{"method": r, **table[m][r], "complete": all(table[m][r].get(b) is not None for b in benchmarks)}
                for r in present]
        parts += [f"### {names[m]} (%)", "", to_markdown(cols, rows, m).split("\n\n")[0].rstrip(), ""]
        if diffs[m]:
            parts += [f"Adjacent-row differences, {names[m].lower()} (points; paired bootstrap 95 % interval):", "",
                      "| difference | avg | HotpotQA (in-domain) |", "|---|---:|---:|"]
            for k, d in diffs[m].items():
                h = d["per_benchmark"].get("hotpotqa")
                hs = f"{h['mean']:+.1f} [{h['ci95'][0]:+.1f}, {h['ci95'][1]:+.1f}]" if h else "–"
                parts.append(f"| {k} | {d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}] | {hs} |")
            parts.append("")
    if outcomes:
        parts += ["How the in-domain runs ended (answered / forced at the turn cap / turn cap / malformed / "
                  "other; mean searches):", "", "| row | answered | forced | turn cap | malformed | other | searches |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r, o in outcomes.items():
            st = dict(o["status"])
            main = [st.pop(k, 0) for k in ("answered", "forced", "turn_cap", "malformed")]
            parts.append(f"| {r} | " + " | ".join(str(x) for x in main) + f" | {sum(st.values())} | {o['searches']} |")
        parts.append("")
        quoted = {r: o["evidence"] for r, o in outcomes.items() if o.get("evidence")}
        if quoted:
            keys = list(next(iter(quoted.values())))
            parts += ["What the final thoughts' quotes did, in-domain (runs):", "",
                      "| row | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
                      "|---|" + "---:|" * len(keys)]
            parts += [f"| {r} | " + " | ".join(str(e[k]) for k in keys) + " |" for r, e in quoted.items()]
            parts.append("")
    return "\n".join(parts) + "\n"


def sample_trajectories(data: dict, present: list[str], common: dict[str, list[str]], bench: str = "hotpotqa",
                        n: int = 1) -> str:
    """The same in-domain question as every row ran it (Markdown)."""
    from masksearch.protocol import render_messages
    from masksearch.trajectory import Trajectory

    ids = common.get(bench) or []
    if not ids:
        return "(no in-domain predictions yet)\n"
    # prefer a question some trained row answered correctly
    best = next((i for i in ids if any(data[r].get(bench, {}).get(i, {}).get("metrics", {}).get("token_recall", 0) > 0
                                       for r in present[2:])), ids[0])
    chosen = [best] + [i for i in ids if i != best][: n - 1]
    lines: list[str] = []
    for qid in chosen:
        rec0 = data[present[0]][bench][qid]["record"]
        question = rec0.get("question") or (rec0.get("trajectory") or {}).get("question", "")
        lines += [f"**Q ({bench} {qid}):** {question}", f"**Gold:** {' | '.join(rec0['golden_answers'])}", ""]
        for r in present:
            item = data[r].get(bench, {}).get(qid)
            if not item:
                continue
            t = Trajectory.from_dict(item["record"]["trajectory"])
            lines += [f"#### {r} (token recall {100 * item['metrics']['token_recall']:.0f} %)", "", "```text"]
            for msg in render_messages(t, system_prompt=None)[1:]:
                body = msg["content"]
                lines.append(f"[{msg['role']}] {body[:500] + ' …' if len(body) > 500 else body}")
            lines += ["```", f"status: {t.status}; answer: {t.answer!r}", ""]
    return "\n".join(lines) + "\n"
