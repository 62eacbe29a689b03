"""GRPO's optimisation with each group's prompt run once: the same loss for fewer FLOPs.

A GRPO generation batch holds ``num_generations`` completions of every prompt.  TRL's
``_get_per_token_logps_and_entropies`` runs ``prompt + completion`` through the model for every
row, so a group of 4 pays for its prompt 4 times (and, batched, for the padding to the longest row).
Here a micro-batch is scored **row by row without padding**, and the rows that share a prompt share
one forward pass of it:

1. the prompt minus its last token goes through the backbone once, with grad, and returns its keys
   and values;
2. each completion runs on a fresh cache holding those tensors (``[last prompt token] +
   completion``), so its first log-prob is conditioned exactly as in the full sequence;
3. the fused LM head (``fused_lm_head=True``) scores only the positions whose log-prob the loss
   uses: the model's own tokens.  Positions of ``<information>`` tokens (``tool_mask == 0``) and
   padding get log-prob 0 and entropy 0; TRL multiplies them by a zero mask.

The backward pass runs through the prompt once with the gradients of all its completions
accumulated, so loss and gradients equal TRL's path up to float rounding (tested in
``tests/test_prefix_sharing.py``; ``benchmarks/bench_train.py`` measures it).  Anything this does
not cover -- a PEFT or DDP-wrapped model, a multimodal batch, an MoE aux loss, an entropy quantile
mask, a cache that is not plain dynamic layers, a completion mask that is not a prefix of ones --
falls back to TRL's own path, unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["group_micro_batches", "shared_prompt_logps"]


def group_micro_batches(args: Any) -> Any:
    """Without a GPU: the whole generation batch as one micro-batch (``per_device_train_batch_size``
    x ``gradient_accumulation_steps`` completions, accumulation 1, ``steps_per_generation`` 1), so
    every group's completions meet their prompt in one call.  The optimizer steps and the loss stay
    the same for the losses whose normaliser does not depend on the micro-batch (``dapo``,
    ``grpo``, ``dr_grpo``: see :func:`masksearch.training.grpo.unpad_micro_batches`); TRL needs no
    old-log-prob pass (accumulation 1 is a multiple of ``steps_per_generation`` 1).  Returns
    ``args``; unchanged on a GPU, for other losses, or with ``num_iterations`` > 1."""
    from masksearch.training.config import _has_gpu

    if _has_gpu() or args.loss_type not in ("dapo", "grpo", "dr_grpo") or int(getattr(args, "num_iterations", 1)) != 1:
        return args
    spg = int(args.steps_per_generation or args.gradient_accumulation_steps)
    if spg != int(args.gradient_accumulation_steps):  # an off-policy layout the user chose: leave it
        return args
    args.per_device_train_batch_size = int(args.per_device_train_batch_size) * spg
    args.gradient_accumulation_steps = 1
    args.steps_per_generation = 1
    return args


def _row_span(mask_row: Any, left: bool) -> tuple[int, int] | None:
    """``(start, end)`` of the ones of a 0/1 mask row when they are one contiguous run flush right
    (``left``: a left-padded prompt) or flush left (a right-padded completion), else ``None``."""
    n = int(mask_row.sum())
    length = mask_row.numel()
    if n == 0:
        return None
    start, end = (length - n, length) if left else (0, n)
    if int(mask_row[start:end].sum()) != n:
        return None
    return start, end


def _backbone(model: Any) -> Any:
    """The decoder under the LM head of a plain causal LM; ``None`` for a PEFT or a wrapped model
    (DDP), whose ``base_model`` is not the backbone: those take TRL's path."""
    if hasattr(model, "peft_config") or hasattr(model, "module"):
        return None
    base = getattr(model, "base_model", None)
    return None if base is None or base is model else base


def shared_prompt_logps(model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, *,
                        tool_mask: Any = None, compute_entropy: bool = False,
                        autocast: Any = contextlib.nullcontext) -> tuple[Any, Any] | None:
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` positions of every row,
    shaped as TRL's ``_get_per_token_logps_and_entropies`` returns them, with each distinct prompt run
    once; ``None`` when this batch is not one the shared path covers (the caller then takes TRL's).

    ``input_ids``/``attention_mask``: ``[left-padded prompt | right-padded completion]`` rows;
    ``tool_mask``: 1 on the model's tokens, 0 on environment tokens (their log-probs are not scored).
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    backbone = _backbone(model)
    if backbone is None:
        return None
    c = int(logits_to_keep)
    b, total = input_ids.shape
    p = total - c
    if p < 1 or c < 1:
        return None
    spans = []
    for r in range(b):
        ps = _row_span(attention_mask[r, :p], left=True)
        cs = _row_span(attention_mask[r, p:], left=False)
        if ps is None or cs is None:
            return None
        spans.append((ps, cs))
    groups: dict[tuple[int, ...], list[int]] = {}
    for r, ((p0, p1), _) in enumerate(spans):
        groups.setdefault(tuple(input_ids[r, p0:p1].tolist()), []).append(r)
    logps: list[Any] = [None] * b
    ents: list[Any] = [None] * b
    for prompt, rows in groups.items():
        prompt_ids = torch.tensor([prompt], dtype=input_ids.dtype, device=input_ids.device)
        layers = None
        if prompt_ids.size(1) > 1:
            with autocast():
                out = backbone(input_ids=prompt_ids[:, :-1], use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if cache is None or not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
                return None
            layers = [(layer.keys, layer.values) for layer in cache.layers]
        for r in rows:
            n = spans[r][1][1]
            ids = torch.cat([prompt_ids[:, -1:], input_ids[r:r + 1, p:p + n]], dim=1)
            labels = ids.clone()
            if tool_mask is not None:  # environment tokens: no log-prob needed (the loss masks them)
                labels[0, 1:] = labels[0, 1:].masked_fill(tool_mask[r, :n] == 0, -100)
            kw = {"cache": DynamicCache(ddp_cache_data=layers)} if layers is not None else {}
            with autocast():
                out = model(input_ids=ids, labels=labels, fused_lm_head=True, **kw)
            pad = c - n
            logps[r] = torch.nn.functional.pad(out.log_probs[0], (0, pad))
            if compute_entropy:
                ents[r] = torch.nn.functional.pad(out.entropy[0], (0, pad))
    return torch.stack(logps), (torch.stack(ents) if compute_entropy else None)
