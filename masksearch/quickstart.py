"""The end-to-end quickstart: the whole MaskSearch method on the embedded defaults.

Stages (each resumable; a finished stage is skipped on rerun, an interrupted one resumes from its
own JSONL outputs):

1. ``index``   – BM25 index of the corpus (the shared 31k-passage Wikipedia corpus by default);
2. ``ramp``    – RAMP questions (``rules`` masking): a training set and a held-out set;
3. ``teacher`` – the provenance teacher builds the training trajectories; the LLM teacher graph
   (Planner/Rewriter/Observer on Qwen2.5-Coder-0.5B behind a real llama.cpp server,
   ``teacher_model``) runs on a few examples too, so the report shows both teachers and their
   acceptance rates, and its accepted trajectories join the SFT data;
4. ``sft``     – TRL ``SFTTrainer`` on the accepted trajectories (a few steps);
5. ``downstream`` – stage 2 of the paper's recipe: the multi-hop provenance teacher on HotpotQA
   training questions (the fixed held-out split is never trained on), then SFT on those
   trajectories starting from the stage-1 checkpoint (``masksearch.pipelines.two_stage``);
6. ``eval``    – both students vs the untrained student (Agent-PE) vs RAG-PE on small slices of the
   shared benchmarks (HotpotQA: the held-out split) and on the held-out RAMP set;
7. ``report``  – ``REPORT.md`` with the table, the loss curve, the chart and sample trajectories.

Everything is a function argument (and a ``masksearch quickstart`` flag).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from masksearch.errors import MaskSearchError

STAGES = ("index", "ramp", "teacher", "sft", "downstream", "eval", "report")
DEFAULT_BENCHMARKS = ("hotpotqa", "fanoutqa", "musique", "2wiki", "bamboogle", "freshqa")


@dataclass
class QuickstartConfig:
    out: str = "runs/quickstart"
    corpus: str | None = None  # default: the shared corpus beside the checkout
    model: str = "smollm2"
    teacher_model: str = "llamacpp:qwen2.5-coder-0.5b"  # the LLM teacher (a real llama.cpp server)
    ramp_train: int = 96
    ramp_heldout: int = 12
    max_masks: int = 2
    llm_teacher_examples: int = 4
    sft_steps: int = 12  # CPU SFT of the 135M model runs ~1k tokens/s: a few steps only
    sft_batch_size: int = 2
    learning_rate: float = 1e-4
    downstream_steps: int = 8  # stage 2: SFT on HotpotQA trajectories from the stage-1 checkpoint
    downstream_eval_n: int = 60  # the fixed held-out HotpotQA split (never trained on)
    eval_limit: int = 3
    benchmarks: tuple[str, ...] = DEFAULT_BENCHMARKS
    k: int = 3
    max_turns: int = 3
    max_new_tokens: int = 96  # per policy turn
    info_max_tokens: int = 256  # budget of each <information> block
    concurrency: int = 16
    seed: int = 0
    stages: tuple[str, ...] = STAGES
    force: tuple[str, ...] = field(default_factory=tuple)  # stages to redo


def _log(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


class _Stages:
    """``stages.json`` in the run folder: which stage finished, with what outputs and timings."""

    def __init__(self, root: Path):
        self.path = root / "stages.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, name: str) -> bool:
        return name in self.state

    def finish(self, name: str, info: dict[str, Any]) -> None:
        self.state[name] = info
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        os.replace(tmp, self.path)

    def forget(self, name: str) -> None:
        self.state.pop(name, None)


def _resolve_corpus(corpus: str | None) -> str:
    if corpus:
        if not os.path.exists(corpus):
            raise MaskSearchError(f"corpus not found: {corpus}")
        return corpus
    from masksearch.paths import shared_corpus

    p = shared_corpus()
    if p is None:
        raise MaskSearchError(
            "no corpus: the shared corpus (../shared/data/corpus/wiki_passages.jsonl beside the checkout) "
            "is missing. Pass --corpus PATH with a JSONL of {id, title, text} passages (or any format "
            "`masksearch index` reads), or set MASKSEARCH_SHARED_DATA to a folder holding corpus/ and bench/.")
    return str(p)


def run_quickstart(cfg: QuickstartConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the quickstart; returns the stage record and writes ``REPORT.md``."""
    cfg = cfg or QuickstartConfig()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    stages = _Stages(root)
    for name in cfg.force:
        stages.forget(name)
    run = _Run(cfg, root, _resolve_corpus(cfg.corpus), _run_paths(root), stages)
    t_all = time.perf_counter()
    for name, fn in _STAGE_STEPS:
        if name == "report":
            stages.forget("report")  # always rewritten: cheap, and reflects the latest stages
        _run_stage(run, name, fn)
    _log(f"all stages done in {time.perf_counter() - t_all:.0f} s; report: {root / 'REPORT.md'}")
    return stages.state


@dataclass
class _Run:
    """One quickstart run: its config, folder, corpus, output paths and stage record."""

    cfg: QuickstartConfig
    root: Path
    corpus: str
    paths: dict[str, Path]
    stages: _Stages

    @property
    def retriever_spec(self) -> str:
        return f"bm25:{self.paths['index']}"


def _run_paths(root: Path) -> dict[str, Path]:
    return {
        "index": root / "index" / "bm25",
        "ramp_train": root / "ramp" / "train.jsonl",
        "ramp_heldout": root / "ramp" / "heldout.jsonl",
        "cot_provenance": root / "teacher" / "provenance",
        "cot_llm": root / "teacher" / "llm",
        "sft": root / "sft",
        "split": root / "downstream" / "split",
        "cot_downstream": root / "downstream" / "teacher",
        "sft2": root / "downstream" / "sft",
        "eval": root / "eval",
        "report": root / "report",
    }


def _run_stage(run: _Run, name: str, fn: Callable[[_Run], dict[str, Any]]) -> None:
    """Run one stage unless it is not asked for or finished already; record its outputs and time."""
    if name not in run.cfg.stages:
        return
    if run.stages.done(name):
        _log(f"{name}: done already (skipped; --force {name} redoes it)")
        return
    _log(f"{name}: starting")
    t0 = time.perf_counter()
    info = fn(run) or {}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    run.stages.finish(name, info)
    _log(f"{name}: finished in {info['seconds']} s")


# 1. index ---------------------------------------------------------------------------
def _do_index(run: _Run) -> dict[str, Any]:
    from masksearch.retrieval import build_index

    build_index(run.corpus, kind="bm25", out=str(run.paths["index"]))
    return {"corpus": run.corpus, "index": str(run.paths["index"])}


# 2. RAMP ----------------------------------------------------------------------------
def _do_ramp(run: _Run) -> dict[str, Any]:
    from masksearch.data.ramp import generate_ramp

    cfg, paths = run.cfg, run.paths
    train = generate_ramp(run.corpus, paths["ramp_train"], n=cfg.ramp_train, strategy="rules",
                          max_masks=cfg.max_masks, seed=cfg.seed)
    held = generate_ramp(run.corpus, paths["ramp_heldout"], n=cfg.ramp_heldout, strategy="rules",
                         max_masks=cfg.max_masks, seed=cfg.seed + 1000)
    # a held-out example must not share a passage with the training set
    _drop_overlap(paths["ramp_train"], paths["ramp_heldout"])
    return {"train": _slim(train), "heldout": _slim(held)}


# 3. teachers ------------------------------------------------------------------------
def _do_teacher(run: _Run) -> dict[str, Any]:
    from masksearch.training.export import run_cot

    cfg, paths = run.cfg, run.paths
    prov = run_cot(paths["ramp_train"], paths["cot_provenance"], teacher="provenance",
                   retriever=run.retriever_spec, concurrency=4, k=cfg.k,
                   info_max_tokens=cfg.info_max_tokens)
    n_llm = max(1, cfg.llm_teacher_examples)
    opts: dict[str, Any] = {"max_new_tokens": 256}
    if str(cfg.teacher_model).startswith("llamacpp:"):
        opts["n_parallel"] = n_llm  # one llama.cpp slot per run in flight
    llm = run_cot(paths["ramp_train"], paths["cot_llm"], teacher=cfg.teacher_model, retriever=run.retriever_spec,
                  concurrency=n_llm, limit=cfg.llm_teacher_examples,
                  k=cfg.k, max_turns=cfg.max_turns, info_max_tokens=cfg.info_max_tokens,
                  model_options=opts)
    return {"provenance": _slim(prov), "llm": _slim(llm)}


# 4. SFT -----------------------------------------------------------------------------
def _do_sft(run: _Run) -> dict[str, Any]:
    from masksearch.training.sft import parse_sft_args, run_sft

    cfg, paths = run.cfg, run.paths
    files = [str(paths["cot_provenance"] / "trajectories.jsonl")]
    llm_file = paths["cot_llm"] / "trajectories.jsonl"
    if llm_file.exists():
        files.append(str(llm_file))
    argv = ["--model", cfg.model, "--ramp_files", *files, "--output_dir", str(paths["sft"]),
            "--max_steps", str(cfg.sft_steps), "--per_device_train_batch_size", str(cfg.sft_batch_size),
            "--learning_rate", str(cfg.learning_rate), "--logging_steps", "2", "--save_strategy", "no",
            "--report_to", "none", "--max_length", "1024", "--seed", str(cfg.seed),
            "--lr_scheduler_type", "cosine", "--warmup_steps", "2"]
    script_args, sft_config = parse_sft_args(argv)
    rep = run_sft(script_args, sft_config)
    return {k: v for k, v in rep.items() if k != "loss_history"}


# 5. downstream (stage 2) ------------------------------------------------------------
def _do_downstream(run: _Run) -> dict[str, Any]:
    from masksearch.data.benchmarks import split_pool
    from masksearch.pipelines.two_stage import StageConfig, build_downstream, downstream_rows, sft_stage
    from masksearch.utils.jsonl import iter_jsonl

    cfg, paths = run.cfg, run.paths
    split = split_pool("hotpotqa", cfg.downstream_eval_n, paths["split"])
    held = {str(r["id"]) for r in iter_jsonl(split["heldout"])}
    data = build_downstream(split["train"], paths["cot_downstream"], held, retriever=run.retriever_spec,
                            k=cfg.k, info_max_tokens=cfg.info_max_tokens)
    rows = downstream_rows(paths["cot_downstream"] / "trajectories.jsonl", held, seed=cfg.seed)
    stage = StageConfig("downstream-sft", "sft", "sft", "downstream", cfg.downstream_steps, cfg.learning_rate,
                        cfg.sft_batch_size, 1024)
    rep = sft_stage(stage, f"hf:{paths['sft']}", rows, paths["sft2"], seed=cfg.seed)
    return {"split": split, "teacher": data["teacher"], "init": str(paths["sft"]),
            **{k: v for k, v in rep.items() if k != "loss_history"}}


# 6. eval ----------------------------------------------------------------------------
def _do_eval(run: _Run) -> dict[str, Any]:
    from masksearch.eval.runner import run_eval

    cfg, paths = run.cfg, run.paths
    ckpt, ckpt2 = f"hf:{paths['sft']}", f"hf:{paths['sft2']}"
    runs = [
        ("rag-pe", cfg.model, "RAG-PE (untrained)"),
        ("agent", cfg.model, "Agent-PE (untrained student)"),
        ("agent", ckpt, "MaskSearch student (SFT, quickstart)"),
        ("agent", ckpt2, "MaskSearch student (RAMP SFT -> downstream SFT)"),
    ]
    tags = {cfg.model: "base", ckpt: "sft", ckpt2: "sft2"}
    # in-domain HotpotQA is the held-out split (the downstream stage trained on the rest)
    in_domain = str(paths["split"] / "hotpotqa.heldout.jsonl")
    benches = [b for b in cfg.benchmarks if b != "hotpotqa"]
    out: dict[str, Any] = {}
    for i, (method, model, label) in enumerate(runs):
        if model == ckpt2 and not (paths["sft2"] / "config.json").exists():
            continue
        d = paths["eval"] / f"{i}-{method}-{tags[model]}"
        res = run_eval(method, model, run.retriever_spec, benchmarks=benches,
                       data=[str(paths["ramp_heldout"]), in_domain], limit=cfg.eval_limit,
                       concurrency=cfg.concurrency, out_dir=str(d), k=cfg.k,
                       max_turns=cfg.max_turns, label=label, max_new_tokens=cfg.max_new_tokens,
                       info_max_tokens=cfg.info_max_tokens)
        out[label] = str(d)
        _log(f"eval {label}: {json.dumps(_headline(res))}")
    return {"runs": out}


# 7. report --------------------------------------------------------------------------
def _do_report(run: _Run) -> dict[str, Any]:
    return write_report(run.root, run.paths, run.stages.state, run.cfg)


_STAGE_STEPS: tuple[tuple[str, Callable[[_Run], dict[str, Any]]], ...] = (
    ("index", _do_index), ("ramp", _do_ramp), ("teacher", _do_teacher), ("sft", _do_sft),
    ("downstream", _do_downstream), ("eval", _do_eval), ("report", _do_report),
)


def _slim(summary: Any) -> Any:
    if not isinstance(summary, dict):
        return summary
    return {k: v for k, v in summary.items() if not isinstance(v, (list,)) or len(v) < 20}


def _headline(res: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for b, v in (res.get("benchmarks") or {}).items():
        m = v.get("metrics") or {}
        if "token_recall" in m:
            out[b] = round(m["token_recall"], 3)
    return out


def _drop_overlap(train: Path, heldout: Path) -> None:
    from masksearch.utils.jsonl import iter_jsonl, write_jsonl

    seen = {r.get("passage_id") for r in iter_jsonl(train)}
    held = [r for r in iter_jsonl(heldout) if r.get("passage_id") not in seen]
    write_jsonl(heldout, held)


def _sample_trajectory_md(pred_file: Path, n: int = 1) -> str:
    """Render the first ``n`` trajectories of a predictions file as Markdown."""
    from masksearch.protocol import render_messages
    from masksearch.trajectory import Trajectory
    from masksearch.utils.jsonl import iter_jsonl

    parts = []
    for rec in iter_jsonl(pred_file):
        traj = rec.get("trajectory") or rec
        try:
            t = Trajectory.from_dict(traj)
        except TypeError:
            continue
        lines = [f"**Q:** {t.question[:400]}", f"**Gold:** {' | '.join(t.golden_answers)[:200]}", "", "```text"]
        for m in render_messages(t, system_prompt=None)[1:]:
            body = m["content"]
            if len(body) > 600:
                body = body[:600] + " …"
            lines.append(f"[{m['role']}] {body}")
        lines += ["```", f"status: {t.status}; answer: {t.answer!r}"]
        parts.append("\n".join(lines))
        if len(parts) >= n:
            break
    return "\n\n".join(parts)


def write_report(root: Path, paths: dict[str, Path], state: dict[str, Any], cfg: QuickstartConfig) -> dict[str, Any]:
    """``REPORT.md``: stage timings, teachers and acceptance, SFT loss, the results table, samples."""
    from masksearch.eval.report import make_report

    lines = ["# MaskSearch quickstart report", ""]
    lines.append(f"Model `{cfg.model}`, retriever BM25 over `{state.get('index', {}).get('corpus', '?')}`.")
    lines.append("")
    lines.append("| stage | seconds |\n|---|---|")
    for s in STAGES[:-1]:
        if s in state:
            lines.append(f"| {s} | {state[s].get('seconds', '')} |")
    ramp = state.get("ramp", {})
    if ramp:
        lines += ["", "## RAMP data", "", "| split | kept | mask counts | skipped |", "|---|---|---|---|"]
        for split in ("train", "heldout"):
            r = ramp.get(split) or {}
            lines.append(f"| {split} | {r.get('kept', '')} | {r.get('mask_counts', '')} | {r.get('skipped', '')} |")
    teach = state.get("teacher", {})
    if teach:
        lines += ["", "## Teachers", "", "| teacher | runs | accepted | acceptance rate |", "|---|---|---|---|"]
        for name, s in teach.items():
            if isinstance(s, dict):
                lines.append(f"| {name} | {s.get('trajectories', '')} | {s.get('accepted', '')} | "
                             f"{s.get('acceptance_rate', '')} |")
    ds = state.get("downstream", {})
    if ds:
        t = ds.get("teacher") or {}
        lines += ["", "## Downstream stage (stage 2)", "",
                  f"Multi-hop provenance teacher on {t.get('trajectories')} HotpotQA training questions "
                  f"(the {ds.get('split', {}).get('n_heldout')} held-out ones excluded): {t.get('accepted')} accepted, "
                  f"rejected by reason {t.get('rejected_by_grounding_reason')}. SFT from the stage-1 checkpoint: "
                  f"{ds.get('steps')} steps on {ds.get('rows')} rows; loss {ds.get('loss_first')} -> {ds.get('loss_last')}."]
    sft = state.get("sft", {})
    if sft:
        lines += ["", "## SFT", "",
                  f"{sft.get('steps')} steps on {sft.get('rows')} rows from teachers {sft.get('teachers')}; "
                  f"loss {sft.get('loss_first')} -> {sft.get('loss_last')}."]
        if sft.get("loss_plot"):
            rel = os.path.relpath(sft["loss_plot"], root)
            lines += ["", f"![SFT loss]({rel})"]
    ev = state.get("eval", {})
    result: dict[str, Any] = {}
    if ev:
        rep = make_report(list(ev["runs"].values()), out=paths["report"], benchmarks=list(cfg.benchmarks))
        result["table"] = rep.get("markdown")
        lines += ["", "## Results (token recall, the paper's metric)", "",
                  f"{cfg.eval_limit} questions per benchmark: a smoke test of the pipeline, not a measurement.", "",
                  rep["markdown"], "", "Held-out RAMP and in-domain (held-out HotpotQA split) side by side, "
                  "token recall (%):", "", "| Method | held-out RAMP | HotpotQA (in-domain, held out) |",
                  "|---|---:|---:|"]
        for label, d in ev["runs"].items():
            try:
                res = json.loads((Path(d) / "results.json").read_text())
            except (OSError, ValueError):
                continue
            vals = [(res.get("benchmarks", {}).get(b) or {}).get("metrics", {}).get("token_recall") for b in ("heldout", "hotpotqa")]
            lines.append(f"| {label} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in vals) + " |")
        lines.append("")
        chart = paths["report"] / "chart.png"
        if chart.exists():
            lines += [f"![results]({os.path.relpath(chart, root)})", ""]
        lines += ["## Sample trajectories", ""]
        for label, d in ev["runs"].items():
            preds = sorted(Path(d).glob("**/predictions*.jsonl"))
            if preds:
                lines += [f"### {label}", "", _sample_trajectory_md(preds[0]), ""]
    (root / "REPORT.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result["report"] = str(root / "REPORT.md")
    return result
