"""Mask-count curriculum for GRPO: 1 -> 2 -> 3 -> 4 masks as training proceeds, or mixed.

TRL's ``GRPOTrainer`` draws prompts in dataset order when ``GRPOConfig.shuffle_dataset=False``, so
a curriculum is an *ordering* of the training examples: :func:`curriculum_order` returns the
examples the trainer will see, stage by stage (``"staged"``), as one shuffled mix (``"mixed"``),
or in file order (``"none"``).  Each stage gets an equal share of the training budget unless
``stage_fractions`` says otherwise; within a stage the examples are shuffled, and a stage with
too few examples is cycled.  :func:`stage_at` says which mask count a given step belongs to.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

SCHEDULES = ("staged", "mixed", "none")


def mask_count_of(example: Any) -> int:
    """The mask count of a QAExample, RAMP record or dataset row (1 when it has none)."""
    if isinstance(example, dict):
        mc = example.get("mask_count")
        if mc is None:
            mc = (example.get("metadata") or {}).get("mask_count")
    else:
        mc = getattr(example, "mask_count", None)
    try:
        return int(mc) if mc is not None else 1
    except (TypeError, ValueError):
        return 1


@dataclass
class CurriculumConfig:
    schedule: str = "staged"  # staged | mixed | none
    stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    stage_fractions: list[float] | None = None  # share of the budget per stage (default equal)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown curriculum schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.stage_fractions is not None and len(self.stage_fractions) != len(self.stages):
            raise ValueError("stage_fractions needs one entry per stage")


def _shares(n: int, fractions: Sequence[float]) -> list[int]:
    tot = sum(fractions)
    raw = [n * f / tot for f in fractions]
    out = [int(x) for x in raw]
    # hand out the rounding remainder to the largest fractional parts
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[: n - sum(out)]:
        out[i] += 1
    return out


def curriculum_order(examples: Sequence[T], cfg: CurriculumConfig, total: int | None = None) -> list[T]:
    """Order ``examples`` for training.

    ``total`` is how many prompts the run will draw (``max_steps x`` unique prompts per step);
    default: all examples once.  ``staged`` fills stage *i* (examples whose mask count is
    ``stages[i]``; the last stage also takes larger counts) with its share of ``total`` before
    stage *i+1*; stages with no example hand their share to the others.
    """
    rng = random.Random(cfg.seed)
    total = len(examples) if total is None else int(total)
    if cfg.schedule == "none":
        return list(examples)[:total] if total <= len(examples) else _cycle(list(examples), total, None)
    buckets: dict[int, list[T]] = defaultdict(list)
    stages = sorted(cfg.stages)
    for ex in examples:
        mc = mask_count_of(ex)
        if mc in stages:
            buckets[mc].append(ex)
        elif mc > stages[-1]:
            buckets[stages[-1]].append(ex)
    if cfg.schedule == "mixed":
        pool = [ex for s in stages for ex in buckets[s]]
        rng.shuffle(pool)
        return _cycle(pool, total, rng)
    fractions = list(cfg.stage_fractions) if cfg.stage_fractions else [1.0] * len(stages)
    pairs = [(s, f) for s, f in zip(stages, fractions) if buckets[s] and f > 0]
    if not pairs:
        return []
    out: list[T] = []
    for (s, _), n in zip(pairs, _shares(total, [f for _, f in pairs])):
        pool = list(buckets[s])
        rng.shuffle(pool)
        out.extend(_cycle(pool, n, rng))
    return out


def _cycle(pool: list[T], n: int, rng: random.Random | None) -> list[T]:
    if not pool:
        return []
    out: list[T] = []
    while len(out) < n:
        chunk = list(pool)
        if rng is not None and out:
            rng.shuffle(chunk)
        out.extend(chunk[: n - len(out)])
    return out


def stage_at(step: int, max_steps: int, cfg: CurriculumConfig) -> int:
    """The mask count a ``staged`` curriculum trains on at ``step`` (0-based) of ``max_steps``."""
    stages = sorted(cfg.stages)
    fractions = list(cfg.stage_fractions) if cfg.stage_fractions else [1.0] * len(stages)
    pos = (step + 0.5) / max(1, max_steps) * sum(fractions)
    acc = 0.0
    for s, f in zip(stages, fractions):
        acc += f
        if pos < acc:
            return s
    return stages[-1]
