"""GRPO with TRL where every rollout is the student graph with the real search tool.

The pieces live in their own modules and are re-exported here under their old names:

* :mod:`masksearch.training.rollout` — :func:`make_rollout_func` / :class:`StudentRollout`, TRL's
  ``rollout_func`` over the student graph (token ids, log-probs, ``env_mask``, reward fields), and
  :class:`VLLMTokenModel` for TRL's vLLM server;
* :mod:`masksearch.training.dynamic_sampling` — DAPO's dynamic sampling (``dynamic_sampling: true``);
* :mod:`masksearch.training.curves` — ``grpo_log.jsonl`` and ``grpo_curves.png``;
* :mod:`masksearch.training.grpo_args` — :class:`GRPOScriptArguments`, our options;
* :mod:`masksearch.training.speed` — the CPU speed-ups (``fast_lm_head``).

This module wires them: :func:`run_grpo` (dataset in curriculum order, rewards, rollouts, TRL's
``GRPOTrainer``), :class:`StudentGRPOTrainer` (logs the rollout's metrics through ``Trainer.log``)
and :func:`main`, ``masksearch train grpo --config configs/grpo.yaml [--flag value ...]``: TRL's
``TrlParser`` reads :class:`GRPOScriptArguments`, TRL's ``GRPOConfig`` and ``ModelConfig``, so every
TRL option (``loss_type``, ``beta``, ``num_generations``, ``use_vllm`` ...) works as is.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from masksearch.data.qa import QAExample, load_qa
from masksearch.errors import MaskSearchError
from masksearch.training.curriculum import CurriculumConfig, curriculum_order
from masksearch.training.curves import curves_callback, plot_curves
from masksearch.training.dynamic_sampling import DynamicSampling, weighted_reward_fn
from masksearch.training.grpo_args import GRPOScriptArguments
from masksearch.training.rewards import build_rewards
from masksearch.training.rollout import (
    RolloutRecord,
    RolloutSettings,
    StudentRollout,
    VLLMTokenModel,
    example_row,
    make_rollout_func,
    prompt_text,
    rollout_metrics,
    vllm_token_model_factory,
)
from masksearch.training.sft import resolve_model_path

__all__ = [
    "DynamicSampling", "GRPOScriptArguments", "RolloutRecord", "RolloutSettings", "StudentGRPOTrainer",
    "StudentRollout", "VLLMTokenModel", "build_dataset", "curves_callback", "example_row", "main",
    "make_rollout_func", "parse_args", "plot_curves", "prompt_text", "prompts_per_step", "resolve_model_path",
    "rollout_metrics", "rollouts_file", "run_grpo", "vllm_token_model_factory",
]

log = logging.getLogger(__name__)

_TRAJ_TOKEN_KEYS = ("prompt_ids", "completion_ids", "completion_mask", "completion_logprobs", "llm_calls")


def unpad_micro_batches(args: Any) -> Any:
    """Without a GPU: ``per_device_train_batch_size`` B -> 1, ``gradient_accumulation_steps`` and
    ``steps_per_generation`` x B.  The generation batch, the optimizer steps and the loss stay the
    same for the losses whose normaliser does not depend on the micro-batch (``dapo``: the generation
    batch's token count; ``grpo``: a mean of sequence means; ``dr_grpo``: a constant), so only those
    are converted; the forward/backward passes see no padding.  ``gradient_accumulation_steps`` stays
    a multiple of ``steps_per_generation x num_iterations``, so TRL needs no old-log-prob pass."""
    from masksearch.training.config import _has_gpu

    b = int(args.per_device_train_batch_size)
    if _has_gpu() or b <= 1 or args.loss_type not in ("dapo", "grpo", "dr_grpo"):
        return args
    args.per_device_train_batch_size = 1
    args.gradient_accumulation_steps = int(args.gradient_accumulation_steps) * b
    args.steps_per_generation = int(args.steps_per_generation or 1) * b  # generation_batch_size is unchanged
    return args


def prompts_per_step(args: Any) -> int:
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, getattr(args, "world_size", 1))
    return max(1, per_step // max(1, args.num_generations))


def build_dataset(examples: Sequence[QAExample], script: GRPOScriptArguments, args: Any) -> Any:
    """The training dataset in curriculum order (``shuffle_dataset`` is turned off for it)."""
    from datasets import Dataset

    if script.mask_counts:
        keep = set(script.mask_counts)
        examples = [e for e in examples if (e.mask_count or 1) in keep]
    if not examples:
        raise MaskSearchError(f"no training questions left in {script.train_file!r} after filtering "
                              f"(mask_counts={script.mask_counts}); check the file and the filter")
    total = None
    if args.max_steps and args.max_steps > 0:
        total = args.max_steps * prompts_per_step(args) * max(1, getattr(args, "num_iterations", 1))
        total = max(total, len(examples)) if script.curriculum == "none" else total
    cfg = CurriculumConfig(schedule=script.curriculum, stages=list(script.curriculum_stages), seed=args.seed)
    ordered = curriculum_order(list(examples), cfg, total=total)
    rows = [example_row(e) for e in ordered]
    if all(r["mask_count"] is None for r in rows):
        for r in rows:
            r.pop("mask_count")
    return Dataset.from_list(rows)



@functools.lru_cache(maxsize=None)
def student_grpo_trainer_class() -> type:
    """``GRPOTrainer`` that also logs what the rollout recorded (``rollout/*``, ``dynamic_sampling/*``),
    averaged since the last log line, through the public ``Trainer.log``."""
    from trl import GRPOTrainer

    class StudentGRPOTrainer(GRPOTrainer):
        share_prompt_prefix = False  # run_grpo turns it on (see masksearch.training.prefix_sharing)
        _tool_mask = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            self._tool_mask = inputs.get("tool_mask")  # the model's own tokens: the only ones the loss scores
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self._tool_mask = None

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,  # noqa: ANN001
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False, **kw):
            if (self.share_prompt_prefix and not compute_aux_loss and self.top_entropy_quantile >= 1.0
                    and all(v is None for v in kw.values())):
                from masksearch.training.prefix_sharing import shared_prompt_logps

                out = shared_prompt_logps(model, input_ids, attention_mask, logits_to_keep, tool_mask=self._tool_mask,
                                          compute_entropy=compute_entropy, autocast=self.accelerator.autocast)
                if out is not None:
                    return out[0], out[1], None
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kw)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            pop = getattr(self.rollout_func, "pop_metrics", None)
            if pop is not None:
                is_eval = any(k.startswith("eval_") for k in logs)
                extra = pop("eval" if is_eval else "train")
                logs = {**logs, **({f"eval_{k}": v for k, v in extra.items()} if is_eval else extra)}
            return super().log(logs, start_time)

    StudentGRPOTrainer.__qualname__ = StudentGRPOTrainer.__name__
    return StudentGRPOTrainer


def __getattr__(name: str) -> Any:  # the trainer class, built on first use (TRL imports lazily)
    if name == "StudentGRPOTrainer":
        return student_grpo_trainer_class()
    raise AttributeError(name)


# --------------------------------------------------------------------------- run_grpo, in steps


def _load_examples(script: GRPOScriptArguments, examples: Sequence[QAExample] | None) -> list[QAExample]:
    if examples is None:
        if not script.train_file or not os.path.exists(script.train_file):
            raise MaskSearchError(f"train_file {script.train_file!r} not found: pass --train_file PATH.jsonl "
                                  "(a RAMP file from `masksearch ramp` or a QA JSONL)")
        return load_qa(script.train_file, limit=script.limit)
    return list(examples)[: script.limit] if script.limit else list(examples)


def _load_retriever(script: GRPOScriptArguments, retriever: Any) -> Any:
    if retriever is not None:
        return retriever
    if not script.retriever:
        raise MaskSearchError("no retriever for rollouts: pass --retriever bm25:INDEX_DIR "
                              "(build one with `masksearch index`)")
    from masksearch.retrieval import make_retriever

    return make_retriever(script.retriever, search_cache=script.search_cache or None)


def _load_policy(model_args: Any, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """(model or its path, tokenizer with the student chat template and a pad token)."""
    from transformers import AutoTokenizer

    from masksearch.protocol import ensure_student_template

    if model is None:
        model = resolve_model_path(getattr(model_args, "model_name_or_path", None) or "smollm2")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model if isinstance(model, str) else model.name_or_path)
    ensure_student_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _reward_funcs(script: GRPOScriptArguments, training_args: Any,
                  extra_rewards: Sequence[tuple[Callable[..., list[float]], float]]):
    funcs, weights = build_rewards(script.reward_funcs, training_args.reward_weights, script.reward_options())
    for f, w in extra_rewards:
        funcs, weights = [*funcs, f], [*weights, float(w)]
    return funcs, weights


def _rollout_saver(path: Path) -> Callable[[list[Any]], None]:
    def save(trajs: list[Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            for t in trajs:
                d = t.to_dict()
                for key in _TRAJ_TOKEN_KEYS:
                    d.pop(key, None)
                f.write(json.dumps(d, ensure_ascii=False) + "\n")

    return save


def rollouts_file(args: Any) -> str:
    """Where this process saves its rollouts: ``rollouts.jsonl``; under ``accelerate launch`` with
    several processes each writes its own slice, ``rollouts.rank{N}.jsonl``."""
    world = int(getattr(args, "world_size", 1) or 1)
    return "rollouts.jsonl" if world <= 1 else f"rollouts.rank{int(args.process_index)}.jsonl"


def _make_rollout(script: GRPOScriptArguments, training_args: Any, retriever: Any, examples: Sequence[QAExample],
                  funcs: Sequence[Any], weights: Sequence[float], out_dir: Path,
                  rollouts_name: str = "rollouts.jsonl") -> StudentRollout:
    dynamic = None
    if script.dynamic_sampling:
        dynamic = DynamicSampling(score=weighted_reward_fn(funcs, weights), max_resample_rounds=script.max_resample_rounds,
                                  seed=training_args.seed)
    return make_rollout_func(
        retriever,
        RolloutSettings(k=script.k, max_turns=script.max_turns, max_new_tokens=script.max_new_tokens,
                        info_max_tokens=script.info_max_tokens),
        examples=examples,
        on_rollouts=_rollout_saver(out_dir / rollouts_name) if script.save_rollouts else None,
        chat_model_factory=vllm_token_model_factory if script.rollout_backend == "vllm" else None,
        dynamic_sampling=dynamic,
    )


def _summary(trainer: Any, curves: Any, rollout: StudentRollout, training_args: Any, out_dir: Path,
             train_s: float) -> dict[str, Any]:
    rewards = [r["reward"] for r in curves.rows if "reward" in r]
    rollouts = sum(h.rollouts for h in rollout.history)
    if int(getattr(training_args, "world_size", 1) or 1) > 1:  # every process's rollouts, not this one's
        from accelerate.utils import gather_object

        rollouts = sum(gather_object([rollouts]))
    return {
        "output_dir": str(out_dir),
        "log": str(curves.path),
        "plot": str(out_dir / "grpo_curves.png") if rewards else None,
        "steps": trainer.state.global_step,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "train_seconds": round(train_s, 2),
        "rollout_seconds": round(sum(h.seconds for h in rollout.history), 2),
        "rollouts": rollouts,
        "world_size": int(getattr(training_args, "world_size", 1) or 1),
        "loss_type": training_args.loss_type,
        "beta": training_args.beta,
        "trainer": trainer,  # for callers that want to keep going; dropped by main()
    }


def run_grpo(
    script: GRPOScriptArguments,
    training_args: Any,
    model_args: Any = None,
    *,
    retriever: Any = None,
    examples: Sequence[QAExample] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[Any] = (),
    extra_rewards: Sequence[tuple[Callable[..., list[float]], float]] = (),
) -> dict[str, Any]:
    """Train with GRPO; returns a summary (output dir, log, plot, first/last mean reward, timings).

    ``retriever``/``examples``/``model``/``tokenizer`` override what ``script``/``model_args``
    name (for notebooks and tests); ``extra_rewards`` adds ``(reward_func, weight)`` pairs.
    """
    from trl.trainer.utils import get_peft_config

    from masksearch.training.config import _has_gpu, adapt_to_device
    from masksearch.training.prefix_sharing import group_micro_batches
    from masksearch.training.speed import fast_lm_head

    adapt_to_device(training_args)
    share = script.share_prompt_prefix and not _has_gpu()
    if share:  # whole groups per micro-batch, scored row by row without padding (prefix_sharing)
        group_micro_batches(training_args)
    elif script.padding_free_accumulation:
        unpad_micro_batches(training_args)
    if script.rollout_backend not in ("policy", "vllm"):
        raise MaskSearchError(f"unknown rollout_backend {script.rollout_backend!r}: use policy or vllm")
    examples = _load_examples(script, examples)
    retriever = _load_retriever(script, retriever)
    model, tokenizer = _load_policy(model_args, model, tokenizer)
    if script.curriculum != "none":
        training_args.shuffle_dataset = False  # the curriculum is the order
    dataset = build_dataset(examples, script, training_args)
    funcs, weights = _reward_funcs(script, training_args, extra_rewards)
    training_args.reward_weights = weights
    out_dir = Path(training_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rollout = _make_rollout(script, training_args, retriever, examples, funcs, weights, out_dir,
                            rollouts_file(training_args))
    curves = curves_callback(str(out_dir))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = student_grpo_trainer_class()(
        model=model, reward_funcs=funcs, args=training_args, train_dataset=dataset, processing_class=tokenizer,
        rollout_func=rollout, peft_config=get_peft_config(model_args) if model_args is not None else None,
        callbacks=[curves, *callbacks],
    )
    trainer.share_prompt_prefix = share
    t0 = time.perf_counter()
    with fast_lm_head(script.fast_lm_head):
        trainer.train()
    train_s = time.perf_counter() - t0
    trainer.save_model(str(out_dir))  # writes on the main process only
    if training_args.should_save:
        tokenizer.save_pretrained(str(out_dir))
    return _summary(trainer, curves, rollout, training_args, out_dir, train_s)


def parse_args(argv: Sequence[str] | None) -> tuple[GRPOScriptArguments, Any, Any]:
    from trl import GRPOConfig, ModelConfig

    from masksearch.training.config import trl_parser

    parser = trl_parser((GRPOScriptArguments, GRPOConfig, ModelConfig))
    script, training_args, model_args = parser.parse_args_and_config(args=list(argv or []))
    return script, training_args, model_args


def main(argv: Sequence[str] | None = None) -> int:
    """``masksearch train grpo --config configs/grpo.yaml [--output_dir DIR --max_steps N ...]``."""
    script, training_args, model_args = parse_args(argv)
    summary = run_grpo(script, training_args, model_args)
    summary.pop("trainer", None)
    if training_args.should_save:  # one summary line under `accelerate launch`, from the main process
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main(sys.argv[1:]))
