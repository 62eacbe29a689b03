"""Self-evolving distillation: teacher data -> train -> the trained student makes more data -> train.

``masksearch distill --rounds R --config configs/distill.yaml``:

* **round 0** – the configured teacher (``provenance``: no LLM; or a model spec for the teacher
  graph) solves ``teacher_questions`` RAMP questions (``masksearch cot``); accepted runs are the
  first dataset.
* **round r = 1..R** – train the student with SFT on the union of accepted data so far (from the
  base model, curriculum by mask count); measure its answer recall / EM / format on a held-out
  RAMP split; then (except after the last round) the trained student solves ``student_questions``
  *new* RAMP questions in the student graph, the runs are judged (string verdict against the masked
  spans + grounded: every span occurs in the retrieved ``<information>``) and the accepted ones are
  added to the dataset.

Every round writes ``round{r}/report.json`` (dataset size, the teachers whose data was used,
acceptance rate, held-out figures, loss); a rerun skips finished rounds and finished parts of a
round, so it resumes after a crash.  All trajectories come from a named teacher or student run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from masksearch.errors import MaskSearchError
from masksearch.training.config import DistillArguments, SFTScriptArguments

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- metrics / judge
def format_valid(traj: Any) -> bool:
    """Every turn followed the protocol and the run ended with a clean answer."""
    from masksearch.protocol import parse_action

    if traj.status != "answered" or traj.answer is None:
        return False
    if any((s.error or "").startswith("malformed") for s in traj.steps):
        return False
    return not parse_action(traj.final_raw).trailing if traj.final_raw else True


def student_metrics(trajs: Sequence[Any], examples: Sequence[Any]) -> dict[str, Any]:
    """Format-valid rate, mean searches, token recall and EM of student runs (one per example)."""
    from masksearch.eval.metrics import score

    n = len(trajs)
    if not n:
        return {"n": 0}
    by_id = {e.id: e for e in examples}
    scores = [score(t.answer, by_id.get(t.id, t)) for t in trajs]
    return {
        "n": n,
        "format_valid": round(sum(format_valid(t) for t in trajs) / n, 4),
        "answered": round(sum(t.status == "answered" for t in trajs) / n, 4),
        "mean_searches": round(sum(t.num_searches for t in trajs) / n, 3),
        "token_recall": round(sum(s["token_recall"] for s in scores) / n, 4),
        "em": round(sum(s["em"] for s in scores) / n, 4),
        "by_status": dict(Counter(t.status for t in trajs)),
    }


def judge_student_run(traj: Any, accept: Any = "em") -> tuple[bool, str]:
    """Attach verdicts (``string`` against the gold spans, ``grounded``: every gold span occurs in
    the retrieved information) and apply the accept filter; marks ``metadata.accepted``."""
    from masksearch.agents.judge import string_verdict
    from masksearch.training.export import AcceptFilter
    from masksearch.training.provenance import contains_span

    info = "\n".join(s.information or "" for s in traj.steps if not s.error)
    missing = [g for g in traj.golden_answers if not contains_span(info, g)]
    traj.verdicts["string"] = string_verdict(traj.answer, traj.golden_answers,
                                             traj.metadata.get("answer_match"), traj.metadata.get("mask_count"))
    traj.verdicts["grounded"] = {"ok": not missing, "missing": missing}
    ok, why = AcceptFilter.parse(accept).check(traj)
    traj.metadata.update(accepted=ok, accept_reason=why)
    return ok, why


def load_student_model(path: str, max_new_tokens: int = 128, **opts: Any):
    from masksearch.models.local import LocalChatModel

    spec = str(path) if str(path) == "smollm2" or str(path).startswith("hf:") else f"hf:{path}"
    return LocalChatModel.from_spec(spec, max_new_tokens=max_new_tokens, **opts)


def run_students(model: Any, examples: Sequence[Any], retriever: Any, args: DistillArguments, name: str,
                 round: int | None = None, progress: bool = True) -> list[Any]:
    from masksearch.graphs.student import StudentContext, run_student_batch

    ctx = StudentContext(model=model, retriever=retriever, k=args.k, max_turns=args.max_turns,
                         max_new_tokens=args.max_new_tokens, info_max_tokens=args.info_max_tokens,
                         name=name, round=round)
    return run_student_batch(list(examples), ctx, concurrency=args.concurrency, progress=progress)


# ----------------------------------------------------------------------------- data splits
def _write_jsonl(path: Path, recs: Sequence[dict[str, Any]]) -> None:
    from masksearch.utils.jsonl import write_jsonl

    write_jsonl(str(path), list(recs))


def prepare_splits(args: DistillArguments, workdir: Path, rounds: int) -> dict[str, Path]:
    """Deterministic disjoint RAMP splits: heldout, teacher (round 0), student_r for r = 1..R-1."""
    from masksearch.utils.jsonl import iter_jsonl

    splits = workdir / "splits"
    names = ["heldout", "teacher"] + [f"student{r}" for r in range(1, rounds)]
    paths = {n: splits / f"{n}.jsonl" for n in names}
    if all(p.exists() for p in paths.values()):
        return paths
    ramp = Path(args.ramp_file) if args.ramp_file else workdir / "ramp.jsonl"
    need = args.heldout_questions + args.teacher_questions + args.student_questions * max(0, rounds - 1)
    if not args.ramp_file:
        from masksearch.data.ramp import generate_ramp
        from masksearch.paths import shared_corpus

        corpus = args.corpus or (str(shared_corpus()) if shared_corpus() else "")
        if not corpus:
            raise MaskSearchError("distill needs RAMP questions: give --ramp_file or --corpus")
        generate_ramp(corpus, ramp, n=max(args.ramp_total, need), seed=args.split_seed, progress=False,
                      **_executor(args))
    if not ramp.exists():
        raise MaskSearchError(f"RAMP file not found: {ramp} (make one with `masksearch ramp`)")
    recs = list(iter_jsonl(ramp))
    random.Random(args.split_seed).shuffle(recs)
    if len(recs) < need:
        raise MaskSearchError(f"{ramp} has {len(recs)} RAMP questions; {need} needed "
                              "(heldout + teacher + student per round): lower the counts or generate more")
    splits.mkdir(parents=True, exist_ok=True)
    pos = 0
    for n in names:
        size = {"heldout": args.heldout_questions, "teacher": args.teacher_questions}.get(n, args.student_questions)
        _write_jsonl(paths[n], recs[pos:pos + size])
        pos += size
    return paths


# ----------------------------------------------------------------------------- the loop
def _sft_config_for(sft_config: Any, output_dir: Path) -> Any:
    cfg = dataclasses.replace(sft_config, output_dir=str(output_dir))
    return cfg


def _executor(args: Any) -> dict[str, Any]:
    """The recipe's ``executor`` / ``ray_address`` as keywords of the job functions."""
    from masksearch.utils.jobs import executor_options

    return executor_options(getattr(args, "executor", None), getattr(args, "ray_address", None))


def run_distill(args: DistillArguments, script_args: SFTScriptArguments, sft_config: Any,
                progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ``args.rounds`` rounds; returns the report (also ``WORKDIR/report.json``)."""
    from masksearch.data.qa import load_qa
    from masksearch.retrieval import make_retriever

    if not args.retriever:
        raise MaskSearchError("distill needs a retriever: --retriever bm25:INDEX_DIR (build one with `masksearch index`)")
    if args.rounds < 1:
        raise MaskSearchError("--rounds must be >= 1")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(args, workdir, args.rounds)
    retriever = make_retriever(args.retriever, k=args.k)
    heldout = load_qa(splits["heldout"])
    round0 = _teacher_round(args, script_args, workdir, splits["teacher"], progress)
    data_files: list[tuple[str, Path]] = [("teacher", workdir / "round0" / "teacher" / "trajectories.jsonl")]
    rounds = [round0]
    curves: dict[str, list] = {}
    for r in range(1, args.rounds + 1):
        rdir = workdir / f"round{r}"
        student_file = rdir / "student" / "trajectories.jsonl"
        if (rdir / "report.json").exists():  # a finished round: resume past it
            rep = json.loads((rdir / "report.json").read_text())
            rounds.append(rep)
            curves[f"round {r}"] = rep.get("sft", {}).get("loss_history", [])
            if student_file.exists():
                data_files.append((f"student-round{r}", student_file))
            continue
        rep = _student_round(r, rdir, args, script_args, sft_config, data_files, splits, heldout, retriever,
                             progress)
        curves[f"round {r}"] = rep["sft"].get("loss_history", [])
        rounds.append(rep)
    return _write_distill_report(workdir, round0, rounds, curves)


def _teacher_round(args: DistillArguments, script_args: SFTScriptArguments, workdir: Path, questions: Any,
                   progress: bool) -> dict[str, Any]:
    """Round 0: the configured teacher over its split (kept when already done); writes its report."""
    from masksearch.training.export import run_cot

    t0_dir = workdir / "round0" / "teacher"
    summary_path = t0_dir / "summary.json"
    if summary_path.exists() and (t0_dir / "trajectories.jsonl").exists():
        teacher_summary = json.loads(summary_path.read_text())
    else:
        teacher_summary = run_cot(questions, t0_dir, teacher=args.teacher, retriever=args.retriever,
                                  k=args.k, info_max_tokens=args.info_max_tokens, concurrency=args.concurrency,
                                  accept=script_args.accept, progress=progress, **_executor(args))
    round0 = {"round": 0, "teacher": teacher_summary.get("teacher", args.teacher),
              "questions": teacher_summary.get("trajectories"), "accepted": teacher_summary.get("accepted"),
              "acceptance_rate": teacher_summary.get("acceptance_rate"),
              "rejected_by_reason": teacher_summary.get("rejected_by_reason", {})}
    (workdir / "round0" / "report.json").write_text(json.dumps(round0, indent=2))
    return round0


def _student_round(r: int, rdir: Path, args: DistillArguments, script_args: SFTScriptArguments, sft_config: Any,
                   data_files: list[tuple[str, Path]], splits: dict[str, Any], heldout: Any, retriever: Any,
                   progress: bool) -> dict[str, Any]:
    """Round ``r``: train on the union of accepted data, measure held-out recall, and (but in the
    last round) let the student solve new questions, appending its file to ``data_files``.
    Writes and returns the round's report."""
    from masksearch.data.qa import load_qa
    from masksearch.trajectory import read_trajectories, write_trajectories

    rdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows = _round_rows(data_files, script_args, seed=sft_config.seed + r)
    model_dir = rdir / "model"
    sft_report = _round_sft(script_args, sft_config, model_dir, rows, r)
    model = load_student_model(str(model_dir), max_new_tokens=args.max_new_tokens)
    name = f"student-round{r}"
    held_file = rdir / "heldout_trajectories.jsonl"
    if held_file.exists():
        held = list(read_trajectories(str(held_file)))
    else:
        held = run_students(model, heldout, retriever, args, name, round=r, progress=progress)
        write_trajectories(str(held_file), held, append=False)
    held_metrics = student_metrics(held, heldout)
    student_file = rdir / "student" / "trajectories.jsonl"
    student_part: dict[str, Any] = {}
    if r < args.rounds:
        student_part = _self_evolution(model, load_qa(splits[f"student{r}"]), retriever, args, name, r,
                                       student_file, progress)
        data_files.append((name, student_file))
    del model
    rep = {
        "round": r,
        "dataset_size": len(rows),
        "trained_on_teachers": dict(Counter(row.get("teacher", "unknown") for row in rows)),
        "data_files": [str(f) for _, f in data_files if f != student_file],
        "sft": {k: v for k, v in sft_report.items() if k in ("steps", "train_loss", "loss_first", "loss_last",
                                                             "loss_plot", "seconds", "loss_history")},
        "checkpoint": str(model_dir),
        "heldout": held_metrics,
        "self_evolution": student_part,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (rdir / "report.json").write_text(json.dumps(rep, indent=2))
    return rep


def _round_rows(data_files: list[tuple[str, Path]], script_args: SFTScriptArguments, seed: int) -> list[dict]:
    """The accepted rows of every data file so far, mixed and ordered as SFT wants them."""
    from masksearch.training.sft import load_rows, mix_and_order

    stats: Counter = Counter()
    rows = []
    for _, f in data_files:
        rows += load_rows([f], "ramp", script_args.accept, stats)
    return mix_and_order(rows, [], curriculum=script_args.curriculum, max_rows=script_args.max_rows, seed=seed)


def _round_sft(script_args: SFTScriptArguments, sft_config: Any, model_dir: Path, rows: list[dict],
               r: int) -> dict[str, Any]:
    """SFT of round ``r`` into ``model_dir``, or its report when that model is already trained."""
    from masksearch.training.sft import run_sft

    if (model_dir / "masksearch_sft.json").exists():
        return json.loads((model_dir / "masksearch_sft.json").read_text())
    return run_sft(script_args, _sft_config_for(sft_config, model_dir), rows=rows,
                   title=f"round {r}: SFT loss on {len(rows)} rows")


def _self_evolution(model: Any, new_q: Any, retriever: Any, args: DistillArguments, name: str, r: int,
                    student_file: Path, progress: bool) -> dict[str, Any]:
    """The trained student solves new RAMP questions (kept when already done); each run is judged
    and the file joins the dataset.  Returns the round's ``self_evolution`` part."""
    from masksearch.trajectory import read_trajectories, write_trajectories

    if not student_file.exists():
        trajs = run_students(model, new_q, retriever, args, name, round=r, progress=progress)
        for t in trajs:
            judge_student_run(t, args.student_accept)  # marks metadata.accepted / accept_reason
        student_file.parent.mkdir(parents=True, exist_ok=True)
        write_trajectories(str(student_file), trajs, append=False)
    trajs = list(read_trajectories(str(student_file)))
    n_acc = sum(1 for t in trajs if t.metadata.get("accepted"))
    return {
        "student": name, "questions": len(trajs), "accepted": n_acc,
        "acceptance_rate": round(n_acc / len(trajs), 4) if trajs else 0.0,
        "rejected_by_reason": dict(Counter(t.metadata.get("accept_reason") for t in trajs
                                           if not t.metadata.get("accepted"))),
        "metrics": student_metrics(trajs, new_q),
    }


def _write_distill_report(workdir: Path, round0: dict[str, Any], rounds: list[dict[str, Any]],
                          curves: dict[str, list]) -> dict[str, Any]:
    """``WORKDIR/report.json`` (and the loss-per-round plot when any round has a curve)."""
    plot = None
    if any(curves.values()):
        from masksearch.training.plots import plot_rounds

        plot = str(plot_rounds(curves, workdir / "loss_rounds.png"))
    report = {"workdir": str(workdir), "teacher": round0["teacher"], "rounds": rounds, "loss_plot": plot}
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def summarize_report(report: dict[str, Any]) -> list[str]:
    """One line per round, naming whose data each student was trained on."""
    lines = []
    r0 = report["rounds"][0]
    lines.append(f"round 0: teacher {r0['teacher']!r} accepted {r0['accepted']}/{r0['questions']} "
                 f"(acceptance {r0['acceptance_rate']})")
    for rep in report["rounds"][1:]:
        h = rep["heldout"]
        se = rep.get("self_evolution") or {}
        line = (f"round {rep['round']}: trained on {rep['dataset_size']} rows from "
                f"{', '.join(f'{k} ({v})' for k, v in rep['trained_on_teachers'].items())}; held-out "
                f"recall {h.get('token_recall')} EM {h.get('em')} format {h.get('format_valid')}")
        if se:
            line += f"; {se['student']} accepted {se['accepted']}/{se['questions']} (acceptance {se['acceptance_rate']})"
        lines.append(line)
    return lines


def parse_distill_args(argv: Sequence[str] | None = None):
    """``(DistillArguments, SFTScriptArguments, SFTConfig)`` from ``--config YAML`` and flags."""
    from trl import SFTConfig

    from masksearch.training.config import trl_parser

    parser = trl_parser((DistillArguments, SFTScriptArguments, SFTConfig))
    return parser.parse_args_and_config(args=list(argv or []))


def main(argv: Sequence[str] | None = None) -> int:
    args, script_args, sft_config = parse_distill_args(argv)
    report = run_distill(args, script_args, sft_config)
    for line in summarize_report(report):
        print(line)
    print(json.dumps({"workdir": report["workdir"], "teacher": report["teacher"], "loss_plot": report["loss_plot"],
                      "rounds": [{k: v for k, v in r.items() if k not in ("sft",)} for r in report["rounds"]]}))
    return 0
