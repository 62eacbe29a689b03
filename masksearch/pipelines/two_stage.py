"""The paper's training recipe as one resumable pipeline.

Stage 1 is SFT on RAMP trajectories; stage 2 is SFT on downstream (in-domain QA) trajectories,
starting from the stage-1 checkpoint; GRPO can then start from either stage.  A stage may also
start from the base model (the "downstream only" row of the ablation).  The recipe is a YAML file
(``configs/two_stage.yaml``) read into :class:`PipelineConfig`; ``masksearch pipeline --config
FILE`` runs it.

Layout under ``out``::

    data/index/bm25             BM25 index of the corpus (unless ``retriever`` is given)
    data/split/                 <pool>.heldout.jsonl (never trained on) + <pool>.train.jsonl
    data/ramp/ramp.jsonl        RAMP questions
    data/ramp-teacher/          provenance-teacher trajectories (run_cot layout)
    data/downstream-teacher/    multi-hop provenance trajectories on the training pool
    stages/<name>/              a checkpoint + stage.json (its report) per training stage
    eval/<name>/                run_eval output per evaluation (predictions.jsonl per benchmark)
    pipeline.json               what ran, with wall times

Resuming: a data step or training stage whose marker file exists is skipped; a killed training
stage is rerun from its start (a stage is minutes on a CPU); teacher runs and evaluations resume
per question (their JSONL writers skip finished ids).

The evaluation split is enforced here: the downstream training pool is the pool minus the fixed
hashed split (:func:`masksearch.data.benchmarks.eval_split_ids`), and every downstream SFT/GRPO
stage refuses rows or questions whose id is in that split (:class:`EvalLeakError`).
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from masksearch.errors import MaskSearchError

STAGE_REPORT = "stage.json"
EVAL_DONE = "eval_done.json"
EVAL_FORCED = "eval-forced"  # the agent rows' folder under force_answer (eval_folder)


def eval_folder(root: str | os.PathLike, name: str, method: str | None, force_answer: bool = False) -> Path:
    """The one rule for where an evaluated row lives: ``ROOT/eval/<name>``, or
    ``ROOT/eval-forced/<name>`` for an agent row under ``force_answer`` (RAG-PE is the same either way)."""
    return Path(root) / (EVAL_FORCED if force_answer and method == "agent" else "eval") / name
DATA_KINDS = ("ramp", "downstream")


class PipelineError(MaskSearchError, ValueError):
    pass


def _log(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


@dataclass
class StageConfig:
    """One training stage: ``kind`` sft | grpo, ``init`` base | <an earlier stage's name>,
    ``data`` ramp | downstream.  ``options`` are extra TRL config flags (``{"warmup_steps": 2}``)."""

    name: str
    kind: str = "sft"
    init: str = "base"
    data: str = "ramp"
    max_steps: int = 20
    learning_rate: float = 1e-4
    batch_size: int = 4
    max_length: int = 1024
    max_train_seconds: float | None = None
    num_generations: int = 4  # GRPO group size
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """One evaluated row: ``method`` agent | rag-pe, ``model`` base | <a stage's name>."""

    name: str
    method: str = "agent"
    model: str = "base"
    label: str | None = None


@dataclass
class PipelineConfig:
    out: str = "runs/two_stage"
    model: str = "smollm2"                 # the student (base) model spec
    corpus: str | None = None              # default: the shared corpus
    retriever: str | None = None           # default: a BM25 index built under out/data/index
    # decoding / environment, shared by teachers, GRPO rollouts and every evaluated row
    k: int = 3
    max_turns: int = 3
    max_new_tokens: int = 96
    info_max_tokens: int = 256
    force_answer: bool = False             # evaluated agent rows: budget forcing at the turn cap
    seed: int = 0
    # RAMP data (stage 1)
    ramp_n: int = 300
    ramp_max_masks: int = 2
    ramp_teacher: str = "provenance"
    # downstream data (stage 2): the pool minus the fixed evaluation split
    downstream_pool: str = "hotpotqa"
    eval_n: int = 60
    split_salt: str = "masksearch-eval-v1"
    downstream_teacher: str = "multihop-provenance"
    downstream_limit: int | None = None
    # evaluation
    eval_dir: str | None = None            # files named as in ../shared/data/bench; default: split + shared
    eval_limit: int = 20
    eval_limit_in_domain: int | None = None  # questions of the in-domain benchmark (default: eval_limit)
    eval_benchmarks: list[str] = field(default_factory=lambda: ["hotpotqa", "fanoutqa", "musique", "2wiki",
                                                                "bamboogle", "freshqa"])
    concurrency: int = 16
    stages: list[StageConfig] = field(default_factory=list)
    evals: list[EvalConfig] = field(default_factory=list)

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise PipelineError(f"no stage named {name!r} (stages: {', '.join(s.name for s in self.stages) or 'none'})")

    def validate(self) -> "PipelineConfig":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"duplicate stage names in {names}")
        for s in self.stages:
            if s.kind not in ("sft", "grpo"):
                raise PipelineError(f"stage {s.name!r}: kind must be sft or grpo, not {s.kind!r}")
            if s.data not in DATA_KINDS:
                raise PipelineError(f"stage {s.name!r}: data must be one of {DATA_KINDS}, not {s.data!r}")
            if s.init != "base" and s.init not in names:
                raise PipelineError(f"stage {s.name!r} starts from {s.init!r}, which is neither 'base' nor a stage")
            if s.init == s.name:
                raise PipelineError(f"stage {s.name!r} cannot start from itself")
        for e in self.evals:
            if e.method not in ("agent", "rag-pe"):
                raise PipelineError(f"eval {e.name!r}: method must be agent or rag-pe")
            if e.model != "base" and e.model not in names:
                raise PipelineError(f"eval {e.name!r}: model {e.model!r} is neither 'base' nor a stage")
        return self


def _from_dict(cls: Any, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise PipelineError(f"unknown {cls.__name__} key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**d)


def config_from_dict(d: dict[str, Any]) -> PipelineConfig:
    d = dict(d)
    stages = d.pop("stages", []) or []
    evals = d.pop("evals", []) or []
    if isinstance(stages, dict):  # YAML mapping name -> fields
        stages = [{"name": k, **(v or {})} for k, v in stages.items()]
    if isinstance(evals, dict):
        evals = [{"name": k, **(v or {})} for k, v in evals.items()]
    cfg = _from_dict(PipelineConfig, d)
    cfg.stages = [_from_dict(StageConfig, s) for s in stages]
    cfg.evals = [_from_dict(EvalConfig, e) for e in evals]
    return cfg.validate()


def load_config(path: str | os.PathLike, **overrides: Any) -> PipelineConfig:
    import yaml

    p = Path(path)
    if not p.exists():
        raise PipelineError(f"pipeline recipe not found: {p}")
    d = yaml.safe_load(p.read_text()) or {}
    if not isinstance(d, dict):
        raise PipelineError(f"{p}: a pipeline recipe is a YAML mapping")
    d.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(d)


class _Lock:
    """An exclusive lock file (``O_EXCL``) holding the owner's pid: two processes working on one run
    folder never train or evaluate the same thing at once; a lock whose owner died is taken over."""

    def __init__(self, path: Path, poll: float = 20.0):
        self.path, self.poll = path, poll

    def __enter__(self) -> "_Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return self
            except FileExistsError:
                try:
                    pid = int(self.path.read_text() or "0")
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # the owner is gone
                    continue
                except PermissionError:
                    pass
                time.sleep(self.poll)

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the runner
class Pipeline:
    """Runs (or resumes) the steps of a :class:`PipelineConfig`; see the module docstring."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg.validate()
        self.root = Path(cfg.out)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "pipeline.json"
        self.state: dict[str, Any] = (json.loads(self.state_path.read_text())
                                      if self.state_path.exists() else {})
        self.state["config"] = asdict(cfg)
        self._corpus: str | None = None

    # --- bookkeeping
    def _save(self) -> None:
        if self.state_path.exists():  # another process may share the run folder: keep its records
            try:
                disk = json.loads(self.state_path.read_text())
            except ValueError:
                disk = {}
            for section in ("data", "stages", "evals"):
                merged = dict(disk.get(section) or {})
                merged.update(self.state.get(section) or {})
                self.state[section] = merged
        tmp = self.state_path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        os.replace(tmp, self.state_path)

    def _record(self, section: str, name: str, info: dict[str, Any]) -> None:
        self.state.setdefault(section, {})[name] = info
        self._save()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # --- data
    def corpus(self) -> str:
        if self._corpus is None:
            from masksearch.quickstart import _resolve_corpus

            self._corpus = _resolve_corpus(self.cfg.corpus)
        return self._corpus

    def retriever_spec(self) -> str:
        if self.cfg.retriever:
            return self.cfg.retriever
        index = self.path("data", "index", "bm25")
        marker = index.parent / "done.json"
        if not marker.exists():
            from masksearch.retrieval import build_index

            t0 = time.perf_counter()
            build_index(self.corpus(), kind="bm25", out=str(index))
            info = {"corpus": self.corpus(), "index": str(index), "seconds": round(time.perf_counter() - t0, 1)}
            marker.write_text(json.dumps(info))
            self._record("data", "index", info)
        return f"bm25:{index}"

    def split(self) -> dict[str, Any]:
        """The fixed evaluation split of the downstream pool and the training pool (cheap,
        deterministic: recomputed every run)."""
        from masksearch.data.benchmarks import split_pool

        info = split_pool(self.cfg.downstream_pool, self.cfg.eval_n, self.path("data", "split"),
                          salt=self.cfg.split_salt)
        self.state.setdefault("data", {})["split"] = info
        return info

    def eval_ids(self) -> set[str]:
        """Ids never to train on: the held-out split, plus every question of ``eval_dir``."""
        if getattr(self, "_eval_ids", None) is None:
            from masksearch.data.benchmarks import discover_eval_files, load_benchmark
            from masksearch.utils.jsonl import iter_jsonl

            ids = {str(r["id"]) for r in iter_jsonl(self.split()["heldout"])}
            if self.cfg.eval_dir:
                for f in discover_eval_files(self.cfg.eval_dir).values():
                    ids |= {str(ex.id) for ex in load_benchmark(f)}
            self._eval_ids = ids
        return self._eval_ids

    def ramp_trajectories(self) -> Path:
        out = self.path("data", "ramp-teacher")
        if not (out / "done.json").exists():
            from masksearch.data.ramp import generate_ramp
            from masksearch.training.export import run_cot

            t0 = time.perf_counter()
            ramp = self.path("data", "ramp", "ramp.jsonl")
            ramp.parent.mkdir(parents=True, exist_ok=True)
            gen = generate_ramp(self.corpus(), ramp, n=self.cfg.ramp_n, strategy="rules",
                                max_masks=self.cfg.ramp_max_masks, seed=self.cfg.seed, progress=False)
            summ = run_cot(ramp, out, teacher=self.cfg.ramp_teacher, retriever=self.retriever_spec(),
                           concurrency=4, k=self.cfg.k, info_max_tokens=self.cfg.info_max_tokens, progress=False)
            info = {"ramp": {k: v for k, v in gen.items() if not isinstance(v, list)},
                    "teacher": _teacher_summary(out, summ), "seconds": round(time.perf_counter() - t0, 1)}
            (out / "done.json").write_text(json.dumps(info, indent=2, default=str))
            self._record("data", "ramp", info)
        return out / "trajectories.jsonl"

    def downstream_trajectories(self) -> Path:
        out = self.path("data", "downstream-teacher")
        split = self.split()
        if not (out / "done.json").exists():
            info = build_downstream(split["train"], out, self.eval_ids(), teacher=self.cfg.downstream_teacher,
                                    retriever=self.retriever_spec(), k=self.cfg.k,
                                    info_max_tokens=self.cfg.info_max_tokens, limit=self.cfg.downstream_limit)
            (out / "done.json").write_text(json.dumps(info, indent=2, default=str))
            self._record("data", "downstream", info)
        return out / "trajectories.jsonl"

    # --- training stages
    def checkpoint(self, name: str) -> Path:
        return self.path("stages", name)

    def stage_done(self, name: str) -> bool:
        d = self.checkpoint(name)
        return (d / STAGE_REPORT).exists() and (d / "config.json").exists()

    def init_model(self, stage: StageConfig) -> tuple[str, str]:
        """``(spec, path)`` of the weights ``stage`` starts from (running its parent stage first)."""
        if stage.init == "base":
            from masksearch.training.grpo import resolve_model_path

            return self.cfg.model, resolve_model_path(self.cfg.model)
        self.run_stage(stage.init)
        p = self.checkpoint(stage.init)
        return f"hf:{p}", str(p)

    def run_stage(self, name: str) -> dict[str, Any]:
        self.cfg.stage(name)
        if self.stage_done(name):
            return self._run_stage(name)
        with _Lock(self.path("locks", f"stage-{name}.lock")):
            return self._run_stage(name)

    def _run_stage(self, name: str) -> dict[str, Any]:
        stage = self.cfg.stage(name)
        out = self.checkpoint(name)
        if self.stage_done(name):
            rep = json.loads((out / STAGE_REPORT).read_text())
            _log(f"stage {name}: done already ({rep.get('steps')} steps, {rep.get('seconds')} s; skipped)")
            return rep
        spec, init_path = self.init_model(stage)
        _log(f"stage {name}: {stage.kind} on {stage.data} data from {stage.init} ({init_path})")
        t0 = time.perf_counter()
        if stage.kind == "sft":
            rep = self._sft(stage, spec, out)
        else:
            rep = self._grpo(stage, init_path, out)
        report = {"name": name, "kind": stage.kind, "data": stage.data, "init": stage.init,
                  "init_checkpoint": init_path, "checkpoint": str(out), "steps": rep.get("steps"),
                  "seconds": round(time.perf_counter() - t0, 1), "config": asdict(stage), "report": rep}
        tmp = out / (STAGE_REPORT + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, out / STAGE_REPORT)
        self._record("stages", name, {k: v for k, v in report.items() if k != "report"})
        _log(f"stage {name}: finished, {report['steps']} steps in {report['seconds']} s")
        gc.collect()
        return report

    def _rows(self, data: str) -> list[dict[str, Any]]:
        from collections import Counter

        from masksearch.training.sft import load_rows, mix_and_order

        if data == "ramp":
            rows = load_rows([self.ramp_trajectories()], "ramp", "em", Counter())
            return mix_and_order(rows, [], curriculum="mask_count", seed=self.cfg.seed)
        return downstream_rows(self.downstream_trajectories(), self.eval_ids(), seed=self.cfg.seed)

    def _sft(self, stage: StageConfig, spec: str, out: Path) -> dict[str, Any]:
        return sft_stage(stage, spec, self._rows(stage.data), out, seed=self.cfg.seed)

    def _grpo(self, stage: StageConfig, init_path: str, out: Path) -> dict[str, Any]:
        from masksearch.data.benchmarks import check_no_eval_ids
        from masksearch.data.qa import load_qa
        from masksearch.training.grpo import parse_args, run_grpo

        if stage.data == "ramp":
            self.ramp_trajectories()
            train_file = str(self.path("data", "ramp", "ramp.jsonl"))
            curriculum = "staged"
        else:
            train_file = self.split()["train"]
            check_no_eval_ids([e.id for e in load_qa(train_file)], self.eval_ids(), "GRPO training questions")
            curriculum = "none"
        per_step = 2 * stage.num_generations  # 2 questions x num_generations rollouts a step
        argv = ["--model_name_or_path", init_path, "--train_file", train_file, "--retriever", self.retriever_spec(),
                "--output_dir", str(out), "--max_steps", str(stage.max_steps),
                "--learning_rate", str(stage.learning_rate), "--per_device_train_batch_size", str(per_step),
                "--num_generations", str(stage.num_generations), "--curriculum", curriculum,
                "--k", str(self.cfg.k), "--max_turns", str(self.cfg.max_turns),
                "--max_new_tokens", str(self.cfg.max_new_tokens), "--info_max_tokens", str(self.cfg.info_max_tokens),
                "--max_completion_length", str(stage.max_length), "--loss_type", "dapo", "--beta", "0.0",
                "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", str(self.cfg.seed),
                "--use_cpu", "true"]
        for k, v in stage.options.items():
            argv += [f"--{k}", str(v)]
        script, training_args, model_args = parse_args(argv)
        from masksearch.retrieval.cache import cache_stats

        before = cache_stats()  # the counters are per process: report this stage's share only
        rep = run_grpo(script, training_args, model_args)
        rep.pop("trainer", None)
        if script.search_cache:  # hit rate over this run's rollouts
            rep["search_cache"] = {}
            for path, now in cache_stats().items():
                was = before.get(path, {})
                d = {k: now.get(k, 0) - was.get(k, 0) for k in ("lookups", "hits", "misses")}
                if d["lookups"]:
                    d["hit_rate"] = round(d["hits"] / d["lookups"], 4)
                    rep["search_cache"][path] = d
        return rep

    # --- evaluation
    def eval_files(self) -> dict[str, str]:
        """Benchmark short name -> question file: ``eval_dir`` detected by prefix, else the
        held-out split for the downstream pool and the shared files for the others."""
        from masksearch.data.benchmarks import benchmark_name, benchmark_path, discover_eval_files

        if self.cfg.eval_dir:
            files = discover_eval_files(self.cfg.eval_dir)
        else:
            files = {}
            pool = benchmark_name(self.cfg.downstream_pool)
            for b in self.cfg.eval_benchmarks:
                files[b] = self.split()["heldout"] if b == pool else str(benchmark_path(b))
        return {b: files[b] for b in self.cfg.eval_benchmarks if b in files}

    def run_eval_row(self, name: str, benchmarks: Sequence[str] | None = None) -> dict[str, Any]:
        """Evaluate one row (resumable per question); ``benchmarks`` limits this pass to some
        columns (the row is marked done only after a pass over all of them)."""
        if (self.eval_out(name) / EVAL_DONE).exists():
            return self._run_eval_row(name, benchmarks)
        ev = next((e for e in self.cfg.evals if e.name == name), None)
        if ev is not None and ev.model != "base":
            self.run_stage(ev.model)  # outside the eval lock: a stage may wait on another process
        with _Lock(self.path("locks", f"eval-{name}.lock")):
            return self._run_eval_row(name, benchmarks)

    def _run_eval_row(self, name: str, benchmarks: Sequence[str] | None = None) -> dict[str, Any]:
        from masksearch.eval.runner import run_eval

        ev = next((e for e in self.cfg.evals if e.name == name), None)
        if ev is None:
            raise PipelineError(f"no eval named {name!r}")
        out = self.eval_out(name)
        if (out / EVAL_DONE).exists():
            _log(f"eval {name}: done already (skipped)")
            return json.loads((out / EVAL_DONE).read_text())
        if ev.model == "base":  # a plain path is loaded like a checkpoint
            model = self.cfg.model if (":" in self.cfg.model or self.cfg.model == "smollm2") else f"hf:{self.cfg.model}"
        else:
            self.run_stage(ev.model)
            model = f"hf:{self.checkpoint(ev.model)}"
        files = self.eval_files()
        partial = benchmarks is not None and set(files) - set(benchmarks)
        if benchmarks is not None:
            files = {b: f for b, f in files.items() if b in benchmarks}
        limits = self.eval_limits(files)
        _log(f"eval {name}: {ev.method} with {model} on "
             + ", ".join(f"{b} (<= {limits[b]} q)" for b in files))
        t0 = time.perf_counter()
        res: dict[str, Any] = {}
        for lim in sorted(set(limits.values())):  # results.json accumulates over the calls
            res = run_eval(ev.method, model, self.retriever_spec(), data=[f for b, f in files.items() if limits[b] == lim],
                           limit=lim, concurrency=self.cfg.concurrency, out_dir=str(out), k=self.cfg.k,
                           max_turns=self.cfg.max_turns, label=ev.label or name, max_new_tokens=self.cfg.max_new_tokens,
                           info_max_tokens=self.cfg.info_max_tokens, progress=False,
                           **({"force_answer": True} if out.parent.name == EVAL_FORCED else {}))
        failed = sum((b.get("failed") or 0) for b in res.get("benchmarks", {}).values())
        info = {"name": name, "method": ev.method, "model": model, "files": files, "out": str(out),
                "seconds": round(time.perf_counter() - t0, 1), "failed": failed}
        if not failed and not partial:  # a rerun retries failed questions
            (out / EVAL_DONE).write_text(json.dumps(info, indent=2))
        self._record("evals", f"{out.parent.name}/{name}" if out.parent.name != "eval" else name, info)
        gc.collect()
        return info

    def eval_out(self, name: str) -> Path:
        """The folder of an evaluated row: ``eval/<name>``, or ``eval-forced/<name>`` for an agent
        row under ``force_answer`` (a setting that changes a row's scores gets its own folder, so
        both evaluations of the same checkpoints stay side by side)."""
        ev = next((e for e in self.cfg.evals if e.name == name), None)
        return eval_folder(self.root, name, ev.method if ev is not None else None, self.cfg.force_answer)

    def eval_limits(self, files: dict[str, str]) -> dict[str, int]:
        """Questions per benchmark: ``eval_limit``, or ``eval_limit_in_domain`` for the downstream pool's."""
        from masksearch.data.benchmarks import benchmark_name

        in_domain = benchmark_name(self.cfg.downstream_pool)
        return {b: (self.cfg.eval_limit_in_domain or self.cfg.eval_limit) if b == in_domain else self.cfg.eval_limit
                for b in files}

    def run(self, only: Sequence[str] | None = None, skip_evals: bool = False) -> dict[str, Any]:
        """Every stage (or those in ``only``, with what they start from), then every eval."""
        t0 = time.perf_counter()
        names = list(only) if only else [s.name for s in self.cfg.stages]
        stage_names = {s.name for s in self.cfg.stages}
        eval_names = {e.name for e in self.cfg.evals}
        for n in names:
            if n not in stage_names | eval_names:
                raise PipelineError(f"nothing named {n!r} (stages: {sorted(stage_names)}, evals: {sorted(eval_names)})")
            if n in stage_names:
                self.run_stage(n)
            if only and n in eval_names:
                self.run_eval_row(n)
        if not only and not skip_evals:
            for e in self.cfg.evals:
                self.run_eval_row(e.name)
        self.state["last_run_seconds"] = round(time.perf_counter() - t0, 1)
        self._save()
        return self.state


def run_pipeline(cfg: PipelineConfig | str | os.PathLike, only: Sequence[str] | None = None,
                 skip_evals: bool = False, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) a pipeline recipe (a :class:`PipelineConfig` or a YAML path)."""
    if not isinstance(cfg, PipelineConfig):
        cfg = load_config(cfg, **overrides)
    return Pipeline(cfg).run(only=only, skip_evals=skip_evals)


def sft_stage(stage: StageConfig, init_spec: str, rows: list[dict[str, Any]], out: str | os.PathLike,
              seed: int = 0) -> dict[str, Any]:
    """One SFT stage through ``training.sft.run_sft``: ``rows`` (already ordered) on the weights of
    ``init_spec`` (``smollm2`` | ``hf:PATH`` | a path), checkpoint and report to ``out``."""
    from masksearch.training.sft import parse_sft_args, run_sft

    argv = ["--model", init_spec, "--output_dir", str(out), "--max_steps", str(stage.max_steps),
            "--per_device_train_batch_size", str(stage.batch_size), "--learning_rate", str(stage.learning_rate),
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--max_length", str(stage.max_length), "--seed", str(seed),
            "--lr_scheduler_type", "cosine", "--warmup_steps", str(min(2, stage.max_steps // 10)),
            "--curriculum", "mask_count" if stage.data == "ramp" else "none"]
    if stage.max_train_seconds:
        argv += ["--max_train_seconds", str(stage.max_train_seconds)]
    for k, v in stage.options.items():
        argv += [f"--{k}", str(v)]
    script_args, sft_config = parse_sft_args(argv)
    return run_sft(script_args, sft_config, rows=rows,
                   title=f"SFT loss: {stage.name} ({stage.data} data, from {stage.init})")


def downstream_rows(trajectories: str | os.PathLike, eval_ids: set[str], seed: int = 0) -> list[dict[str, Any]]:
    """Accepted downstream trajectories as SFT rows (shuffled); refuses any evaluation-split id."""
    from collections import Counter

    from masksearch.data.benchmarks import check_no_eval_ids
    from masksearch.training.sft import load_rows, mix_and_order

    rows = load_rows([trajectories], "qa", "em", Counter())
    check_no_eval_ids([r["id"] for r in rows], eval_ids, "downstream SFT data")
    return mix_and_order([], rows, curriculum="none", seed=seed)


# --------------------------------------------------------------------------- downstream data
def _teacher_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from masksearch.training.provenance import reject_reasons
    from masksearch.trajectory import read_trajectories

    trajs = list(read_trajectories(str(out / "trajectories.jsonl")))
    keep = ("teacher", "trajectories", "accepted", "rejected", "acceptance_rate", "rejected_by_reason",
            "mean_searches", "teachers", "seconds")
    return {**{k: summary.get(k) for k in keep}, "rejected_by_grounding_reason": reject_reasons(trajs)}


def build_downstream(train_file: str | os.PathLike, out_dir: str | os.PathLike, eval_ids: set[str], *,
                     teacher: str = "multihop-provenance", retriever: Any, k: int = 3, info_max_tokens: int = 256,
                     limit: int | None = None, concurrency: int = 4) -> dict[str, Any]:
    """Downstream SFT trajectories from a QA training pool, through the same export as RAMP
    (``run_cot``: ``trajectories.jsonl`` with the teacher on every row, ``sft.jsonl``,
    ``summary.json``).  Questions of the evaluation split (``eval_ids``) are filtered out before
    any teacher sees them, and the result is checked again (:class:`EvalLeakError` on a leak)."""
    from masksearch.data.benchmarks import check_no_eval_ids
    from masksearch.training.export import run_cot
    from masksearch.trajectory import read_trajectories
    from masksearch.utils.jsonl import ReadStats, iter_jsonl, write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = list(iter_jsonl(train_file, stats=ReadStats()))
    kept = [r for r in recs if str(r.get("id", "")) not in eval_ids]
    pool = out / "questions.jsonl"
    write_jsonl(pool, kept)
    t0 = time.perf_counter()
    summ = run_cot(pool, out, teacher=teacher, retriever=retriever, concurrency=concurrency, limit=limit,
                   k=k, info_max_tokens=info_max_tokens, progress=False)
    check_no_eval_ids([t.id for t in read_trajectories(str(out / "trajectories.jsonl"))], eval_ids,
                      "downstream trajectories")
    return {"input": str(train_file), "questions": len(kept), "filtered_eval_ids": len(recs) - len(kept),
            "teacher": _teacher_summary(out, summ), "seconds": round(time.perf_counter() - t0, 1)}
