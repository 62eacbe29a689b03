"""Training speed-ups that keep the loss the same (measured by ``benchmarks/bench_train.py``).

TRL 1.x computes the loss of ``SFTTrainer`` and ``GRPOTrainer`` through a *fused LM head*
(``trl.trainer.utils.add_fused_lm_head``): the vocabulary projection and log-softmax run in tiles,
without materialising the ``(batch, length, vocab)`` logits.  On CUDA/XPU it projects only the
positions whose label is not ``-100``; everywhere else (a CPU) it projects **every** position,
because on some accelerators a changing number of positions recompiles the kernel.  A CPU does
not recompile, and in our rows only ~15 % of the positions carry loss (the student's own turns:
system prompt, question and ``<information>`` carry none; in GRPO the prompt and the padding
carry none), so most of the head's work — the head is the largest matrix of a small model — is
thrown away.

:func:`fast_lm_head` makes the fused head project only the positions that carry loss on every
device.  The log-probabilities of those positions are computed by the same tiles, so the loss, the
gradients and the logged entropy/accuracy are the same (tested against the default path).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def fast_lm_head(enabled: bool = True) -> Iterator[bool]:
    """Within the block, TRL's fused LM head scores only label positions on any device.

    Yields whether the switch is active (False when disabled or when the installed TRL has no
    fused head to switch, in which case nothing changes).
    """
    if not enabled:
        yield False
        return
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # a TRL without the fused head's device switch: the default path
        log.warning("fast_lm_head: this TRL has no fused-LM-head device switch; training unchanged")
        yield False
        return
    trl_utils._use_triton = lambda device: True  # "compact": score label positions only
    try:
        yield True
    finally:
        trl_utils._use_triton = original
