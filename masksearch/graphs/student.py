"""The student graph: one policy model that thinks, searches and answers, in a LangGraph loop.

``policy`` asks the model for the next turn (it stops at ``</search>`` or ``</answer>``);
``search`` runs the queries through the configured retriever and appends an
``<information>…</information>`` observation; the loop ends at an answer.  After ``max_turns``
environment replies the observation also asks once for the final answer, and a reply that still
does not answer ends the run with status ``turn_cap``.  With ``force_answer`` (token models) that
reply is set aside and the turn is generated again from a written ``<answer>`` (budget forcing:
the run is scored on what the model answers at its budget; ``metadata["forced_answer"]``).  A
malformed reply gets one short correction; a second ends the run with status ``malformed``.  A
failed search becomes an observation saying so.  The same graph serves inference, evaluation (the
untrained embedded model here *is* the Agent-PE baseline) and GRPO rollouts.

With a token model (``LocalChatModel``) the run keeps the exact token stream: ``prompt_ids`` is the
chat template of [system, question] with the generation prompt; every policy turn continues
``prompt_ids + completion_ids``; generated ids go in with mask 1 and their log-probs, environment
text (the template's glue around each ``<information>`` message) with mask 0 and log-prob 0.0.
``max_completion_tokens`` caps that whole completion; a run cut by it ends with status ``length``.

Usage::

    ctx = StudentContext(model=make_chat_model("smollm2"), retriever=make_retriever("bm25:PATH"))
    traj = run_student(example, ctx)
    trajs = run_student_batch(examples, ctx, concurrency=8)
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import NotRequired, TypedDict

from masksearch.agents.student import (
    FINAL_ANSWER_PROMPT,
    PolicyOutput,
    apolicy_ids,
    apolicy_messages,
    correction_message,
    encode,
    environment_text,
    is_token_model,
    model_name,
    prompt_token_ids,
)
from masksearch.data.qa import QAExample
from masksearch.errors import MaskSearchError
from masksearch.graphs.resources import DEFAULT_MODEL, SHARED_BM25, aresolve_model, aresolve_retriever
from masksearch.protocol import ANSWER, STUDENT_SYSTEM_PROMPT, information_block, parse_action
from masksearch.trajectory import Document, Provenance, Step, Trajectory
from masksearch.utils.aio import run_sync

MAX_CORRECTIONS = 1


@dataclass
class StudentContext:
    """Run-scoped dependencies and settings of the student graph (LangGraph ``context_schema``).

    ``model`` is a LangChain chat model or a spec string for
    :func:`masksearch.models.make_chat_model` (built with ``model_options``); ``retriever`` is a
    ``BaseRetriever`` or a spec for :func:`masksearch.retrieval.make_retriever`, ``"bm25:shared"``
    being the shared corpus's BM25 index (built on first use into the cache).  Specs are resolved
    once per process, off the event loop (:mod:`masksearch.graphs.resources`), so the LangGraph
    server and Studio, which can only send JSON, run the graph with the defaults or any spec.

    ``max_new_tokens``/``temperature``/``top_p``/``max_completion_tokens`` apply to token models
    (``LocalChatModel``); an API model uses its own generation settings (``model_options``).
    """

    model: Any = DEFAULT_MODEL  # a LangChain BaseChatModel, or a model spec
    retriever: Any = SHARED_BM25  # a LangChain BaseRetriever, or a retriever spec
    k: int = 3
    max_turns: int = 4
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    info_max_tokens: int = 400
    max_completion_tokens: int | None = None
    force_answer: bool = False  # at the turn cap, continue a non-answer from "<answer>" (token models)
    system_prompt: str | None = STUDENT_SYSTEM_PROMPT
    name: str | None = None  # provenance name of the student; default: the model's spec
    round: int | None = None  # self-evolving distillation round, recorded in provenance
    model_options: dict[str, Any] = field(default_factory=dict)  # make_chat_model options of a spec

    async def aresolved(self) -> "StudentContext":
        """This context with ``model`` and ``retriever`` as live objects (itself when they are
        already); specs are loaded in a worker thread, once per process."""
        if not isinstance(self.model, str) and not isinstance(self.retriever, str):
            return self
        model = await aresolve_model(self.model, self.model_options)
        retriever = await aresolve_retriever(self.retriever, self.k)
        return dataclasses.replace(self, model=model, retriever=retriever)


async def _context(runtime: Runtime[StudentContext]) -> StudentContext:
    """The run's context, resolved; a run started with no context (the LangGraph server's
    default assistant) gets the defaults."""
    return await (runtime.context or StudentContext()).aresolved()


class StudentInput(TypedDict):
    """A run's input: a question; the gold answers and the rest are optional (Studio's input form).

    ``golden_answers``/``answer_match``/``id``/``source``/``metadata`` are recorded with the run
    (``example``) and never shown to the model."""

    question: str
    golden_answers: NotRequired[list[str]]
    answer_match: NotRequired[str]  # "any" (default) or "all" (every span, in order: RAMP)
    id: NotRequired[str]
    source: NotRequired[str]
    metadata: NotRequired[dict[str, Any]]


class StudentState(TypedDict, total=False):
    # the input (StudentInput); the first policy turn starts the conversation from it
    question: str
    golden_answers: list[str]
    answer_match: str
    id: str
    source: str
    metadata: dict[str, Any]
    # the run
    example: dict[str, Any]
    messages: list[dict[str, str]]
    steps: list[dict[str, Any]]
    turns: int  # environment replies so far (searches + corrections)
    corrections: int
    final_requested: bool
    pending: dict[str, Any] | None
    answer: str | None
    final_raw: str
    final_thought: str
    forced_answer: bool
    status: str
    reason: str
    prompt_ids: list[int] | None
    completion_ids: list[int] | None
    completion_mask: list[int] | None
    completion_logprobs: list[float] | None
    llm_calls: list[dict[str, Any]]


# ------------------------------------------------------------------------------ helpers
def _budget_left(state: StudentState, ctx: StudentContext) -> int | None:
    if ctx.max_completion_tokens is None or state.get("completion_ids") is None:
        return None
    return ctx.max_completion_tokens - len(state["completion_ids"])


def _append_env(state: StudentState, ctx: StudentContext, update: dict[str, Any], assistant_text: str,
                out_ended_with_eos: bool, env_content: str) -> bool:
    """Append an environment message to ``update`` (messages + token stream).  Returns False when
    the environment tokens do not fit in ``max_completion_tokens`` (they are cut to fit)."""
    history = state["messages"]
    update["messages"] = history + [{"role": "assistant", "content": assistant_text},
                                    {"role": "user", "content": env_content}]
    if update.get("completion_ids") is None:
        return True
    tok = ctx.model.tokenizer
    env_ids = encode(tok, environment_text(tok, history, assistant_text, env_content, out_ended_with_eos))
    fits = True
    if ctx.max_completion_tokens is not None:
        room = ctx.max_completion_tokens - len(update["completion_ids"])
        if len(env_ids) > room:
            env_ids, fits = env_ids[: max(room, 0)], False
    update["completion_ids"] = update["completion_ids"] + env_ids
    update["completion_mask"] = update["completion_mask"] + [0] * len(env_ids)
    update["completion_logprobs"] = update["completion_logprobs"] + [0.0] * len(env_ids)
    return fits


# ------------------------------------------------------------------------------ nodes
async def policy_node(state: StudentState, runtime: Runtime[StudentContext]) -> dict[str, Any]:
    """One policy turn.  The first turn of a run also starts the conversation (system prompt,
    question, prompt token ids) from the input, so a run's input can be just ``{"question": …}``."""
    ctx = await _context(runtime)
    if state.get("messages") is not None:
        return await _policy_turn(state, ctx)
    start = initial_state(example_from_input(state), ctx)
    return {**start, **await _policy_turn({**state, **start}, ctx)}


async def _policy_turn(state: StudentState, ctx: StudentContext) -> dict[str, Any]:
    final = bool(state.get("final_requested"))
    update: dict[str, Any] = {}
    budget_cut = False
    if is_token_model(ctx.model):
        left = _budget_left(state, ctx)
        if left is not None and left <= 0:
            return {"status": "length", "reason": "max_completion_tokens reached"}
        max_new = ctx.max_new_tokens if left is None else min(ctx.max_new_tokens, left)
        out: PolicyOutput = await apolicy_ids(
            ctx.model, state["prompt_ids"] + state["completion_ids"], max_new_tokens=max_new,
            temperature=ctx.temperature, top_p=ctx.top_p)
        update["completion_ids"] = state["completion_ids"] + out.token_ids
        update["completion_mask"] = state["completion_mask"] + [1] * len(out.token_ids)
        update["completion_logprobs"] = state["completion_logprobs"] + out.logprobs
        budget_cut = out.finish_reason == "length" and max_new < ctx.max_new_tokens
    else:
        out = await apolicy_messages(ctx.model, state["messages"])
    update["llm_calls"] = state.get("llm_calls", []) + [
        {"node": "policy", "finish_reason": out.finish_reason,
         "n_tokens": len(out.token_ids) if out.token_ids is not None else None}]
    action = parse_action(out.text)

    if budget_cut:
        update.update(status="length", reason="max_completion_tokens reached", final_raw=out.text,
                      messages=state["messages"] + [{"role": "assistant", "content": out.text}])
        return update
    if action.kind == "answer":
        update.update(status="answered", answer=action.answer, final_raw=out.text, final_thought=action.think,
                      messages=state["messages"] + [{"role": "assistant", "content": out.text}])
        if action.trailing:
            update["reason"] = "text after </answer>"
        return update
    if final and ctx.force_answer and is_token_model(ctx.model):
        return await _forced_answer(state, ctx, update, out.text)
    if final:
        update.update(status="turn_cap", final_raw=out.text, final_thought=action.think,
                      reason=f"no answer after the final-answer request ({action.reason or action.kind})",
                      messages=state["messages"] + [{"role": "assistant", "content": out.text}])
        return update
    if action.kind == "search":
        update["pending"] = {"thought": action.think, "queries": action.queries, "raw": out.text,
                             "eos": out.ended_with_eos}
        return update

    # malformed
    reason = action.reason or "malformed"
    if out.finish_reason == "length":
        reason = f"{reason} (turn cut at max_new_tokens)"
    if state.get("corrections", 0) >= MAX_CORRECTIONS:
        update.update(status="malformed", reason=reason, final_raw=out.text, final_thought=action.think,
                      messages=state["messages"] + [{"role": "assistant", "content": out.text}])
        return update
    turns = state.get("turns", 0) + 1
    content = correction_message(action.reason)
    final_now = turns >= ctx.max_turns
    if final_now:
        content += "\n" + FINAL_ANSWER_PROMPT
    step = Step(thought=action.think, raw=out.text, error=f"malformed: {reason}", information=content)
    fits = _append_env(state, ctx, update, out.text, out.ended_with_eos, content)
    update.update(steps=state.get("steps", []) + [dataclasses.asdict(step)], turns=turns,
                  corrections=state.get("corrections", 0) + 1, final_requested=final_now)
    if not fits:
        update.update(status="length", reason="max_completion_tokens reached")
        return update
    return update


async def _forced_answer(state: StudentState, ctx: StudentContext, update: dict[str, Any],
                         declined: str) -> dict[str, Any]:
    """The final turn again, continued from a written ``<answer>``: the declined reply leaves the
    token stream (it stays in ``llm_calls``); the forced prefix enters it with mask 0 and the
    model's answer tokens with mask 1, so a GRPO rollout never trains on words it did not choose."""
    tok = ctx.model.tokenizer
    prefix = f"<{ANSWER}>"
    forced = encode(tok, prefix)
    base = state["completion_ids"]
    left = None if ctx.max_completion_tokens is None else ctx.max_completion_tokens - len(base) - len(forced)
    if left is not None and left <= 0:
        return {"status": "length", "reason": "max_completion_tokens reached", "llm_calls": update["llm_calls"]}
    max_new = ctx.max_new_tokens if left is None else min(ctx.max_new_tokens, left)
    out = await apolicy_ids(ctx.model, state["prompt_ids"] + base + forced, max_new_tokens=max_new,
                            temperature=ctx.temperature, top_p=ctx.top_p)
    text = prefix + out.text
    action = parse_action(text)
    update = {
        "completion_ids": base + forced + out.token_ids,
        "completion_mask": state["completion_mask"] + [0] * len(forced) + [1] * len(out.token_ids),
        "completion_logprobs": state["completion_logprobs"] + [0.0] * len(forced) + out.logprobs,
        "llm_calls": update["llm_calls"] + [{"node": "policy", "forced_answer": True, "declined": declined,
                                             "finish_reason": out.finish_reason, "n_tokens": len(out.token_ids)}],
        "messages": state["messages"] + [{"role": "assistant", "content": text}],
        "final_raw": text, "final_thought": "", "forced_answer": True,
    }
    if action.kind == "answer":
        update.update(status="answered", answer=action.answer, reason="answer forced at the turn cap")
    else:
        update.update(status="turn_cap", reason=f"no answer after the forced answer ({action.reason or action.kind})")
    return update


async def search_node(state: StudentState, runtime: Runtime[StudentContext]) -> dict[str, Any]:
    from masksearch.retrieval.tool import SearchError, format_documents, search_with_retry

    ctx = await _context(runtime)
    pending = state.get("pending") or {}
    queries = list(pending.get("queries", []))
    error = None
    documents: list[Document] = []
    try:
        results = await asyncio.to_thread(search_with_retry, ctx.retriever, queries, ctx.k)
        lc_docs = [d for per_query in results for d in per_query]
        documents = [Document.from_langchain(d) for d in lc_docs]
        tok = getattr(ctx.model, "tokenizer", None) if is_token_model(ctx.model) else None
        info = information_block(format_documents(lc_docs, max_tokens=ctx.info_max_tokens, tokenizer=tok))
    except SearchError as e:
        error = str(e)
        info = information_block(f"Search failed: {error}")
    turns = state.get("turns", 0) + 1
    final_now = turns >= ctx.max_turns
    content = info + ("\n" + FINAL_ANSWER_PROMPT if final_now else "")
    step = Step(thought=pending.get("thought", ""), queries=queries, documents=documents,
                raw=pending.get("raw", ""), error=error, information=content)
    update: dict[str, Any] = {
        "completion_ids": state.get("completion_ids"),
        "completion_mask": state.get("completion_mask"),
        "completion_logprobs": state.get("completion_logprobs"),
    }
    fits = _append_env(state, ctx, update, pending.get("raw", ""), bool(pending.get("eos")), content)
    update.update(steps=state.get("steps", []) + [dataclasses.asdict(step)], turns=turns,
                  final_requested=final_now, pending=None)
    if not fits:
        update.update(status="length", reason="max_completion_tokens reached")
        return update
    return update


# ------------------------------------------------------------------------------ routing
# The nodes return plain updates and these edges route on the state, so an edit of the state
# (``update_state``: Studio's state editor, time travel, an edit while paused before ``search``)
# routes again from the edited values, as the teacher's fan-out edge does.
def after_policy(state: StudentState) -> Literal["search", "policy", "__end__"]:
    """End once the run has a final status; search when the turn asked for it (``pending``);
    otherwise (a correction was sent) ask the policy again."""
    if state.get("status", "running") != "running":
        return END
    return "search" if state.get("pending") else "policy"


def after_search(state: StudentState) -> Literal["policy", "__end__"]:
    return END if state.get("status", "running") != "running" else "policy"


def build_student_graph(checkpointer: Any = None):
    """The compiled student graph (``context_schema=StudentContext``, input ``StudentInput``)."""
    g = StateGraph(StudentState, context_schema=StudentContext, input_schema=StudentInput)
    g.add_node("policy", policy_node)
    g.add_node("search", search_node)
    g.add_edge(START, "policy")
    g.add_conditional_edges("policy", after_policy, ["search", "policy", END])
    g.add_conditional_edges("search", after_search, ["policy", END])
    return g.compile(checkpointer=checkpointer, name="student")


_GRAPH = None


def _default_graph():
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_student_graph()
    return _GRAPH


# ------------------------------------------------------------------------------ running
def example_input(example: QAExample) -> StudentInput:
    """The graph input for ``example`` (a :class:`StudentInput`)."""
    return dataclasses.asdict(example)  # type: ignore[return-value]


def example_from_input(state: Mapping[str, Any]) -> QAExample:
    """The :class:`QAExample` of a run's input; only ``question`` is required."""
    q = state.get("question")
    if not isinstance(q, str) or not q.strip():
        raise MaskSearchError('the student graph\'s input needs a question: {"question": "..."}')
    gold = state.get("golden_answers") or []
    if isinstance(gold, str):
        gold = [gold]
    return QAExample(id=str(state.get("id") or uuid.uuid4().hex[:12]), question=q.strip(),
                     golden_answers=[str(g) for g in gold], answer_match=str(state.get("answer_match") or "any"),
                     source=str(state.get("source") or ""), metadata=dict(state.get("metadata") or {}))


def initial_state(example: QAExample, context: StudentContext) -> StudentState:
    messages = []
    if context.system_prompt:
        messages.append({"role": "system", "content": context.system_prompt})
    messages.append({"role": "user", "content": example.question})
    state: StudentState = {
        "example": dataclasses.asdict(example), "messages": messages, "steps": [], "turns": 0,
        "corrections": 0, "final_requested": False, "pending": None, "answer": None, "final_raw": "",
        "final_thought": "", "status": "running", "reason": "", "llm_calls": [],
        "prompt_ids": None, "completion_ids": None, "completion_mask": None, "completion_logprobs": None,
    }
    if is_token_model(context.model):
        state.update(prompt_ids=prompt_token_ids(context.model.tokenizer, messages), completion_ids=[],
                     completion_mask=[], completion_logprobs=[])
    return state


def _provenance(example: QAExample, context: StudentContext) -> Provenance:
    policy = context.model if isinstance(context.model, str) else model_name(context.model)
    retr = context.retriever if isinstance(context.retriever, str) else (
        getattr(context.retriever, "spec", None) or type(context.retriever).__name__)
    return Provenance(graph="student", teacher=context.name or policy, models={"policy": policy},
                      retriever=str(retr), example_id=example.id, source=example.source, round=context.round)


def trajectory_from_state(example: QAExample, context: StudentContext, state: dict[str, Any]) -> Trajectory:
    steps = []
    for s in state.get("steps", []):
        s = dict(s)
        s["documents"] = [Document(**d) for d in s.get("documents", [])]
        steps.append(Step(**s))
    meta: dict[str, Any] = {"answer_match": example.answer_match}
    if state.get("forced_answer"):
        meta["forced_answer"] = True
    if example.mask_count is not None:
        meta["mask_count"] = example.mask_count
    status = state.get("status") or "error"
    if status == "running":
        status, state = "error", {**state, "reason": state.get("reason") or "graph ended without a status"}
    return Trajectory(
        id=example.id, question=example.question, golden_answers=list(example.golden_answers), steps=steps,
        answer=state.get("answer"), final_thought=state.get("final_thought", ""),
        final_raw=state.get("final_raw", ""), status=status, reason=state.get("reason", ""),
        provenance=_provenance(example, context), metadata=meta, llm_calls=state.get("llm_calls", []),
        prompt_ids=state.get("prompt_ids"), completion_ids=state.get("completion_ids"),
        completion_mask=state.get("completion_mask"), completion_logprobs=state.get("completion_logprobs"),
    )


async def arun_student(example: QAExample, context: StudentContext, graph: Any = None,
                       config: dict[str, Any] | None = None) -> Trajectory:
    """Run the student on one question.  Never raises for a model/retriever failure: the
    trajectory comes back with status ``error`` and the reason."""
    graph = graph or _default_graph()
    cfg = dict(config or {})
    cfg.setdefault("recursion_limit", 4 * (context.max_turns + MAX_CORRECTIONS) + 10)
    if getattr(graph, "checkpointer", None) is not None:
        cfg.setdefault("configurable", {}).setdefault("thread_id", example.id)
    try:
        state = await graph.ainvoke(example_input(example), config=cfg, context=await context.aresolved())
    except Exception as e:  # a broken model or retriever must not take a whole batch down
        traj = trajectory_from_state(example, context, {"status": "error"})
        traj.reason = f"{type(e).__name__}: {e}"
        traj.metadata["traceback"] = traceback.format_exc(limit=5)
        return traj
    return trajectory_from_state(example, context, state)


def run_student(example: QAExample, context: StudentContext, graph: Any = None) -> Trajectory:
    return run_sync(arun_student(example, context, graph))


async def arun_student_batch(examples: Sequence[QAExample], context: StudentContext, concurrency: int = 8,
                             progress: bool = True, graph: Any = None) -> list[Trajectory]:
    """Run many questions with at most ``concurrency`` in flight; a token model batches the
    concurrent policy calls into one ``generate``.  Order of the result = order of ``examples``."""
    sem = asyncio.Semaphore(max(1, concurrency))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="student", unit="q")

    async def one(ex: QAExample) -> Trajectory:
        async with sem:
            t = await arun_student(ex, context, graph)
        if bar is not None:
            bar.update(1)
        return t

    try:
        return list(await asyncio.gather(*(one(ex) for ex in examples)))
    finally:
        if bar is not None:
            bar.close()


def run_student_batch(examples: Sequence[QAExample], context: StudentContext, concurrency: int = 8,
                      progress: bool = True, graph: Any = None) -> list[Trajectory]:
    return run_sync(arun_student_batch(examples, context, concurrency, progress, graph))


__all__ = [
    "StudentContext", "StudentState", "StudentInput", "example_input", "example_from_input", "graph", "build_student_graph", "run_student", "arun_student",
    "run_student_batch", "arun_student_batch", "trajectory_from_state", "initial_state",
]


# LangGraph server / Studio entry point (langgraph.json); the context defaults run as they are.
graph = build_student_graph()
