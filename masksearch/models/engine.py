"""Continuous batching for :class:`~masksearch.models.local.LocalChatModel`.

The ``generate`` engine (``engine="generate"``) runs each batch of concurrent requests as one
``model.generate`` call: a row that stops early idles until the longest row ends, and a request
that arrives one step late waits for the whole batch.  For agents that is most of the time: a
search turn stops at ``</search>`` after 20 tokens while its neighbour writes 90, and the next
turn of every conversation arrives a few milliseconds after its search returns.

This engine (``engine="continuous"``, the default) owns the decode loop instead:

* every step runs one forward pass over the *running* rows (one new token each) on a shared KV
  cache; a row that ends (EOS, a stop string, its ``max_new_tokens``) is answered at once, so its
  caller can search and come back while the others keep decoding;
* waiting requests are prefilled together (left-padded, logits for the last position only) and
  merged into the running batch between steps; the two caches are aligned on the right, the
  attention mask hides the padding, and every row gets explicit position ids, so a row computes
  exactly what it would alone;
* finished rows leave the batch when it is compacted (before a merge, or when a quarter of the
  rows have ended), and padding columns no row needs any more are cropped then;
* the KV cache grows in place (amortised), instead of the ``torch.cat`` per step of
  transformers' ``DynamicLayer``.

Token choice and log-probs are the same as the generate engine's: ``log_softmax(logits / T)``
(``T = 1`` when greedy), argmax or a top-p sample, the chosen token's log-prob recorded.
Requests with different temperatures, ``top_p`` or stop strings share a batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from masksearch.models.local import LocalChatModel, _Request

log = logging.getLogger(__name__)


def _grow_layer_class():
    """A ``DynamicLayer`` whose keys/values live in a buffer with spare room (built lazily so that
    importing this module does not import torch/transformers)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowLayer(DynamicLayer):
        _kb: Any = None
        _vb: Any = None

        def set_states(self, keys, values, room: int = 64) -> None:
            b, h, n, d = keys.shape
            self._kb = keys.new_zeros((b, h, n + room, d))
            self._vb = values.new_zeros((b, h, n + room, d))
            self._kb[:, :, :n] = keys
            self._vb[:, :, :n] = values
            self.dtype, self.device = keys.dtype, keys.device
            self.keys, self.values = self._kb[:, :, :n], self._vb[:, :, :n]
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if not self.is_initialized or self._kb is None:
                self.set_states(key_states, value_states, room=64)
                return self.keys, self.values
            n = self.keys.shape[-2]
            if n + m > self._kb.shape[-2]:
                self.set_states(self.keys, self.values, room=max(64, (n + m) // 2))
            self._kb[:, :, n:n + m] = key_states
            self._vb[:, :, n:n + m] = value_states
            self.keys, self.values = self._kb[:, :, :n + m], self._vb[:, :, :n + m]
            return self.keys, self.values

    return GrowLayer


_GROW = None


def _new_cache():
    global _GROW
    from transformers.cache_utils import Cache

    if _GROW is None:
        _GROW = _grow_layer_class()
    return Cache(layer_class_to_replicate=_GROW)


class _Row:
    __slots__ = ("req", "pos", "out", "lps", "reason", "gen", "window", "enqueued")

    def __init__(self, req: "_Request", pos: int, gen: Any, enqueued: float) -> None:
        self.req = req
        self.pos = pos  # position id of the next token fed
        self.out: list[int] = []
        self.lps: list[float] = []
        self.reason: Optional[str] = None
        self.gen = gen  # a torch.Generator for sampled rows with a seed, else None
        self.window = max((len(s) for s in req.stop), default=0) * 2 + 8
        self.enqueued = enqueued


class ContinuousBatcher:
    """The serving loop of ``engine="continuous"``: same ``submit`` interface as the generate
    engine's batcher, one worker thread, any number of threads/event loops submitting."""

    def __init__(self, owner: "LocalChatModel") -> None:
        self.owner = owner
        self.q: "queue.Queue[_Request]" = queue.Queue()
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None
        self.idle_exit_s = 10.0
        # statistics (for tests and benchmarks)
        self.batches_run = 0  # prefill (admission) passes
        self.batch_sizes: list[int] = []  # rows admitted per pass
        self.steps = 0  # decode steps
        self.row_steps = 0  # rows computed over all decode steps (finished rows kept as holes count)
        self.useful_row_steps = 0
        self.max_running = 0
        self._logits_to_keep = True

    # -- public --------------------------------------------------------------------------------

    def submit(self, req: "_Request") -> concurrent.futures.Future:
        with self.lock:
            self.q.put(req)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="masksearch-engine", daemon=True)
                self.thread.start()
        return req.future

    def stats(self) -> dict[str, Any]:
        return {"engine": "continuous", "batches": self.batches_run, "sizes": list(self.batch_sizes),
                "steps": self.steps, "row_steps": self.row_steps, "useful_row_steps": self.useful_row_steps,
                "max_running": self.max_running}

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        torch_state = {"cache": None, "mask": None}
        rows: list[_Row] = []
        waiting: collections.deque = collections.deque()
        wait_since: Optional[float] = None
        cap = max(1, int(self.owner.max_batch_size))
        while True:
            # 1. take what has arrived
            if not rows and not waiting:
                try:
                    first = self.q.get(timeout=self.idle_exit_s)
                except queue.Empty:
                    with self.lock:
                        if self.q.empty():
                            self.thread = None
                            return
                    continue
                waiting.extend(self._collect(first))
                wait_since = time.monotonic()
            while True:
                try:
                    waiting.append(self.q.get_nowait())
                except queue.Empty:
                    break
                if wait_since is None:
                    wait_since = time.monotonic()
            # 2. admit (prefill + merge) when the batch is empty, when enough are waiting, or when
            #    the oldest has waited long enough: a merge copies the cache, so not every step
            live = [r for r in rows if r.reason is None]
            room = cap - len(live)
            if waiting and room > 0:
                waited = time.monotonic() - (wait_since or time.monotonic())
                patience = max(self.owner.batch_wait_ms / 1000.0, 0.05)
                if not live or len(waiting) >= max(1, len(live) // 4) or waited >= patience:
                    new = []
                    while waiting and len(new) < room:
                        r = waiting.popleft()
                        if r.future.set_running_or_notify_cancel():
                            new.append(r)
                    wait_since = time.monotonic() if waiting else None
                    if new:
                        try:
                            rows = self._admit(torch_state, rows, new)
                        except BaseException as e:  # noqa: BLE001 - delivered to every caller
                            log.exception("prefill failed")
                            for r in new:
                                if not r.future.done():
                                    r.future.set_exception(e)
                            continue
            live = [r for r in rows if r.reason is None]
            if not live:
                rows, torch_state["cache"], torch_state["mask"] = [], None, None
                continue
            # 3. one decode step for the running rows
            try:
                self._step(torch_state, rows)
            except BaseException as e:  # noqa: BLE001
                log.exception("decode step failed")
                for r in rows:
                    if r.reason is None and not r.req.future.done():
                        r.req.future.set_exception(e)
                rows, torch_state["cache"], torch_state["mask"] = [], None, None
                continue
            holes = sum(1 for r in rows if r.reason is not None)
            if holes and holes * 4 >= len(rows):
                rows = self._compact(torch_state, rows)

    def _collect(self, first: "_Request") -> list["_Request"]:
        """After an idle spell, wait ``batch_wait_ms`` for company (as the generate engine does)."""
        batch = [first]
        wait = max(self.owner.batch_wait_ms, 0) / 1000.0
        cap = max(1, int(self.owner.max_batch_size))
        deadline = time.monotonic() + max(wait * 20, 0.05)
        while len(batch) < cap:
            timeout = min(wait, max(deadline - time.monotonic(), 0.0))
            try:
                batch.append(self.q.get(timeout=timeout) if timeout > 0 else self.q.get_nowait())
            except queue.Empty:
                break
        return batch

    # -- model calls ---------------------------------------------------------------------------

    def _forward(self, **kw):
        import torch

        from masksearch.models.local import _model_lock

        model = self.owner.model
        with _model_lock(model):
            was_training = bool(getattr(model, "training", False))
            try:
                model.eval()
                with torch.inference_mode():
                    if self._logits_to_keep:
                        try:
                            return model(**kw, use_cache=True, logits_to_keep=1).logits[:, -1, :]
                        except TypeError:
                            self._logits_to_keep = False
                    return model(**kw, use_cache=True).logits[:, -1, :]
            finally:
                if was_training:
                    model.train()

    def _device(self):
        model = self.owner.model
        return getattr(model, "device", None) or next(model.parameters()).device

    def _admit(self, st: dict, rows: list[_Row], new: list["_Request"]) -> list[_Row]:
        import torch

        device = self._device()
        pad = self.owner._pad_id()
        width = max(len(r.prompt_ids) for r in new)
        ids = torch.full((len(new), width), pad, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache()
        logits = self._forward(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=pos.to(device), past_key_values=cache)
        self.batches_run += 1
        self.batch_sizes.append(len(new))
        now = time.monotonic()
        new_rows = []
        for r in new:
            gen = None
            if r.temperature > 0 and r.seed is not None:
                gen = torch.Generator(device="cpu")
                gen.manual_seed(int(r.seed))
            new_rows.append(_Row(r, len(r.prompt_ids), gen, now))
        self._choose(new_rows, logits)  # the first new token of each admitted row
        rows = self._compact(st, rows)  # drop finished rows before the merge copies the cache
        mask = mask.to(device)
        if st["cache"] is None:
            st["cache"], st["mask"] = cache, mask
            merged = new_rows
        else:
            old_cache, old_mask = st["cache"], st["mask"]
            L = max(old_mask.shape[1], width)

            def left_pad(t, n, dim):
                if n == 0:
                    return t
                shape = list(t.shape)
                shape[dim] = n
                return torch.cat([t.new_zeros(shape), t], dim=dim)

            for lo, ln in zip(old_cache.layers, cache.layers):
                keys = torch.cat([left_pad(lo.keys, L - lo.keys.shape[-2], 2),
                                  left_pad(ln.keys, L - ln.keys.shape[-2], 2)], dim=0)
                values = torch.cat([left_pad(lo.values, L - lo.values.shape[-2], 2),
                                    left_pad(ln.values, L - ln.values.shape[-2], 2)], dim=0)
                lo.set_states(keys, values, room=self._room(rows + new_rows))
            st["mask"] = torch.cat([left_pad(old_mask, L - old_mask.shape[1], 1),
                                    left_pad(mask, L - width, 1)], dim=0)
            merged = rows + new_rows
        self.max_running = max(self.max_running, sum(1 for r in merged if r.reason is None))
        return merged

    @staticmethod
    def _room(rows: list[_Row]) -> int:
        left = [r.req.max_new_tokens - len(r.out) for r in rows if r.reason is None]
        return max(16, min(max(left, default=16), 512))

    def _compact(self, st: dict, rows: list[_Row]) -> list[_Row]:
        """Drop finished rows from the cache and crop padding columns no live row needs."""
        import torch

        keep = [i for i, r in enumerate(rows) if r.reason is None]
        if len(keep) == len(rows) or st["cache"] is None:
            return rows
        if not keep:
            st["cache"], st["mask"] = None, None
            return []
        mask = st["mask"][keep]
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
        kept = [rows[i] for i in keep]
        for layer in st["cache"].layers:
            layer.set_states(layer.keys.index_select(0, idx)[:, :, start:],
                             layer.values.index_select(0, idx)[:, :, start:], room=self._room(kept))
        st["mask"] = mask[:, start:]
        return kept

    def _step(self, st: dict, rows: list[_Row]) -> None:
        import torch

        device = self._device()
        last = torch.tensor([[r.out[-1] if r.out else 0] for r in rows], dtype=torch.long, device=device)
        pos = torch.tensor([[r.pos] for r in rows], dtype=torch.long, device=device)
        mask = torch.cat([st["mask"], torch.ones((len(rows), 1), dtype=st["mask"].dtype, device=device)], dim=1)
        logits = self._forward(input_ids=last, attention_mask=mask, position_ids=pos, past_key_values=st["cache"])
        st["mask"] = mask
        self.steps += 1
        self.row_steps += len(rows)
        self.useful_row_steps += sum(1 for r in rows if r.reason is None)
        for r in rows:
            r.pos += 1
        self._choose(rows, logits)

    # -- token choice, stops, results -----------------------------------------------------------

    def _choose(self, rows: list[_Row], logits: Any) -> None:
        import torch

        live = [i for i, r in enumerate(rows) if r.reason is None]
        if not live:
            return
        idx = torch.tensor(live, dtype=torch.long, device=logits.device)
        lg = logits.index_select(0, idx).float()
        temps = torch.tensor([[r.req.temperature if r.req.temperature > 0 else 1.0] for r in (rows[i] for i in live)],
                             dtype=lg.dtype, device=lg.device)
        logp = torch.log_softmax(lg / temps, dim=-1)
        chosen = torch.argmax(lg, dim=-1).cpu()
        for j, i in enumerate(live):
            req = rows[i].req
            if req.temperature <= 0:
                continue
            probs = logp[j].exp()
            if req.top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                drop = (sp.cumsum(-1) - sp) > req.top_p
                probs = torch.zeros_like(probs).scatter(-1, si, sp.masked_fill(drop, 0.0))
            gen = rows[i].gen or self._shared_generator()
            chosen[j] = int(torch.multinomial(probs.cpu(), 1, generator=gen))
        picked = logp.gather(-1, chosen.to(logp.device)[:, None]).squeeze(-1).cpu().tolist()
        chosen_l = chosen.tolist()
        for j, i in enumerate(live):
            row = rows[i]
            row.out.append(int(chosen_l[j]))
            row.lps.append(float(picked[j]))
            self._check_end(row)

    _gen = None

    def _shared_generator(self):
        import torch

        if self._gen is None:
            self._gen = torch.Generator(device="cpu")
            self._gen.manual_seed(torch.seed())
        return self._gen

    def _check_end(self, row: _Row) -> None:
        owner = self.owner
        tok = owner.tokenizer
        if row.out[-1] in owner._eos_set():
            reason = "eos"
        elif row.req.stop and any(s in tok.decode(row.out[-row.window:], skip_special_tokens=True)
                                  for s in row.req.stop):
            reason = "stop"
        elif len(row.out) >= row.req.max_new_tokens:
            reason = "length"
        else:
            return
        row.reason = reason
        try:
            g = owner._make_generation(row.req, row.out, row.lps, reason)
        except BaseException as e:  # noqa: BLE001
            row.req.future.set_exception(e)
            return
        row.req.future.set_result(g)
