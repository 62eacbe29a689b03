"""DAPO's dynamic sampling for GRPO rollouts.

A group whose ``num_generations`` rollouts all earn the same reward has zero advantage for every
completion, so it teaches nothing (TRL logs its share as ``frac_reward_zero_std``).  DAPO drops such
groups and samples fresh prompts until the batch is full of groups that carry a signal.  TRL's
``GRPOTrainer`` does not do this, so the rollout does it: after the batch's rollouts,

1. every group is scored with the trainer's own reward functions and weights;
2. each group whose rewards are all equal is *dropped*: its slot is offered to a group of a fresh
   prompt (one not in this batch and not drawn before, from the same mask-count stage when there
   is one), rolled out ``num_generations`` times and scored;
3. a fresh group with reward variance takes the slot; at most ``max_resample_rounds`` rounds, each
   rolling out only the slots still open, so the extra rollouts are bounded by
   ``max_resample_rounds * groups * num_generations``.  Slots still open after the last round keep
   their original group (the batch size never changes).

The returned batch is what TRL trains on; the rollout dict carries each row's own gold answers, so
TRL's reward pass (which reads them from the rollout's extra fields) scores a refilled group against
its own question.  How many groups were dropped, replaced and how many rollouts it cost are logged
with the step as ``dynamic_sampling/*`` (through ``StudentRollout.pop_metrics`` and ``Trainer.log``).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

# rollout keys that are not reward inputs (TRL passes the rest to reward functions as kwargs)
_TOKEN_KEYS = ("prompt_ids", "completion_ids", "logprobs", "env_mask")


def weighted_reward_fn(funcs: Sequence[Callable[..., list[float | None]]], weights: Sequence[float],
                       tokenizer: Any = None) -> Callable[[Sequence[Any], dict[str, list[Any]], Any], list[float]]:
    """``score(prompts, rollout_out, trainer) -> rewards``: the weighted sum of ``funcs``
    (:func:`~masksearch.training.rewards.combine_rewards`, what TRL computes from ``reward_weights``),
    called the way TRL calls reward functions: ``prompts``, the decoded ``completions``,
    ``completion_ids`` and every extra rollout field as keyword lists."""
    from masksearch.training.rewards import combine_rewards

    combined = combine_rewards(list(funcs), [float(w) for w in weights])

    def score(prompts: Sequence[Any], out: dict[str, list[Any]], trainer: Any = None) -> list[float]:
        tok = tokenizer if tokenizer is not None else getattr(trainer, "processing_class", None)
        ids = out["completion_ids"]
        completions = tok.batch_decode(ids, skip_special_tokens=True) if tok is not None else [""] * len(ids)
        extra = {k: v for k, v in out.items() if k not in _TOKEN_KEYS}
        if getattr(trainer, "state", None) is not None:
            extra["trainer_state"] = trainer.state
        return [float(r) for r in combined(list(prompts), completions, completion_ids=ids, **extra)]

    return score


def all_equal(values: Sequence[float], tol: float = 1e-6) -> bool:
    """Whether a group's rewards carry no signal (NaNs ignored; an all-NaN group counts as equal)."""
    vals = [v for v in values if not math.isnan(v)]
    return not vals or max(vals) - min(vals) <= tol


@dataclass
class DynamicSampling:
    """Drop all-equal-reward groups and refill them from fresh prompts (see the module docstring).

    ``score``: ``(prompts, rollout_out, trainer) -> rewards`` (:func:`weighted_reward_fn`).
    ``num_generations``: the group size (default: the trainer's ``args.num_generations``).
    """

    score: Callable[[Sequence[Any], dict[str, list[Any]], Any], list[float]]
    max_resample_rounds: int = 2
    num_generations: int | None = None
    tol: float = 1e-6
    seed: int = 0
    _drawn: set[str] = field(default_factory=set, repr=False)
    _rng: random.Random | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ fresh prompts
    def fresh_prompts(self, rollout: Any, n: int, exclude: set[str], mask_counts: set[Any]) -> list[str]:
        """Up to ``n`` questions from the rollout's registered examples that are neither in
        ``exclude`` nor drawn before; from the batch's mask-count stage(s) first."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        pool = [q for q in rollout.examples if q not in exclude and q not in self._drawn]
        if not pool:  # every question was drawn once: allow repeats, never one already in the batch
            self._drawn.clear()
            pool = [q for q in rollout.examples if q not in exclude]
        self._rng.shuffle(pool)
        same = [q for q in pool if rollout.examples[q].mask_count in mask_counts]
        rest = [q for q in pool if rollout.examples[q].mask_count not in mask_counts]
        picked = (same + rest)[:n]
        self._drawn.update(picked)
        return picked

    # ------------------------------------------------------------------ the refill
    def refill(self, rollout: Any, prompts: list[Any], out: dict[str, list[Any]],
               trainer: Any) -> tuple[dict[str, list[Any]], dict[str, int]]:
        """``(batch, stats)``: ``out`` with its all-equal groups replaced where a fresh group with
        reward variance was found within ``max_resample_rounds`` rounds."""
        from masksearch.training.rollout import prompt_text

        g = int(self.num_generations or getattr(getattr(trainer, "args", None), "num_generations", 0) or 0)
        n = len(prompts)
        if g < 2 or n % g or any(prompt_text(prompts[i]) != prompt_text(prompts[i - i % g]) for i in range(n)):
            log.warning("dynamic sampling skipped: the %d prompts are not whole groups of %d", n, g)
            return out, {}
        groups = n // g
        rewards = self.score(prompts, out, trainer)
        open_slots = [i for i in range(groups) if all_equal(rewards[i * g:(i + 1) * g], self.tol)]
        stats = {"groups": groups, "groups_all_equal": len(open_slots), "groups_dropped": 0,
                 "extra_rollouts": 0, "rounds": 0}
        batch = {k: list(v) for k, v in out.items()}
        in_batch = {prompt_text(p) for p in prompts}
        stages = {rollout.lookup(prompts[i * g]).mask_count for i in open_slots}
        for _ in range(max(0, int(self.max_resample_rounds))):
            if not open_slots:
                break
            fresh = self.fresh_prompts(rollout, len(open_slots), in_batch, stages)
            if not fresh:
                break
            in_batch.update(fresh)
            new_prompts = [q for q in fresh for _ in range(g)]
            new = rollout.rollout_once(new_prompts, trainer)
            new_rewards = self.score(new_prompts, new, trainer)
            stats["extra_rollouts"] += len(new_prompts)
            stats["rounds"] += 1
            for j in range(len(fresh)):
                if all_equal(new_rewards[j * g:(j + 1) * g], self.tol):
                    continue
                slot = open_slots.pop(0)
                for key, vals in batch.items():
                    if key in new and isinstance(vals, list) and len(vals) == n:
                        vals[slot * g:(slot + 1) * g] = new[key][j * g:(j + 1) * g]
                stats["groups_dropped"] += 1
        stats["groups_kept_all_equal"] = len(open_slots)
        return batch, stats
