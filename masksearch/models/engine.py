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
  transformers' ``DynamicLayer``;
* a *prefix cache* keeps the keys/values of finished rows (``prefix_cache_mb``, least recently
  used out first).  A new request that starts with tokens already computed — the next turn of the
  same conversation (its prompt is the last prompt + the reply + the ``<information>`` block), or
  just the shared system prompt — prefills only the rest.  Entries are dropped when the model's
  weights change (a parameter's version counter moves, as after an optimiser step), so a policy
  being trained never reuses stale keys.

Token choice and log-probs are the same as the generate engine's: ``log_softmax(logits / T)``
(``T = 1`` when greedy), argmax or a top-p sample, the chosen token's log-prob recorded.
Requests with different temperatures, ``top_p`` or stop strings share a batch.
"""

from __future__ import annotations

import collections
import logging
import queue
import time
from typing import Any, Optional

from masksearch.models.batching import BatchWorker, Request, hit_stop, model_lock, sample_tokens, stop_window

log = logging.getLogger(__name__)


def _grow_layer_class():
    """A ``DynamicLayer`` whose keys/values live in a buffer with spare room (built lazily so that
    importing this module does not import torch/transformers)."""
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


def _grow_class():
    """The one ``GrowLayer`` class (built on first use)."""
    global _GROW
    if _GROW is None:
        _GROW = _grow_layer_class()
    return _GROW


def _new_cache():
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=_grow_class())


class _PrefixStore:
    """Keys/values of token sequences computed before, looked up by longest common prefix."""

    MIN_REUSE = 16  # shorter matches are not worth the copy

    def __init__(self, budget_bytes: float) -> None:
        self.budget = float(budget_bytes)
        self.entries: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
        self.bytes = 0
        self.version: Any = None
        self._next = 0
        self.hits = 0
        self.lookups = 0
        self.reused_tokens = 0

    def check_version(self, version: Any) -> None:
        if version != self.version:
            self.entries.clear()
            self.bytes = 0
            self.version = version

    @staticmethod
    def _lcp(a, b) -> int:
        m = min(a.shape[0], b.shape[0])
        if m == 0:
            return 0
        diff = (a[:m] != b[:m]).nonzero()
        return int(diff[0]) if diff.numel() else m

    def lookup(self, ids) -> tuple[Optional[int], int]:
        """(entry key, usable length) of the entry sharing the longest prefix with ``ids``; at
        least one token is always left to compute."""
        self.lookups += 1
        best, best_n = None, 0
        for key, (eids, _, _) in self.entries.items():
            n = self._lcp(eids, ids)
            if n > best_n:
                best, best_n = key, n
        best_n = min(best_n, ids.shape[0] - 1)
        if best is None or best_n < self.MIN_REUSE:
            return None, 0
        self.entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_n
        return best, best_n

    def get(self, key: int) -> tuple:
        return self.entries[key]

    def add(self, ids, keys, values) -> None:
        """``keys``/``values``: ``[layers, heads, n, dim]`` for the ``n`` tokens of ``ids``."""
        size = keys.element_size() * keys.numel() * 2
        if size > self.budget:
            return
        for k in [k for k, (e, _, _) in self.entries.items()
                  if e.shape[0] <= ids.shape[0] and self._lcp(e, ids) == e.shape[0]]:
            self._drop(k)  # superseded: the new entry extends it
        self.entries[self._next] = (ids, keys, values)
        self._next += 1
        self.bytes += size
        while self.bytes > self.budget and self.entries:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: int) -> None:
        _, k, v = self.entries.pop(key)
        self.bytes -= k.element_size() * k.numel() + v.element_size() * v.numel()


class _Row:
    __slots__ = ("req", "pos", "out", "lps", "reason", "gen", "window")

    def __init__(self, req: Request, pos: int, gen: Any) -> None:
        self.req = req
        self.pos = pos  # position id of the next token fed
        self.out: list[int] = []
        self.lps: list[float] = []
        self.reason: Optional[str] = None
        self.gen = gen  # a torch.Generator for sampled rows with a seed, else None
        self.window = stop_window(req.stop)


class ContinuousBatcher(BatchWorker):
    """The serving loop of ``engine="continuous"``: the generate engine's queue, worker thread and
    ``submit``; a decode loop of its own instead of one ``generate`` per batch."""

    def __init__(self, owner: Any) -> None:
        super().__init__(owner)
        # statistics (for tests and benchmarks); batches_run/batch_sizes count prefill passes
        self.steps = 0  # decode steps
        self.row_steps = 0  # rows computed over all decode steps (finished rows kept as holes count)
        self.useful_row_steps = 0
        self.max_running = 0
        self.prefilled_tokens = 0
        self._logits_to_keep = True
        mb = float(getattr(owner, "prefix_cache_mb", 0) or 0)
        self.prefix: Optional[_PrefixStore] = _PrefixStore(mb * 2**20) if mb > 0 else None

    def stats(self) -> dict[str, Any]:
        return {"engine": "continuous", "batches": self.batches_run, "sizes": list(self.batch_sizes),
                "steps": self.steps, "row_steps": self.row_steps, "useful_row_steps": self.useful_row_steps,
                "max_running": self.max_running, "prefilled_tokens": self.prefilled_tokens,
                "prefix_hits": self.prefix.hits if self.prefix else 0,
                "prefix_reused_tokens": self.prefix.reused_tokens if self.prefix else 0,
                "prefix_cache_mb": round(self.prefix.bytes / 2**20, 1) if self.prefix else 0.0}

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            self._serve()

    def _serve(self) -> None:
        torch_state = {"cache": None, "mask": None}
        rows: list[_Row] = []
        waiting: collections.deque = collections.deque()
        wait_since: Optional[float] = None
        cap = max(1, int(self.owner.max_batch_size))
        while True:
            # 1. take what has arrived
            if not rows and not waiting:
                first = self._wait_first()
                if first is None:
                    return
                waiting.extend(self._collect(first))
                wait_since = time.monotonic()
            while True:
                try:
                    req = self.q.get_nowait()
                except queue.Empty:
                    break
                if req is None:  # the stop sentinel: served after the running rows
                    continue
                waiting.append(req)
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
                        # finished rows leave first: their keys/values go to the prefix cache,
                        # where the next turn of the same conversation (often in ``new``) finds them
                        rows = self._compact(torch_state, rows)
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
                rows = self._compact(torch_state, rows)
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

    # -- model calls ---------------------------------------------------------------------------

    def _forward(self, **kw):
        import torch

        model = self.owner.model
        with model_lock(model):
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

    def _admit(self, st: dict, rows: list[_Row], new: list[Request]) -> list[_Row]:
        import torch

        device = self._device()
        pad = self.owner._pad_id()
        # ``rows`` has no finished rows here (the loop compacts before admitting), so a failed
        # prefill leaves the running batch and its cache consistent
        reuse: list[tuple[Optional[int], int]] = [(None, 0)] * len(new)
        if self.prefix is not None:
            self.prefix.check_version(self._weights_version())
            reuse = [self.prefix.lookup(torch.tensor(r.prompt_ids, dtype=torch.long)) for r in new]
        past = max(n for _, n in reuse)
        suffix = [r.prompt_ids[n:] for r, (_, n) in zip(new, reuse)]
        w_new = max(len(x) for x in suffix)
        ids = torch.full((len(new), w_new), pad, dtype=torch.long)
        mask_new = torch.zeros((len(new), w_new), dtype=torch.long)
        for i, x in enumerate(suffix):
            ids[i, w_new - len(x):] = torch.tensor(x, dtype=torch.long)
            mask_new[i, w_new - len(x):] = 1
        start = torch.tensor([[n] for _, n in reuse], dtype=torch.long)
        pos = (mask_new.cumsum(-1) - 1).clamp(min=0) + start
        mask_past = torch.zeros((len(new), past), dtype=torch.long)
        cache = _new_cache()
        if past:
            self._fill_past(cache, new, reuse, past, device)
            for i, (_, n) in enumerate(reuse):
                mask_past[i, past - n:] = 1
        mask = torch.cat([mask_past, mask_new], dim=1)
        width = mask.shape[1]
        self.prefilled_tokens += int(mask_new.sum())
        logits = self._forward(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=pos.to(device), past_key_values=cache)
        self.batches_run += 1
        self.batch_sizes.append(len(new))
        new_rows = []
        for r in new:
            gen = None
            if r.temperature > 0 and r.seed is not None:
                gen = torch.Generator(device="cpu")
                gen.manual_seed(int(r.seed))
            new_rows.append(_Row(r, len(r.prompt_ids), gen))
        self._choose(new_rows, logits)  # the first new token of each admitted row
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

    def _weights_version(self) -> int:
        """Moves whenever a parameter is modified in place (an optimiser step, a load)."""
        return sum(p._version for p in self.owner.model.parameters())

    def _fill_past(self, cache: Any, new: list, reuse: list, past: int, device: Any) -> None:
        """Right-align each request's cached prefix in a ``past``-long cache (zeros elsewhere)."""
        n_layers = None
        rows_kv = []
        for key, n in reuse:
            if key is None or n == 0:
                rows_kv.append(None)
                continue
            _, k, v = self.prefix.get(key)
            rows_kv.append((k[:, :, :n], v[:, :, :n]))
            n_layers = k.shape[0]
        ref = next(x for x in rows_kv if x is not None)[0]
        _, heads, _, dim = ref.shape
        keys = ref.new_zeros((n_layers, len(new), heads, past, dim))
        values = ref.new_zeros((n_layers, len(new), heads, past, dim))
        for i, kv in enumerate(rows_kv):
            if kv is not None:
                n = kv[0].shape[2]
                keys[:, i, :, past - n:] = kv[0]
                values[:, i, :, past - n:] = kv[1]
        grow = _grow_class()
        for layer in range(n_layers):
            gl = grow()
            gl.set_states(keys[layer].to(device), values[layer].to(device), room=max(len(x.prompt_ids) for x in new))
            cache.layers.append(gl)

    def _save(self, st: dict, i: int, row: _Row) -> None:
        """Keep a finished row's keys/values (prompt + every token fed) in the prefix cache."""
        import torch

        if self.prefix is None or st["cache"] is None:
            return
        cols = st["mask"][i].nonzero().squeeze(-1)
        ids = row.req.prompt_ids + row.out[:-1]
        if cols.numel() != len(ids) or len(ids) < _PrefixStore.MIN_REUSE:
            return
        keys = torch.stack([layer.keys[i].index_select(1, cols) for layer in st["cache"].layers])
        values = torch.stack([layer.values[i].index_select(1, cols) for layer in st["cache"].layers])
        self.prefix.add(torch.tensor(ids, dtype=torch.long), keys, values)

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
        for i, r in enumerate(rows):
            if r.reason is not None:
                self._save(st, i, r)
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
        # a finished row still in the batch (a hole until the next compaction) is fed its last token
        # but masked out, so that its cached columns stay exactly its own tokens
        fresh = torch.tensor([[1 if r.reason is None else 0] for r in rows], dtype=st["mask"].dtype, device=device)
        mask = torch.cat([st["mask"], fresh], dim=1)
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
            gen = rows[i].gen or self._shared_generator()
            chosen[j] = int(sample_tokens(logp[j], req.top_p, gen))
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
        elif hit_stop(tok, row.out[-row.window:], row.req.stop):
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
