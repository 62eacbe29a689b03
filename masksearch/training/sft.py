"""Supervised fine-tuning of the student on teacher trajectories, with TRL's ``SFTTrainer``.

Data: trajectory files (``trajectories.jsonl`` from ``masksearch cot`` or the provenance teacher,
or student runs from self-evolution) and/or SFT-row files (``sft.jsonl``: ``{"messages": [...]}``).
RAMP rows and downstream-QA rows are mixed (``qa_ratio``) and ordered easy to hard by mask count
(``curriculum="mask_count"``).  Rows go to ``SFTTrainer`` *pre-tokenised*: ``input_ids`` plus
``assistant_masks`` computed by :func:`masksearch.protocol.tokenize_messages` under the student's
ChatML template, so the loss is only on the student's own turns — never on the system prompt, the
question or ``<information>`` (SmolLM2's own template is refused by ``assistant_only_loss``).

The result is a plain checkpoint (LoRA merged by default) that ``make_chat_model("hf:PATH")``
loads, a ``loss.png`` and a ``masksearch_sft.json`` report naming the teachers whose data was used.

Command line: ``masksearch train sft --config configs/sft.yaml [--flag value ...]`` where flags are
:class:`~masksearch.training.config.SFTScriptArguments` fields or any ``trl.SFTConfig`` field.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from masksearch.errors import MaskSearchError
from masksearch.training.config import SFTScriptArguments

log = logging.getLogger(__name__)

REPORT_FILE = "masksearch_sft.json"
LOSS_PLOT = "loss.png"


# ----------------------------------------------------------------------------- model spec
def resolve_model_path(spec: str) -> str:
    """``smollm2`` (or empty) -> the materialised embedded checkpoint; ``hf:X`` -> ``X``; else the spec."""
    if spec in ("", "smollm2", "embedded", "default"):
        from masksearch.models.local import materialize_embedded

        return str(materialize_embedded())
    if spec.startswith("hf:"):
        return spec[3:]
    return spec


def load_student(spec: str):
    """(model, tokenizer) for training: float32, the student ChatML template on the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from masksearch.protocol import STUDENT_CHAT_TEMPLATE

    path = resolve_model_path(spec)
    if not os.path.exists(path):
        raise MaskSearchError(f"student model not found: {path!r} (use 'smollm2', 'hf:PATH' to a saved "
                              "checkpoint, or a local model folder; there is no model hub here)")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = STUDENT_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tok


# ----------------------------------------------------------------------------- rows
def _file_teacher(path: Path) -> str:
    """The teacher named in a ``summary.json`` beside an ``sft.jsonl`` (written by ``cot``)."""
    summ = path.parent / "summary.json"
    if summ.exists():
        try:
            return str(json.loads(summ.read_text()).get("teacher") or "unknown")
        except (OSError, ValueError):
            pass
    return "unknown"


def load_rows(paths: Iterable[str | os.PathLike], kind: str, accept: str = "em",
              stats: Counter | None = None) -> list[dict[str, Any]]:
    """Read SFT rows from trajectory and/or SFT-row JSONL files.

    A trajectory line becomes a row when its run was accepted (``metadata.accepted`` as written by
    ``cot``, else the ``accept`` filter); an SFT-row line (``messages``) is used as is.  Every row
    carries ``teacher`` (who made it), ``mask_count``, ``kind`` (``ramp``/``qa``) and ``id``.
    """
    from masksearch.training.export import AcceptFilter, trajectory_to_sft_row
    from masksearch.trajectory import Trajectory
    from masksearch.utils.jsonl import iter_jsonl

    stats = stats if stats is not None else Counter()
    filt = AcceptFilter.parse(accept)
    rows: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise MaskSearchError(f"training file not found: {p} (make one with `masksearch cot` or "
                                  "`masksearch distill`)")
        file_teacher = None
        for rec in iter_jsonl(p):
            if "messages" in rec:
                if file_teacher is None:
                    file_teacher = _file_teacher(p)
                rows.append({"id": str(rec.get("id", "")), "messages": rec["messages"], "kind": kind,
                             "teacher": rec.get("teacher") or file_teacher,
                             "mask_count": rec.get("mask_count")})
                stats["rows"] += 1
                continue
            try:
                traj = Trajectory.from_dict(rec)
            except (TypeError, ValueError, KeyError):
                stats["skipped_bad_record"] += 1
                continue
            accepted = traj.metadata.get("accepted")
            if accepted is None:
                accepted, why = filt.check(traj)
            else:
                why = traj.metadata.get("accept_reason", "rejected")
            if not accepted:
                stats[f"rejected:{why}"] += 1
                continue
            try:
                row = trajectory_to_sft_row(traj)
            except ValueError:
                stats["skipped_no_answer"] += 1
                continue
            teacher = traj.provenance.teacher or traj.provenance.graph or "unknown"
            rows.append({"id": traj.id, "messages": row["messages"], "kind": kind, "teacher": teacher,
                         "mask_count": traj.metadata.get("mask_count")})
            stats["rows"] += 1
    return rows


def mix_and_order(ramp_rows: list[dict], qa_rows: list[dict], *, qa_ratio: float | None = None,
                  curriculum: str = "mask_count", max_rows: int | None = None, seed: int = 0) -> list[dict]:
    """Mix RAMP and QA rows and order them.

    ``qa_ratio``: QA rows per RAMP row (sampled without replacement; None keeps all).
    ``curriculum="mask_count"``: ascending mask count, ties in a seeded random order; QA rows (no
    mask count) are spread evenly through the sequence.  ``"none"``: one seeded shuffle.
    """
    rng = random.Random(seed)
    qa = list(qa_rows)
    if qa_ratio is not None and ramp_rows:
        n = min(len(qa), int(round(qa_ratio * len(ramp_rows))))
        qa = rng.sample(qa, n)
    if curriculum not in ("mask_count", "none"):
        raise MaskSearchError(f"unknown curriculum {curriculum!r}: use 'mask_count' or 'none'")
    ramp = list(ramp_rows)
    rng.shuffle(ramp)
    rng.shuffle(qa)
    if curriculum == "mask_count":
        ramp.sort(key=lambda r: r.get("mask_count") or 1)  # stable: ties keep the shuffled order
        # spread QA rows evenly through the easy-to-hard RAMP sequence
        keyed = [((i + 0.5) / len(ramp), 0, r) for i, r in enumerate(ramp)]
        keyed += [((j + 0.5) / len(qa), 1, r) for j, r in enumerate(qa)]
        out = [r for _, _, r in sorted(keyed, key=lambda x: (x[0], x[1]))]
    else:
        out = ramp + qa
        rng.shuffle(out)
    if max_rows is not None:
        out = out[:max_rows] if curriculum == "none" else _subsample_keep_order(out, max_rows, rng)
    return out


def _subsample_keep_order(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    if n >= len(rows):
        return rows
    keep = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def tokenize_row(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """``input_ids`` + ``assistant_masks`` (1 exactly on the student's own tokens, including each
    turn's end-of-turn token; 0 on system prompt, question, ``<information>`` and role headers)."""
    from masksearch.protocol import tokenize_messages

    return tokenize_messages(tokenizer, messages)


def build_dataset(tokenizer: Any, rows: Sequence[dict[str, Any]]):
    """A ``datasets.Dataset`` of pre-tokenised rows, in the given order."""
    from datasets import Dataset

    toks = [tokenize_row(tokenizer, r["messages"]) for r in rows]
    return Dataset.from_dict({"input_ids": [t["input_ids"] for t in toks],
                              "assistant_masks": [t["assistant_masks"] for t in toks]})


def mean_loss(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int = 1024) -> float:
    """Mean assistant-token cross-entropy of ``model`` on ``rows`` (the SFT objective)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for r in rows:
            t = tokenize_row(tokenizer, r["messages"])
            ids = torch.tensor([t["input_ids"][:max_length]])
            labels = ids.clone()
            labels[0, torch.tensor(t["assistant_masks"][:max_length]) == 0] = -100
            out = model(input_ids=ids)
            logits = out.logits[0, :-1]
            tgt = labels[0, 1:]
            keep = tgt != -100
            if keep.any():
                ce = torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum")
                total += float(ce)
                count += int(keep.sum())
    return total / max(count, 1)


# ----------------------------------------------------------------------------- training
def TimeBudgetCallback(seconds: float):
    """A ``TrainerCallback`` that stops training (and logs) once ``seconds`` have passed."""
    from transformers import TrainerCallback

    class _TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.t0 >= seconds:
                control.should_training_stop = True
                control.should_log = True
            return control

    return _TimeBudget()


def _loss_history(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h["loss"])) for h in log_history if "loss" in h and "step" in h]


def peft_config_for(script_args: SFTScriptArguments, model_args: Any = None) -> Any:
    """The LoRA config from TRL's ``ModelConfig`` (``use_peft``, ``lora_r`` ...) via TRL's
    ``get_peft_config``; the old ``use_lora`` flag turns ``use_peft`` on (all linear layers when
    no ``ModelConfig`` names the targets).  None: train all weights."""
    from trl import ModelConfig
    from trl.trainer.utils import get_peft_config

    if model_args is None:
        if not script_args.use_lora:
            return None
        model_args = ModelConfig(use_peft=True, lora_target_modules=["all-linear"])
    elif script_args.use_lora and not model_args.use_peft:
        model_args.use_peft = True
    return get_peft_config(model_args)


def gather_rows(script_args: SFTScriptArguments, seed: int, stats: Counter) -> list[dict[str, Any]]:
    """RAMP and QA rows from the script's files, mixed and in curriculum order."""
    ramp = load_rows(script_args.ramp_files, "ramp", script_args.accept, stats)
    qa = load_rows(script_args.qa_files, "qa", script_args.accept, stats)
    return mix_and_order(ramp, qa, qa_ratio=script_args.qa_ratio, curriculum=script_args.curriculum,
                         max_rows=script_args.max_rows, seed=seed)


def prepare_config(script_args: SFTScriptArguments, sft_config: Any) -> Any:
    """``SFTConfig`` adjusted to our rows and the device (curriculum order, our assistant mask)."""
    from masksearch.training.config import _has_gpu, adapt_to_device

    if script_args.curriculum == "mask_count" and sft_config.train_sampling_strategy == "random":
        sft_config.train_sampling_strategy = "sequential"  # keep the curriculum order
    adapt_to_device(sft_config)
    if getattr(sft_config, "assistant_only_loss", False):
        sft_config.assistant_only_loss = False  # our rows carry the exact assistant mask already
    if script_args.padding_free_accumulation and not _has_gpu() and sft_config.per_device_train_batch_size > 1:
        # A CPU pays for every pad token (and TRL's padding_free needs varlen attention kernels a CPU
        # lacks); one row per micro-batch is padding-free, and the Trainer's token-count normalisation
        # over the accumulated micro-batches keeps the loss of the B-row batch.
        sft_config.gradient_accumulation_steps *= sft_config.per_device_train_batch_size
        sft_config.per_device_train_batch_size = 1
    return sft_config


def build_sft_trainer(script_args: SFTScriptArguments, sft_config: Any, rows: Sequence[dict[str, Any]],
                      model_args: Any = None, model: Any = None, tokenizer: Any = None) -> Any:
    """TRL's ``SFTTrainer`` over the pre-tokenised ``rows`` (``model``/``tokenizer`` override the spec)."""
    from trl import SFTTrainer

    if model is None or tokenizer is None:
        spec = getattr(model_args, "model_name_or_path", None) or script_args.model
        model, tokenizer = load_student(spec)
    dataset = build_dataset(tokenizer, rows)
    callbacks = [TimeBudgetCallback(script_args.max_train_seconds)] if script_args.max_train_seconds else None
    return SFTTrainer(model=model, args=sft_config, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config_for(script_args, model_args), callbacks=callbacks)


def _save(trainer: Any, out: Path, merge: bool) -> None:
    if not trainer.args.should_save:  # under `accelerate launch`, the main process writes
        return
    out.mkdir(parents=True, exist_ok=True)
    final = trainer.model
    if merge and hasattr(final, "merge_and_unload"):
        final = final.merge_and_unload()
    final.save_pretrained(str(out))
    trainer.processing_class.save_pretrained(str(out))


def _report(script_args: SFTScriptArguments, trainer: Any, result: Any, rows: Sequence[dict[str, Any]],
            stats: Counter, out: Path, title: str | None, seconds: float) -> dict[str, Any]:
    history = _loss_history(trainer.state.log_history)
    teachers = Counter(r.get("teacher", "unknown") for r in rows)
    plot_path = None
    if script_args.plot and history and trainer.args.should_save:
        from masksearch.training.plots import plot_loss

        plot_path = str(plot_loss(history, out / LOSS_PLOT,
                                  title=title or f"SFT loss ({', '.join(f'{k}: {v}' for k, v in teachers.items())})"))
    return {
        "output_dir": str(out),
        "model": script_args.model,
        "rows": len(rows),
        "rows_by_kind": dict(Counter(r.get("kind", "ramp") for r in rows)),
        "teachers": dict(teachers),
        "mask_counts": {str(k): v for k, v in sorted(Counter(r.get("mask_count") for r in rows).items(),
                                                      key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "read_stats": dict(stats),
        "curriculum": script_args.curriculum,
        "lora": hasattr(trainer.model, "merge_and_unload"),  # a peft model
        "steps": int(trainer.state.global_step),
        "world_size": int(trainer.args.world_size),  # processes under `accelerate launch`
        "train_loss": round(float(result.training_loss), 4),
        "loss_first": history[0][1] if history else None,
        "loss_last": history[-1][1] if history else None,
        "loss_history": history,
        "loss_plot": plot_path,
        "seconds": round(seconds, 1),
    }


def run_sft(script_args: SFTScriptArguments, sft_config: Any, rows: list[dict[str, Any]] | None = None,
            title: str | None = None, model_args: Any = None) -> dict[str, Any]:
    """Train the student; returns (and writes to ``<output_dir>/masksearch_sft.json``) a report.

    ``rows`` (optional) bypasses the file loading: already-mixed rows with ``messages``/``teacher``.
    ``model_args``: TRL's ``ModelConfig`` (LoRA options; ``parse_sft_args`` attaches the parsed one
    to ``script_args.model_config``).
    """
    from masksearch.training.speed import fast_lm_head

    t0 = time.perf_counter()
    stats: Counter = Counter()
    if rows is None:
        rows = gather_rows(script_args, sft_config.seed, stats)
    if not rows:
        raise MaskSearchError("no training rows: give --ramp_files/--qa_files with accepted trajectories "
                              f"(read: {dict(stats) or 'nothing'})")
    model_args = model_args if model_args is not None else getattr(script_args, "model_config", None)
    trainer = build_sft_trainer(script_args, prepare_config(script_args, sft_config), rows, model_args)
    with fast_lm_head(script_args.fast_lm_head):
        result = trainer.train()
    out = Path(sft_config.output_dir)
    _save(trainer, out, merge=script_args.merge_lora)
    report = _report(script_args, trainer, result, rows, stats, out, title, time.perf_counter() - t0)
    if trainer.args.should_save:
        with open(out / REPORT_FILE, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


def parse_sft_args(argv: Sequence[str] | None = None):
    """``(SFTScriptArguments, SFTConfig)`` from ``--config YAML`` and flags (TRL's ``TrlParser``).

    TRL's ``ModelConfig`` (LoRA: ``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``,
    ``lora_target_modules`` ...) is parsed too and attached as ``script_args.model_config``, which
    :func:`run_sft` reads."""
    from trl import ModelConfig, SFTConfig

    from masksearch.training.config import trl_parser

    parser = trl_parser((SFTScriptArguments, SFTConfig, ModelConfig))
    script_args, sft_config, model_args = parser.parse_args_and_config(args=list(argv or []))
    script_args.model_config = model_args
    return script_args, sft_config


def main(argv: Sequence[str] | None = None) -> int:
    script_args, sft_config = parse_sft_args(argv)
    report = run_sft(script_args, sft_config)
    if not sft_config.should_save:  # several processes: the main one reports
        return 0
    summary = {k: v for k, v in report.items() if k != "loss_history"}
    print(json.dumps(summary, indent=2))
    print(f"checkpoint: {report['output_dir']}  (load it with make_chat_model('hf:{report['output_dir']}'))")
    return 0
