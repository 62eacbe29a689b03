"""A LangChain chat model over a local transformers causal LM that batches concurrent calls.

Every call — ``invoke``/``ainvoke`` from threads or asyncio tasks, ``generate_ids``,
``agenerate_ids`` — becomes a request on one queue served by a worker thread (the *batcher*).
The worker takes the first waiting request, keeps collecting until no new request has arrived
for ``batch_wait_ms`` (or ``max_batch_size`` are waiting), groups them by sampling parameters
(``temperature``, ``top_p``) and runs each group as one left-padded ``model.generate``.
Per-request ``max_new_tokens`` and stop strings are handled per row by a stopping criterion, so
requests with different limits or stops still share a batch. transformers derives position ids
from the attention mask, so a left-padded row computes what it would alone.

Token choice and log-probs are done by one logits processor of ours, the only one in the list:
it sees the raw logits, computes ``log_softmax(logits / T)`` (``T = 1`` when greedy, which is
what TRL computes for the policy), picks the token (argmax, or a top-p sample) and records the
chosen token's log-prob. ``generate`` then runs greedy over a one-hot score, so the token we
recorded is the token it appends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
from typing import Any, Optional, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, PrivateAttr

from masksearch.errors import MaskSearchError
from masksearch.models.batching import (BatchWorker, Generation, Request, cut_at_stop, eos_ids, hit_stop,
                                         model_lock, sample_tokens, stop_window)
from masksearch.models.embedded import materialize_embedded
from masksearch.protocol import message_text

log = logging.getLogger(__name__)

__all__ = ["Generation", "LocalChatModel", "materialize_embedded", "load_local"]


# ----------------------------------------------------------------------------------------------
# messages -> prompt ids


_ROLE = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant",
         "system": "system", "tool": "user", "function": "user", "developer": "system"}


def _message_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        role = _ROLE.get(m.type, "user")
        out.append({"role": role, "content": message_text(m)})
    return out


# ----------------------------------------------------------------------------------------------
# the batcher


class GenerateBatcher(BatchWorker):
    """``engine="generate"``: each collected batch, grouped by sampling parameters, runs as one
    left-padded ``model.generate``."""

    def _loop(self) -> None:
        while True:
            first = self._wait_first()
            if first is None:
                return
            pending = self._collect(first)
            groups: dict[tuple, list[Request]] = {}
            for r in pending:
                groups.setdefault(r.group_key, []).append(r)
            cap = max(1, int(self.owner.max_batch_size))
            for reqs in groups.values():
                for i in range(0, len(reqs), cap):
                    chunk = [r for r in reqs[i:i + cap] if r.future.set_running_or_notify_cancel()]
                    if not chunk:
                        continue
                    try:
                        results = self.owner._run_batch(chunk)
                    except BaseException as e:  # noqa: BLE001 - delivered to every caller
                        for r in chunk:
                            r.future.set_exception(e)
                        continue
                    self.batches_run += 1
                    self.batch_sizes.append(len(chunk))
                    for r, g in zip(chunk, results):
                        r.future.set_result(g)


# ----------------------------------------------------------------------------------------------
# generate helpers (built lazily: torch/transformers are imported only when a model runs)


def _make_processor_and_criteria(reqs: list[Request], prompt_len: int, tokenizer: Any, eos: Sequence[int]):
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    n = len(reqs)
    greedy = reqs[0].temperature <= 0
    temp = 1.0 if greedy else float(reqs[0].temperature)
    top_p = 1.0 if greedy else float(reqs[0].top_p)
    seed = next((r.seed for r in reqs if r.seed is not None), None)

    class Chooser(LogitsProcessor):
        def __init__(self) -> None:
            self.logprobs: list[Any] = []  # one (n,) tensor per step
            self.gen = None
            if not greedy:
                self.gen = torch.Generator(device="cpu")
                self.gen.manual_seed(seed if seed is not None else torch.seed())

        def __call__(self, input_ids, scores):
            logits = scores.float()
            logp = torch.log_softmax(logits / temp, dim=-1)
            if greedy:
                chosen = torch.argmax(logits, dim=-1)
            else:
                chosen = sample_tokens(logp, top_p, self.gen)
            self.logprobs.append(logp.gather(-1, chosen[:, None]).squeeze(-1).cpu())
            out = torch.full_like(scores, -math.inf)
            out.scatter_(-1, chosen[:, None], 0.0)
            return out

    stops = [r.stop for r in reqs]
    eos_set = set(eos)
    limits = [r.max_new_tokens for r in reqs]
    window = [stop_window(st) for st in stops]

    class PerRowStop(StoppingCriteria):
        def __init__(self) -> None:
            self.ended_at: list[Optional[int]] = [None] * n  # generated length when it ended
            self.reason: list[Optional[str]] = [None] * n

        def __call__(self, input_ids, scores, **kwargs):
            steps = input_ids.shape[1] - prompt_len
            done = [False] * n
            tail_rows = None
            last = input_ids[:, -1].tolist()
            for i in range(n):
                if self.ended_at[i] is not None:
                    done[i] = True
                    continue
                if last[i] in eos_set:
                    self.ended_at[i], self.reason[i], done[i] = steps, "eos", True
                    continue
                if stops[i]:
                    if tail_rows is None:
                        k = min(steps, max(window))
                        tail_rows = input_ids[:, input_ids.shape[1] - k:].tolist()
                    if hit_stop(tokenizer, tail_rows[i][-min(steps, window[i]):], stops[i]):
                        self.ended_at[i], self.reason[i], done[i] = steps, "stop", True
                        continue
                if steps >= limits[i]:
                    self.ended_at[i], self.reason[i], done[i] = steps, "length", True
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return Chooser(), PerRowStop()


# ----------------------------------------------------------------------------------------------
# the chat model


class LocalChatModel(BaseChatModel):
    """A real LangChain chat model (sync + async) over a transformers causal LM whose concurrent
    calls are batched into one left-padded ``generate``.

    ``invoke(messages, stop=[...], max_new_tokens=..., temperature=..., top_p=...)`` returns an
    ``AIMessage`` whose ``response_metadata`` (and the generation's ``generation_info``) has
    ``prompt_token_ids``, ``token_ids``, ``logprobs`` and ``finish_reason``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any
    tokenizer: Any
    model_name: str = "local"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    max_batch_size: int = 32
    batch_wait_ms: float = 10.0
    seed: Optional[int] = None
    engine: str = "continuous"
    prefix_cache_mb: float = 512.0

    _batcher: Optional[BatchWorker] = PrivateAttr(default=None)
    _batcher_lock: Any = PrivateAttr(default_factory=threading.Lock)
    _eos_cache: Optional[set] = PrivateAttr(default=None)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **opts: Any) -> "LocalChatModel":
        """Wrap a live model (e.g. the policy inside a TRL trainer) without copying it."""
        opts.setdefault("model_name", getattr(getattr(model, "config", None), "_name_or_path", "") or "local")
        return cls(model=model, tokenizer=tokenizer, **opts)

    @classmethod
    def from_spec(cls, spec: str = "smollm2", **opts: Any) -> "LocalChatModel":
        """``"smollm2"`` (the embedded model) or ``"hf:<hub id or local path>"``."""
        model, tokenizer, name = load_local(spec, dtype=opts.pop("dtype", None), device=opts.pop("device", None))
        opts.setdefault("model_name", name)
        return cls(model=model, tokenizer=tokenizer, **opts)

    # -- LangChain plumbing --------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "masksearch-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p}

    def _prompt_ids(self, messages: Sequence[BaseMessage]) -> list[int]:
        text = self.tokenizer.apply_chat_template(_message_dicts(messages), tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _result(self, g: Generation) -> ChatResult:
        meta = {"model_name": self.model_name, "prompt_token_ids": g.prompt_token_ids,
                "token_ids": g.token_ids, "logprobs": g.logprobs, "finish_reason": g.finish_reason}
        usage = {"input_tokens": len(g.prompt_token_ids), "output_tokens": len(g.token_ids),
                 "total_tokens": len(g.prompt_token_ids) + len(g.token_ids)}
        msg = AIMessage(content=g.text, response_metadata=dict(meta), usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info=dict(meta))])

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        req = self._request(self._prompt_ids(messages), stop=stop, **kwargs)
        return self._result(self._get_batcher().submit(req).result())

    async def _agenerate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                         **kwargs: Any) -> ChatResult:
        req = self._request(self._prompt_ids(messages), stop=stop, **kwargs)
        return self._result(await asyncio.wrap_future(self._get_batcher().submit(req)))

    # -- raw token interface -------------------------------------------------------------------

    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: Optional[int] = None,
                     temperature: Optional[float] = None, top_p: Optional[float] = None,
                     stop: Optional[Sequence[str]] = None, seed: Optional[int] = None) -> list[Generation]:
        """Continue each prompt (a list of token ids, taken verbatim); batched like any call."""
        futs = [self._get_batcher().submit(self._request(list(p), stop=stop, max_new_tokens=max_new_tokens,
                                                         temperature=temperature, top_p=top_p, seed=seed))
                for p in prompts]
        return [f.result() for f in futs]

    async def agenerate_ids(self, prompt_ids: list[int], *, max_new_tokens: Optional[int] = None,
                            temperature: Optional[float] = None, top_p: Optional[float] = None,
                            stop: Optional[Sequence[str]] = None, seed: Optional[int] = None) -> Generation:
        """Continue one prompt; concurrent awaits (e.g. ``asyncio.gather``) share a batch."""
        req = self._request(list(prompt_ids), stop=stop, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=seed)
        return await asyncio.wrap_future(self._get_batcher().submit(req))

    # -- internals -----------------------------------------------------------------------------

    def _request(self, prompt_ids: list[int], stop: Optional[Sequence[str]] = None,
                 max_new_tokens: Optional[int] = None, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None, **ignored: Any) -> Request:
        if not prompt_ids:
            raise ValueError("empty prompt: nothing to continue")
        if isinstance(stop, str):
            stop = [stop]
        mnt = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if mnt < 1:
            raise ValueError("max_new_tokens must be >= 1")
        return Request(prompt_ids=[int(t) for t in prompt_ids], max_new_tokens=mnt,
                        temperature=float(self.temperature if temperature is None else temperature),
                        top_p=float(self.top_p if top_p is None else top_p),
                        stop=tuple(s for s in (stop or ()) if s),
                        future=concurrent.futures.Future(),
                        seed=self.seed if seed is None else seed)

    def _get_batcher(self) -> Any:
        with self._batcher_lock:
            if self._batcher is None:
                if self.engine == "continuous":
                    from masksearch.models.engine import ContinuousBatcher

                    self._batcher = ContinuousBatcher(self)
                elif self.engine == "generate":
                    self._batcher = GenerateBatcher(self)
                else:
                    raise ValueError(f"unknown engine {self.engine!r}: use 'continuous' or 'generate'")
            return self._batcher

    @property
    def batch_stats(self) -> dict[str, Any]:
        """How many batches (generate calls, or prefill passes of the continuous engine) ran and
        their sizes; the continuous engine adds decode ``steps`` and ``row_steps``."""
        b = self._batcher
        if b is None:
            return {"engine": self.engine, "batches": 0, "sizes": []}
        if hasattr(b, "stats"):
            return b.stats()
        return {"engine": "generate", "batches": b.batches_run, "sizes": list(b.batch_sizes)}

    def _eos_set(self) -> set[int]:
        if self._eos_cache is None:
            self._eos_cache = set(eos_ids(self.tokenizer, self.model))
        return self._eos_cache

    def _make_generation(self, req: Request, token_ids: list[int], logprobs: list[float],
                         reason: str) -> Generation:
        """The result of one request: text decoded and cut at the first stop string."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        stop_string = None
        if req.stop:
            text, stop_string = cut_at_stop(text, req.stop)
            if stop_string is not None and reason != "eos":
                reason = "stop"
        return Generation(token_ids=list(token_ids), logprobs=[float(x) for x in logprobs], text=text,
                          finish_reason=reason, prompt_token_ids=list(req.prompt_ids), stop_string=stop_string)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return int(tok.pad_token_id)
        eos = eos_ids(tok, self.model)
        return eos[0] if eos else 0

    def _run_batch(self, reqs: list[Request]) -> list[Generation]:
        """One left-padded ``generate`` for requests sharing sampling parameters."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        model, tok = self.model, self.tokenizer
        device = getattr(model, "device", None) or next(model.parameters()).device
        pad = self._pad_id()
        eos = eos_ids(tok, model)
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        chooser, stopper = _make_processor_and_criteria(reqs, width, tok, eos)
        # a clean generation config, so no default processor (repetition penalty, warpers, ...)
        # sits between the raw logits and our chooser
        gcfg = GenerationConfig(max_new_tokens=max(r.max_new_tokens for r in reqs), do_sample=False,
                                num_beams=1, eos_token_id=eos or None, pad_token_id=pad,
                                bos_token_id=getattr(tok, "bos_token_id", None), use_cache=True,
                                return_dict_in_generate=False)
        with model_lock(model):
            was_training = bool(getattr(model, "training", False))
            saved_gc = getattr(model, "generation_config", None)
            try:
                model.eval()
                model.generation_config = gcfg
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gcfg,
                                         logits_processor=LogitsProcessorList([chooser]),
                                         stopping_criteria=StoppingCriteriaList([stopper]))
            finally:
                if saved_gc is not None:
                    model.generation_config = saved_gc
                if was_training:
                    model.train()
        gen = out[:, width:].tolist()
        lps = torch.stack(chooser.logprobs, dim=1).tolist() if chooser.logprobs else [[] for _ in reqs]
        eos_set = set(eos)
        results = []
        for i, r in enumerate(reqs):
            row = gen[i]
            n, reason = len(row), "length"
            if stopper.ended_at[i] is not None:
                n, reason = stopper.ended_at[i], stopper.reason[i]
            e = next((j for j, t in enumerate(row[:n]) if t in eos_set), None)
            if e is not None:
                n, reason = e + 1, "eos"
            n = min(n, r.max_new_tokens)
            results.append(self._make_generation(r, row[:n], lps[i][:n], reason))
        return results


# ----------------------------------------------------------------------------------------------
# loading


def load_local(spec: str = "smollm2", dtype: Any = None, device: Any = None) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, name)`` for ``"smollm2"`` or ``"hf:<hub id or path>"``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from masksearch.protocol import ensure_student_template

    if spec in ("smollm2", "embedded"):
        path, name = str(materialize_embedded()), "smollm2-135m-instruct"
    elif spec.startswith("hf:") and spec[3:].strip():
        path = name = spec[3:].strip()
    else:
        from masksearch.errors import UnknownSpecError

        raise UnknownSpecError(f"not a local model spec: {spec!r} (use 'smollm2' or 'hf:<hub id or path>')")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except OSError as e:
        raise MaskSearchError(f"cannot load local model {path!r}: {e}. Give a folder with config.json and "
                              "weights, or a hub id that is cached (HF_HUB_OFFLINE=1 allows no download)") from e
    if device is not None:
        model.to(device)
    elif torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tmpl = getattr(tok, "chat_template", None) or ""
    if not tmpl or "<|im_start|>" in tok.get_vocab():
        ensure_student_template(tok)  # ChatML-style vocab (or no template): use the student template
    return model, tok, name
