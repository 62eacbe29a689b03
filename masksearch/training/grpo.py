"""GRPO with TRL where every rollout is the student graph with the real search tool.

* :func:`make_rollout_func` builds the ``rollout_func`` TRL's ``GRPOTrainer`` calls with the
  prompts of a generation batch (already repeated ``num_generations`` times) and the trainer.  It
  wraps the trainer's *live* policy in :class:`~masksearch.models.local.LocalChatModel` (no copy),
  runs :func:`~masksearch.graphs.student.arun_student` for every prompt in one ``asyncio.gather``
  (so the model batches the concurrent turns into one ``generate``), and returns, per rollout,
  ``prompt_ids``, ``completion_ids`` (the model's tokens and the ``<information>`` turns exactly as
  the model saw them), ``logprobs``, ``env_mask`` (1 model token, 0 environment token — TRL drops
  the 0s from the loss), plus fields the rewards read: ``golden_answers``, ``answer_match``,
  ``mask_count``, ``answer``, ``num_searches``, ``num_model_tokens``, ``status`` and ``trajectory``.
* :func:`run_grpo` wires dataset (with the mask-count curriculum), rewards, rollouts and TRL's
  ``GRPOConfig`` together, logs reward/length curves to ``grpo_log.jsonl`` and plots them.
* :func:`main` is ``masksearch train grpo --config configs/grpo.yaml [--flag value ...]``: TRL's
  ``TrlParser`` reads :class:`GRPOScriptArguments`, TRL's ``GRPOConfig`` and ``ModelConfig`` from
  the YAML and the flags, so every TRL option (``loss_type``, ``beta``, ``num_generations``,
  ``max_completion_length``, ``use_vllm`` ...) works without being re-declared here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from masksearch.data.qa import QAExample, load_qa, qa_from_record
from masksearch.errors import MaskSearchError
from masksearch.utils.aio import run_sync
from masksearch.training.curriculum import CurriculumConfig, curriculum_order
from masksearch.training.rewards import RewardOptions, build_rewards

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


def _eos_id(tokenizer: Any) -> int:
    for name in ("eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


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
        t0 = time.perf_counter()
        trajs = self.run_trajectories(prompts, trainer)
        out = self.to_trl(trajs, trainer, prompts)
        n_model = sum(out["num_model_tokens"])
        n_env = sum(len(c) for c in out["completion_ids"]) - n_model
        self.history.append(RolloutRecord(time.perf_counter() - t0, len(trajs), n_model, n_env))
        self._log(trainer, out)
        if self.on_rollouts is not None:
            self.on_rollouts(trajs)
        return out

    def to_trl(self, trajs: Sequence[Any], trainer: Any, prompts: Sequence[Any] | None = None) -> dict[str, list[Any]]:
        tok = getattr(trainer, "processing_class", None)
        eos = _eos_id(tok)
        limit = self.max_completion(trainer)
        out: dict[str, list[Any]] = {k: [] for k in (
            "prompt_ids", "completion_ids", "logprobs", "env_mask", "golden_answers", "answer_match",
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

    @staticmethod
    def _log(trainer: Any, out: dict[str, list[Any]]) -> None:
        """Rollout statistics into TRL's metric log (averaged and logged with the step)."""
        metrics = getattr(trainer, "_metrics", None)
        if not isinstance(metrics, dict) or not out["status"]:
            return
        mode = "train" if getattr(getattr(trainer, "model", None), "training", True) else "eval"
        m = metrics.get(mode)
        if m is None:
            return
        n = len(out["status"])
        m["rollout/num_searches"].append(sum(out["num_searches"]) / n)
        mcs = [mc for mc in out["mask_count"] if isinstance(mc, int)]
        if mcs:  # where the curriculum is
            m["rollout/mask_count"].append(sum(mcs) / len(mcs))
        m["rollout/env_tokens"].append(sum(len(c) - k for c, k in zip(out["completion_ids"], out["num_model_tokens"])) / n)
        for st in ("answered", "turn_cap", "length", "malformed", "error"):
            m[f"rollout/{st}"].append(sum(s == st for s in out["status"]) / n)


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


def make_rollout_func(
    retriever: Any = None,
    settings: RolloutSettings | None = None,
    *,
    examples: Iterable[Any] | None = None,
    context_factory: Callable[[Any, Any], Any] | None = None,
    chat_model_factory: Callable[[Any], Any] | None = None,
    on_rollouts: Callable[[list[Any]], None] | None = None,
) -> StudentRollout:
    """A TRL ``rollout_func`` that runs the student graph for each prompt.

    ``retriever``: a ``BaseRetriever`` or a spec (``"bm25:DIR"``).  ``examples``: QA examples or
    dataset rows, so each prompt finds its gold answers and mask count.  ``context_factory(chat_model,
    trainer) -> StudentContext`` replaces the default context; ``chat_model_factory(trainer)``
    replaces the default ``LocalChatModel.from_model(trainer.model, trainer.processing_class)``;
    ``on_rollouts(trajectories)`` sees every batch (e.g. to save them).
    """
    return StudentRollout(retriever, settings, examples, context_factory, chat_model_factory, on_rollouts)


# --------------------------------------------------------------------------- curves


def _curves_callback(output_dir: str) -> Any:
    from transformers import TrainerCallback

    class CurvesCallback(TrainerCallback):
        """Appends every log entry to ``grpo_log.jsonl`` and re-plots ``grpo_curves.png``."""

        def __init__(self) -> None:
            self.path = Path(output_dir) / "grpo_log.jsonl"
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if not logs or not state.is_world_process_zero:
                return
            row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            self.rows.append(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.is_world_process_zero and self.rows:
                plot_curves(self.rows, Path(output_dir) / "grpo_curves.png")

    return CurvesCallback()


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Reward (total and per term) and completion-length curves over steps, as a PNG."""
    rows = [r for r in rows if "reward" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, [r["reward"] for r in rows], label="reward (weighted)", lw=2)
    for key in sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax1.plot(steps, [r.get(key, math.nan) for r in rows], label=key.split("/")[1], lw=1)
    ax1.set_xlabel("step"), ax1.set_ylabel("mean reward"), ax1.legend(fontsize=8), ax1.set_title("GRPO reward")
    for key, label in (("completions/mean_length", "model tokens / rollout"), ("rollout/env_tokens", "env tokens / rollout")):
        if any(key in r for r in rows):
            ax2.plot(steps, [r.get(key, math.nan) for r in rows], label=label)
    ax2.set_xlabel("step"), ax2.set_ylabel("tokens"), ax2.legend(fontsize=8), ax2.set_title("rollout length")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- script


@dataclass
class GRPOScriptArguments:
    """Our options next to TRL's ``GRPOConfig``/``ModelConfig`` (all settable in YAML or flags)."""

    train_file: str = field(default="", metadata={"help": "RAMP or QA JSONL with the training questions."})
    retriever: str = field(default="", metadata={"help": "Retriever spec for rollouts, e.g. bm25:PATH/TO/INDEX."})
    search_cache: str = field(default="", metadata={"help": "Search cache FILE[@read-write|read-only] (replayable rollouts)."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training questions."})
    mask_counts: list[int] | None = field(default=None, metadata={"help": "Keep only RAMP questions with these mask counts."})
    curriculum: str = field(default="staged", metadata={"help": "staged (1->2->3->4 masks) | mixed | none."})
    curriculum_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    k: int = field(default=3, metadata={"help": "Documents per search."})
    max_turns: int = field(default=4, metadata={"help": "Turn cap of the student graph."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens per policy turn."})
    info_max_tokens: int = field(default=256, metadata={"help": "Token budget of one <information> block."})
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "recall"], metadata={
        "help": "Rewards by name (format, recall, f1, em, length, judge) or dotted path pkg.mod:func; "
                "weights in GRPOConfig.reward_weights (unset: format 0.5, the others 1.0)."})
    recall_min_precision: float = field(default=2 / 3, metadata={
        "help": "The recall reward is scaled by min(1, precision / this); 0 = the paper's plain recall."})
    length_soft: int = 256
    length_hard: int = 512
    judge_model: str | None = field(default=None, metadata={"help": "Chat model spec for the judge reward."})
    save_rollouts: bool = field(default=True, metadata={"help": "Write every rollout to OUTPUT_DIR/rollouts.jsonl."})
    rollout_backend: str = field(default="policy", metadata={
        "help": "policy: the trainer's model through the batching LocalChatModel; vllm: TRL's vLLM server."})

    def reward_options(self) -> RewardOptions:
        return RewardOptions(length_soft=self.length_soft, length_hard=self.length_hard,
                             judge_model=self.judge_model, recall_min_precision=self.recall_min_precision)


def resolve_model_path(spec: str) -> str:
    """``smollm2`` (the embedded model, materialised once), ``hf:ID_OR_PATH`` or a plain path/id."""
    if spec in ("", "smollm2", "embedded"):
        from masksearch.models.local import materialize_embedded

        return str(materialize_embedded())
    return spec[3:] if spec.startswith("hf:") else spec


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
    from transformers import AutoTokenizer
    from trl import GRPOTrainer
    from trl.trainer.utils import get_peft_config

    from masksearch.protocol import ensure_student_template
    from masksearch.training.config import adapt_to_device

    adapt_to_device(training_args)
    if examples is None:
        if not script.train_file or not os.path.exists(script.train_file):
            raise MaskSearchError(f"train_file {script.train_file!r} not found: pass --train_file PATH.jsonl "
                                  "(a RAMP file from `masksearch ramp` or a QA JSONL)")
        examples = load_qa(script.train_file, limit=script.limit)
    elif script.limit:
        examples = list(examples)[: script.limit]
    if retriever is None:
        if not script.retriever:
            raise MaskSearchError("no retriever for rollouts: pass --retriever bm25:INDEX_DIR "
                                  "(build one with `masksearch index`)")
        from masksearch.retrieval import make_retriever

        retriever = make_retriever(script.retriever, search_cache=script.search_cache or None)

    spec = getattr(model_args, "model_name_or_path", None) or "smollm2"
    if model is None:
        model = resolve_model_path(spec)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model if isinstance(model, str) else model.name_or_path)
    ensure_student_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    if script.rollout_backend not in ("policy", "vllm"):
        raise MaskSearchError(f"unknown rollout_backend {script.rollout_backend!r}: use policy or vllm")
    if script.curriculum != "none":
        training_args.shuffle_dataset = False  # the curriculum is the order
    dataset = build_dataset(examples, script, training_args)
    funcs, weights = build_rewards(script.reward_funcs, training_args.reward_weights, script.reward_options())
    for f, w in extra_rewards:
        funcs, weights = [*funcs, f], [*weights, float(w)]
    training_args.reward_weights = weights

    out_dir = Path(training_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rollout_log = out_dir / "rollouts.jsonl"

    def save(trajs: list[Any]) -> None:
        with open(rollout_log, "a", encoding="utf-8") as f:
            for t in trajs:
                d = t.to_dict()
                for key in ("prompt_ids", "completion_ids", "completion_mask", "completion_logprobs", "llm_calls"):
                    d.pop(key, None)
                f.write(json.dumps(d, ensure_ascii=False) + "\n")

    rollout = make_rollout_func(
        retriever,
        RolloutSettings(k=script.k, max_turns=script.max_turns, max_new_tokens=script.max_new_tokens,
                        info_max_tokens=script.info_max_tokens),
        examples=examples,
        on_rollouts=save if script.save_rollouts else None,
        chat_model_factory=vllm_token_model_factory if script.rollout_backend == "vllm" else None,
    )
    curves = _curves_callback(str(out_dir))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
        peft_config=get_peft_config(model_args) if model_args is not None else None,
        callbacks=[curves, *callbacks],
    )
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    rewards = [r["reward"] for r in curves.rows if "reward" in r]
    rollout_s = sum(h.seconds for h in rollout.history)
    summary = {
        "output_dir": str(out_dir),
        "log": str(curves.path),
        "plot": str(out_dir / "grpo_curves.png") if rewards else None,
        "steps": trainer.state.global_step,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "train_seconds": round(train_s, 2),
        "rollout_seconds": round(rollout_s, 2),
        "rollouts": sum(h.rollouts for h in rollout.history),
        "loss_type": training_args.loss_type,
        "beta": training_args.beta,
    }
    summary["trainer"] = trainer  # for callers that want to keep going; dropped by main()
    return summary


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
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main(sys.argv[1:]))
