"""The GRPO rollout: the student graph as TRL's ``rollout_func``.

:func:`make_rollout_func` builds the ``rollout_func`` TRL's ``GRPOTrainer`` calls with the prompts
of a generation batch (already repeated ``num_generations`` times) and the trainer.  It wraps the
trainer's *live* policy in :class:`~masksearch.models.local.LocalChatModel` (no copy), runs
:func:`~masksearch.graphs.student.arun_student` for every prompt in one ``asyncio.gather`` (so the
model batches the concurrent turns into one ``generate``), and returns, per rollout,
``prompt_ids``, ``completion_ids`` (the model's tokens and the ``<information>`` turns exactly as
the model saw them), ``logprobs``, ``env_mask`` (1 model token, 0 environment token — TRL drops
the 0s from the loss), plus fields the rewards read: ``question``, ``golden_answers``, ``answer_match``,
``mask_count``, ``answer``, ``num_searches``, ``num_model_tokens``, ``status`` and ``trajectory``.

With :class:`~masksearch.training.dynamic_sampling.DynamicSampling` the rollout also does DAPO's
dynamic sampling (groups whose rewards are all equal are replaced by groups of fresh prompts).
:class:`VLLMTokenModel` is the token model over TRL's vLLM server (``rollout_backend: vllm``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from masksearch.models.batching import eos_ids
from masksearch.data.qa import QAExample, qa_from_record
from masksearch.errors import MaskSearchError
from masksearch.utils.aio import run_sync

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- settings


@dataclass
class RolloutSettings:
    """How the student graph runs during rollouts.  ``None`` = take it from the trainer's
    ``GRPOConfig`` (``temperature``, ``top_p``, ``max_completion_length``)."""

    k: int = 3
    max_turns: int = 4
    max_new_tokens: int = 128  # per policy turn
    info_max_tokens: int = 256  # budget of one <information> block
    temperature: float | None = None
    top_p: float | None = None
    max_completion_tokens: int | None = None
    system_prompt: str | None = None  # None = the protocol's student prompt


def prompt_text(prompt: Any) -> str:
    """The question inside a TRL prompt (plain text, or the last user message of a chat)."""
    if isinstance(prompt, str):
        return prompt.strip()
    if isinstance(prompt, list) and prompt:
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role", "user") == "user":
                c = m.get("content", "")
                if isinstance(c, list):  # typed content blocks
                    c = " ".join(b.get("text", "") for b in c if isinstance(b, dict))
                return str(c).strip()
    if isinstance(prompt, dict):
        return str(prompt.get("content", "")).strip()
    return str(prompt).strip()


def example_row(ex: QAExample) -> dict[str, Any]:
    """A dataset row for ``GRPOTrainer``: the prompt plus the columns the rewards read."""
    return {
        "prompt": ex.question,
        "golden_answers": list(ex.golden_answers),
        "answer_match": ex.answer_match,
        "mask_count": ex.mask_count,
        "example_id": ex.id,
    }


def _to_example(obj: Any) -> QAExample:
    if isinstance(obj, QAExample):
        return obj
    if isinstance(obj, dict):
        rec = dict(obj)
        if "question" not in rec and "prompt" in rec:
            rec["question"] = prompt_text(rec["prompt"])
        if "id" not in rec and "example_id" in rec:
            rec["id"] = rec["example_id"]
        if rec.get("mask_count") is None:
            rec.pop("mask_count", None)
        rec.pop("prompt", None)
        return qa_from_record(rec)
    raise TypeError(f"cannot use {type(obj).__name__} as a QA example")


# --------------------------------------------------------------------------- rollouts


def _unwrap(trainer: Any) -> Any:
    model = trainer.model
    acc = getattr(trainer, "accelerator", None)
    if acc is not None:
        try:
            model = acc.unwrap_model(model)
        except Exception:  # noqa: BLE001 - plain model
            pass
    return model


def _default_chat_model(trainer: Any) -> Any:
    from masksearch.models.local import LocalChatModel

    return LocalChatModel.from_model(_unwrap(trainer), trainer.processing_class)


@dataclass
class RolloutRecord:
    """The per-call timing and what was generated, kept on the rollout function for benchmarks."""

    seconds: float
    rollouts: int
    model_tokens: int
    env_tokens: int


class StudentRollout:
    """TRL ``rollout_func``: ``rollout(prompts, trainer) -> dict``; see the module docstring.

    Build it with :func:`make_rollout_func`.  ``register(examples)`` adds prompt -> example
    entries (gold answers, mask count) for prompts not known at construction.
    """

    def __init__(
        self,
        retriever: Any = None,
        settings: RolloutSettings | None = None,
        examples: Iterable[Any] | None = None,
        context_factory: Callable[[Any, Any], Any] | None = None,
        chat_model_factory: Callable[[Any], Any] | None = None,
        on_rollouts: Callable[[list[Any]], None] | None = None,
        dynamic_sampling: Any = None,
    ) -> None:
        if retriever is None and context_factory is None:
            raise MaskSearchError("make_rollout_func needs a retriever (e.g. make_retriever('bm25:DIR')) or a context_factory")
        if isinstance(retriever, str):
            from masksearch.retrieval import make_retriever

            retriever = make_retriever(retriever)
        self.retriever = retriever
        self.settings = settings or RolloutSettings()
        self.context_factory = context_factory
        self.chat_model_factory = chat_model_factory or _default_chat_model
        self.on_rollouts = on_rollouts
        self.examples: dict[str, QAExample] = {}
        self.history: list[RolloutRecord] = []
        self.dynamic_sampling = dynamic_sampling  # a DynamicSampling, or None
        self._pending: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}
        self.register(examples or [])

    # ------------------------------------------------------------------ examples
    def register(self, examples: Iterable[Any]) -> None:
        for obj in examples:
            ex = _to_example(obj)
            self.examples[ex.question.strip()] = ex

    def lookup(self, prompt: Any) -> QAExample:
        q = prompt_text(prompt)
        ex = self.examples.get(q)
        if ex is None:  # unknown prompt: run it anyway, rewards read gold from dataset columns
            ex = QAExample(id="p-" + hashlib.sha1(q.encode()).hexdigest()[:10], question=q, golden_answers=[])
        return ex

    # ------------------------------------------------------------------ context
    def make_context(self, chat_model: Any, trainer: Any) -> Any:
        if self.context_factory is not None:
            return self.context_factory(chat_model, trainer)
        from masksearch.graphs.student import StudentContext

        s = self.settings
        args = getattr(trainer, "args", None)
        temperature = s.temperature if s.temperature is not None else getattr(args, "temperature", 1.0)
        top_p = s.top_p if s.top_p is not None else getattr(args, "top_p", 1.0)
        max_completion = self.max_completion(trainer)
        kw: dict[str, Any] = dict(
            model=chat_model, retriever=self.retriever, k=s.k, max_turns=s.max_turns,
            max_new_tokens=s.max_new_tokens, temperature=temperature, top_p=top_p,
            info_max_tokens=s.info_max_tokens, max_completion_tokens=max_completion,
        )
        if s.system_prompt is not None:
            kw["system_prompt"] = s.system_prompt
        return StudentContext(**kw)

    def max_completion(self, trainer: Any) -> int | None:
        """The token budget of a completion: the smaller of ours and TRL's ``max_completion_length``."""
        limits = [x for x in (self.settings.max_completion_tokens,
                              getattr(getattr(trainer, "args", None), "max_completion_length", None)) if x]
        return min(limits) if limits else None

    # ------------------------------------------------------------------ the call
    def run_trajectories(self, prompts: Sequence[Any], trainer: Any) -> list[Any]:
        """Run the student graph for every prompt, concurrently, with the trainer's policy."""
        from masksearch.graphs.student import arun_student

        chat_model = self.chat_model_factory(trainer)
        context = self.make_context(chat_model, trainer)
        examples = [self.lookup(p) for p in prompts]
        policy = getattr(chat_model, "model", None)
        was_training = bool(getattr(policy, "training", False))
        if policy is not None and hasattr(policy, "eval"):
            policy.eval()  # no dropout while sampling
        try:
            async def _all() -> list[Any]:
                return await asyncio.gather(*(arun_student(ex, context) for ex in examples))

            trajs = run_sync(_all())
        finally:
            if was_training:
                policy.train()
        for ex, t in zip(examples, trajs):
            t.metadata.setdefault("mask_count", ex.mask_count)
            t.metadata.setdefault("answer_match", ex.answer_match)
            if not t.golden_answers:
                t.golden_answers = list(ex.golden_answers)
        return trajs

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        out = self.rollout_once(prompts, trainer)
        if self.dynamic_sampling is not None:
            out, stats = self.dynamic_sampling.refill(self, list(prompts), out, trainer)
            self.record_metrics(trainer, {f"dynamic_sampling/{k}": float(v) for k, v in stats.items()})
        self.record_metrics(trainer, rollout_metrics(out))
        return out

    def rollout_once(self, prompts: Sequence[Any], trainer: Any) -> dict[str, list[Any]]:
        """Run ``prompts`` and return TRL's rollout dict (no dynamic sampling); times the call."""
        t0 = time.perf_counter()
        trajs = self.run_trajectories(prompts, trainer)
        out = self.to_trl(trajs, trainer, prompts)
        n_model = sum(out["num_model_tokens"])
        n_env = sum(len(c) for c in out["completion_ids"]) - n_model
        self.history.append(RolloutRecord(time.perf_counter() - t0, len(trajs), n_model, n_env))
        if self.on_rollouts is not None:
            self.on_rollouts(trajs)
        return out

    # ------------------------------------------------------------------ metrics
    def record_metrics(self, trainer: Any, metrics: dict[str, float]) -> None:
        """Keep per-call metrics until the trainer logs; :meth:`pop_metrics` averages them."""
        mode = "train" if getattr(getattr(trainer, "model", None), "training", True) else "eval"
        for k, v in metrics.items():
            self._pending[mode].setdefault(k, []).append(float(v))

    def pop_metrics(self, mode: str = "train") -> dict[str, float]:
        """The mean of each metric recorded since the last call (what a log line shows), then reset.
        :class:`~masksearch.training.grpo.StudentGRPOTrainer` merges it into ``Trainer.log``."""
        pending, self._pending[mode] = self._pending.get(mode, {}), {}
        return {k: sum(v) / len(v) for k, v in pending.items() if v}

    def to_trl(self, trajs: Sequence[Any], trainer: Any, prompts: Sequence[Any] | None = None) -> dict[str, list[Any]]:
        tok = getattr(trainer, "processing_class", None)
        eos = (eos_ids(tok) or [getattr(tok, "pad_token_id", None) or 0])[0]
        limit = self.max_completion(trainer)
        out: dict[str, list[Any]] = {k: [] for k in (
            "prompt_ids", "completion_ids", "logprobs", "env_mask", "question", "golden_answers", "answer_match",
            "mask_count", "answer", "num_searches", "num_model_tokens", "status", "trajectory")}
        for i, t in enumerate(trajs):
            if t.prompt_ids is None or t.completion_ids is None:
                raise MaskSearchError(
                    "the student graph returned no token ids: rollouts need a token model "
                    "(LocalChatModel or one with agenerate_ids and a tokenizer)")
            ids = list(t.completion_ids)
            mask = list(t.completion_mask or [1] * len(ids))
            lps = list(t.completion_logprobs or [0.0] * len(ids))
            if not (len(ids) == len(mask) == len(lps)):
                raise MaskSearchError(f"rollout {t.id}: completion ids/mask/logprobs lengths differ "
                                      f"({len(ids)}/{len(mask)}/{len(lps)})")
            if limit is not None and len(ids) > limit:  # budget enforced here too: mark the cut
                ids, mask, lps = ids[:limit], mask[:limit], lps[:limit]
                t.status, t.reason = "length", t.reason or "max_completion_length"
            if not ids:  # TRL needs one token per completion; an env token carries no loss
                ids, mask, lps = [eos], [0], [0.0]
            elif t.status != "length" and ids[-1] != eos and (limit is None or len(ids) < limit):
                # A finished rollout ends where the template closes the turn: add that end-of-turn
                # token as environment glue (mask 0), so TRL does not count it as truncated
                # (``mask_truncated_completions`` then drops only rollouts cut by the budget).
                ids, mask, lps = ids + [eos], mask + [0], lps + [0.0]
            out["prompt_ids"].append(list(t.prompt_ids))
            out["completion_ids"].append(ids)
            out["logprobs"].append([float(x) for x in lps])
            out["env_mask"].append([int(m) for m in mask])
            out["question"].append(t.question)
            out["golden_answers"].append(list(t.golden_answers))
            out["answer_match"].append(t.metadata.get("answer_match") or "any")
            out["mask_count"].append(t.metadata.get("mask_count"))
            out["answer"].append(t.answer)
            out["num_searches"].append(t.num_searches)
            out["num_model_tokens"].append(int(sum(mask)))
            out["status"].append(t.status)
            d = t.to_dict()
            for key in ("prompt_ids", "completion_ids", "completion_mask", "completion_logprobs", "llm_calls"):
                d.pop(key, None)
            out["trajectory"].append(d)
        return out

def rollout_metrics(out: dict[str, list[Any]]) -> dict[str, float]:
    """Statistics of one rollout batch, logged as ``rollout/*`` with the step."""
    n = len(out.get("status") or [])
    if not n:
        return {}
    m = {"rollout/num_searches": sum(out["num_searches"]) / n,
         "rollout/env_tokens": sum(len(c) - k for c, k in zip(out["completion_ids"], out["num_model_tokens"])) / n}
    mcs = [mc for mc in out["mask_count"] if isinstance(mc, int)]
    if mcs:  # where the curriculum is
        m["rollout/mask_count"] = sum(mcs) / len(mcs)
    for st in ("answered", "turn_cap", "length", "malformed", "error"):
        m[f"rollout/{st}"] = sum(s == st for s in out["status"]) / n
    return m


class VLLMTokenModel:
    """A token model (``agenerate_ids`` + ``tokenizer``) over TRL's ``VLLMClient`` (vLLM server mode).

    Concurrent ``agenerate_ids`` awaits (the turns of all rollouts in flight) are collected for
    ``batch_wait_ms`` and sent as one ``generate`` request with token-id prompts; stop strings are
    kept in the output (``include_stop_str_in_output``) and the sampled token's log-prob is
    returned.  TRL syncs the policy weights to the server before each ``rollout_func`` call.
    """

    def __init__(self, client: Any, tokenizer: Any, batch_wait_ms: float = 20.0) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.batch_wait_ms = batch_wait_ms
        self._pending: list[tuple[tuple, list[int], Any]] = []
        self._flusher: Any = None
        self.requests = 0  # generate requests sent (for tests and logs)

    async def agenerate_ids(self, prompt_ids: list[int], *, max_new_tokens: int | None = 256,
                            temperature: float | None = 1.0, top_p: float | None = 1.0,
                            stop: Sequence[str] | None = None, **_: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        key = (int(max_new_tokens or 256), float(1.0 if temperature is None else temperature),
               float(1.0 if top_p is None else top_p), tuple(stop or ()))
        self._pending.append((key, list(prompt_ids), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(self.batch_wait_ms / 1000.0)
        pending, self._pending = self._pending, []
        groups: dict[tuple, list[tuple[list[int], Any]]] = {}
        for key, ids, fut in pending:
            groups.setdefault(key, []).append((ids, fut))
        for (mnt, temp, top_p, stop), items in groups.items():
            kwargs = {"stop": list(stop), "include_stop_str_in_output": True} if stop else None
            try:
                self.requests += 1
                res = await asyncio.to_thread(
                    self.client.generate, prompts=[ids for ids, _ in items], n=1, temperature=temp, top_p=top_p,
                    max_tokens=mnt, logprobs=0, generation_kwargs=kwargs)
            except Exception as e:  # noqa: BLE001 - delivered to every waiting rollout
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)
                continue
            from types import SimpleNamespace

            for k, (_, f) in enumerate(items):
                ids = list(res["completion_ids"][k])
                lps = [float(x[0]) if isinstance(x, (list, tuple)) else float(x) for x in res["logprobs"][k]]
                f.set_result(SimpleNamespace(
                    token_ids=ids, logprobs=lps, text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason="length" if len(ids) >= mnt else "stop"))
        if self._pending:  # arrived while we were generating
            await self._flush()


def vllm_token_model_factory(trainer: Any) -> VLLMTokenModel:
    """``chat_model_factory`` for ``--rollout_backend vllm`` (TRL ``use_vllm`` + ``vllm_mode: server``)."""
    gen = getattr(trainer, "vllm_generation", None)
    client = getattr(gen, "vllm_client", None)
    if client is None:
        raise MaskSearchError("rollout_backend 'vllm' needs TRL's vLLM server mode: pass --use_vllm true "
                              "--vllm_mode server and start `trl vllm-serve --model MODEL` (see docs/gpu.md)")
    return VLLMTokenModel(client, trainer.processing_class)


def make_rollout_func(retriever: Any = None, settings: RolloutSettings | None = None, **options: Any) -> StudentRollout:
    """A TRL ``rollout_func`` that runs the student graph for each prompt.

    ``retriever``: a ``BaseRetriever`` or a spec (``"bm25:DIR"``).  ``examples``: QA examples or
    dataset rows, so each prompt finds its gold answers and mask count.  ``context_factory(chat_model,
    trainer) -> StudentContext`` replaces the default context; ``chat_model_factory(trainer)``
    replaces the default ``LocalChatModel.from_model(trainer.model, trainer.processing_class)``;
    ``on_rollouts(trajectories)`` sees every batch (e.g. to save them), the refills of dynamic
    sampling included.  ``dynamic_sampling``: a
    :class:`~masksearch.training.dynamic_sampling.DynamicSampling` (DAPO's dynamic sampling).
    """
    return StudentRollout(retriever, settings, **options)
