"""What both local serving engines share: the request and its result, the queue and worker
thread that collects requests from any thread or event loop, the per-model lock, EOS ids, token
sampling and stop checking.

``masksearch.models.local`` (the ``generate`` engine and the chat model) and
``masksearch.models.engine`` (the continuous engine) both import from here and never from each
other. Nothing here imports torch at module import time.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

__all__ = ["Generation", "Request", "BatchWorker", "model_lock", "eos_ids", "cut_at_stop",
           "stop_window", "hit_stop", "sample_tokens"]


@dataclass
class Generation:
    """One raw continuation: the tokens actually generated (ending with the stop string's last
    token or the EOS token, nothing after), their log-probs, the decoded text (cut right after
    the stop string, which is kept) and why it ended: ``stop`` | ``eos`` | ``length``."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    prompt_token_ids: list[int] = field(default_factory=list)
    stop_string: Optional[str] = None


@dataclass
class Request:
    """One continuation asked of an engine; its ``future`` receives a :class:`Generation`."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    future: concurrent.futures.Future
    seed: Optional[int] = None

    @property
    def group_key(self) -> tuple:
        greedy = self.temperature <= 0
        return (greedy, 1.0 if greedy else float(self.temperature), 1.0 if greedy else float(self.top_p))


# ----------------------------------------------------------------------------------------------
# the queue and its worker thread

_LIVE_WORKERS: "weakref.WeakSet[BatchWorker]" = weakref.WeakSet()
STOP = None  # the sentinel a worker reads as "exit now"


@atexit.register
def _stop_workers() -> None:
    """At interpreter exit, let every worker thread leave its loop and join it, so that no daemon
    thread is still inside torch while native libraries tear down (which can abort the process
    with "terminate called without an active exception")."""
    for w in list(_LIVE_WORKERS):
        w.stop(timeout=10.0)


class BatchWorker:
    """Collects requests from any thread/event loop onto one queue, served by one worker thread
    that an engine's ``_loop`` drives. The thread starts on the first ``submit`` and exits after
    ``idle_exit_s`` without requests; the next ``submit`` starts a new one."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the chat model: max_batch_size, batch_wait_ms, model, tokenizer
        self.q: "queue.Queue[Request]" = queue.Queue()
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None
        self.idle_exit_s = 10.0
        self.batches_run = 0
        self.batch_sizes: list[int] = []
        _LIVE_WORKERS.add(self)

    def _loop(self) -> None:  # pragma: no cover - every engine defines its own
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit once the requests ahead of the sentinel are served; wait for it."""
        with self.lock:
            thread = self.thread
            if thread is None or not thread.is_alive():
                return
            self.q.put(STOP)
        thread.join(timeout)

    def submit(self, req: Request) -> concurrent.futures.Future:
        with self.lock:
            self.q.put(req)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="masksearch-batcher", daemon=True)
                self.thread.start()
        return req.future

    def _collect(self, first: Request) -> list[Request]:
        """``first`` plus whatever arrives within ``batch_wait_ms`` of the last arrival."""
        batch = [first]
        wait = max(self.owner.batch_wait_ms, 0) / 1000.0
        cap = max(1, int(self.owner.max_batch_size))
        hard_deadline = time.monotonic() + max(wait * 20, 0.05)
        while len(batch) < cap * 4:  # take a bit more than one batch: groups may split it
            try:
                timeout = min(wait, max(hard_deadline - time.monotonic(), 0.0))
                req = self.q.get(timeout=timeout) if timeout > 0 else self.q.get_nowait()
            except queue.Empty:
                break
            if req is not STOP:
                batch.append(req)
            if len(batch) >= cap and self.q.empty():
                break
        return batch

    def _wait_first(self) -> Optional[Request]:
        """Block for the next request; None when idle for ``idle_exit_s`` or asked to stop."""
        while True:
            try:
                req = self.q.get(timeout=self.idle_exit_s)
            except queue.Empty:
                req = STOP
            if req is STOP:
                with self.lock:
                    if self.q.empty():
                        self.thread = None
                        return None
                continue
            return req


# ----------------------------------------------------------------------------------------------
# per-model state

_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> Any:
    """One lock per underlying model, shared by every wrapper of it: generation swaps the model's
    ``generation_config`` and train/eval mode, which must not interleave."""
    with _LOCKS_GUARD:
        lock = model.__dict__.get("_masksearch_generate_lock")
        if lock is None:
            lock = threading.RLock()
            model.__dict__["_masksearch_generate_lock"] = lock
        return lock


def eos_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Every id that ends a turn: the model's generation-config EOS ids, the tokenizer's EOS, and
    ChatML's ``<|im_end|>`` where the vocabulary has it."""
    ids: set[int] = set()
    gc = getattr(model, "generation_config", None) if model is not None else None
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(int(x) for x in e)
    t = getattr(tokenizer, "eos_token_id", None)
    if isinstance(t, int):
        ids.add(t)
    try:
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    except Exception:  # noqa: BLE001 - a tokenizer without that token
        im_end = None
    if isinstance(im_end, int) and im_end != getattr(tokenizer, "unk_token_id", None):
        ids.add(im_end)
    return sorted(ids)


# ----------------------------------------------------------------------------------------------
# stops and sampling


def stop_window(stops: Sequence[str]) -> int:
    """How many trailing tokens to decode to see any of ``stops`` complete."""
    return max((len(s) for s in stops), default=0) * 2 + 8


def hit_stop(tokenizer: Any, tail_ids: Sequence[int], stops: Sequence[str]) -> bool:
    """Whether the decoded tail of a row contains one of its stop strings."""
    if not stops:
        return False
    tail = tokenizer.decode(list(tail_ids), skip_special_tokens=True)
    return any(s in tail for s in stops)


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, Optional[str]]:
    """``text`` cut right after the stop string that ends first (kept), and that string."""
    best: Optional[tuple[int, str]] = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), s)
    return (text[: best[0]], best[1]) if best else (text, None)


def sample_tokens(logp: Any, top_p: float, generator: Any) -> Any:
    """Sample one token per row from log-probs ``logp`` (``(V,)`` or ``(n, V)``) restricted to
    the smallest prefix of the sorted distribution whose mass reaches ``top_p``."""
    import torch

    probs = logp.exp()
    if top_p < 1.0:
        sp, si = torch.sort(probs, dim=-1, descending=True)
        drop = (sp.cumsum(-1) - sp) > top_p  # keep the smallest prefix with mass >= top_p
        probs = torch.zeros_like(probs).scatter(-1, si, sp.masked_fill(drop, 0.0))
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1]).to(logp.device)
