"""The multi-agent teacher as a LangGraph state machine.

::

    START -> planner -> rewriter -(Send x N)-> search -> merge -> observer -> judge -> END
                ^            ^                                      |
                |            +---------- next sub-query ------------+
                +------------------------ re-plan ------------------+

* **planner** writes a thought and the first sub-query (again, with the history, on a re-plan);
* **rewriter** turns the sub-query into several search queries (the sub-query itself first);
* **search** runs once per query, in parallel (``Send``), through the retriever in the run context;
  a failed search is recorded as an observation, never raised;
* **merge** interleaves the result lists round-robin, deduplicates, caps (``max_docs``) and records
  a :class:`~masksearch.trajectory.Step`;
* **observer** answers, asks for the next sub-query or sends the work back to the planner; a reply
  still refused after its retries (unreadable, or an answer the documents do not hold) also sends
  the work back to the planner while turns remain (``replan_on_refusal``), and ends the run
  ``malformed`` on the last turn; after ``max_turns`` observer turns the run ends ``turn_cap``;
* **judge** records the string verdict and, optionally, an LLM verdict.

Models and the retriever travel in the run context (:class:`TeacherContext`, LangGraph's
``context_schema``/``Runtime``), never in the checkpointed state, which holds only plain JSON.
"""

from __future__ import annotations

import asyncio
import operator
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

from langchain_core.callbacks import BaseCallbackHandler
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send
from typing_extensions import NotRequired, TypedDict

from masksearch.agents import judge as judge_mod
from masksearch.agents import prompts
from masksearch.agents import teacher as roles
from masksearch.graphs import resources
from masksearch.graphs.resources import DEFAULT_MODEL, SHARED_BM25
from masksearch.protocol import information_block, message_text
from masksearch.trajectory import Document, Provenance, Step, Trajectory
from masksearch.utils.names import spec_name
from masksearch.utils.scrub import scrub


# ----------------------------------------------------------------------------- run context
def describe_model(model: Any) -> str:
    """A short, secret-free name for a model spec or object."""
    return spec_name(model)


def describe_retriever(retriever: Any) -> str:
    return spec_name(retriever)


@dataclass
class TeacherContext:
    """Run-scoped dependencies and knobs of the teacher graph.

    ``models`` is one model for every role, or a role -> model mapping (``"default"`` fills the
    roles not named); each model is a spec string for :func:`masksearch.models.make_chat_model` or
    a LangChain ``BaseChatModel``.  ``retriever`` is a spec for
    :func:`masksearch.retrieval.make_retriever` (``"bm25:shared"``: the shared corpus's BM25 index,
    built on first use into the cache) or any ``BaseRetriever``.  Specs are resolved once per
    process and cached (:mod:`masksearch.graphs.resources`); the nodes resolve them off the event
    loop (:meth:`aresolve`), so the LangGraph server and Studio, which send JSON, run as they are.
    """

    models: Any = DEFAULT_MODEL
    retriever: Any = SHARED_BM25
    k: int = 5  # documents per search query
    max_docs: int = 10  # documents kept after the round-robin merge
    max_turns: int = 5  # observer turns
    n_queries: int = 3  # rewrites asked of the rewriter
    max_queries: int = 5  # queries searched per turn (sub-query + rewrites)
    info_max_tokens: int = 512  # budget of the <information> block
    llm_judge: bool = False  # also ask the "judge" model for a verdict
    retries: int = 1  # retries of a malformed role reply
    retry_temperature: float | None = 0.7  # a retry samples (a greedy retry repeats the refused reply)
    replan_on_refusal: bool = True  # an observer reply refused after its retries re-plans while turns remain
    search_retries: int = 1  # retries of a failed search (then it becomes an observation)
    name: str = ""  # teacher name recorded in the provenance (default: "llm:<models>")
    model_options: dict[str, Any] = field(default_factory=dict)  # passed to make_chat_model

    def _spec_for(self, role: str) -> Any:
        if isinstance(self.models, Mapping):
            return self.models.get(role) or self.models.get("default") or DEFAULT_MODEL
        return self.models

    def model(self, role: str) -> Any:
        """The chat model of ``role`` (a spec is loaded once per process; blocking on first use:
        async code awaits :meth:`aresolve` first)."""
        return resources.resolve_model(self._spec_for(role), self.model_options)

    def get_retriever(self) -> Any:
        if self.retriever is None:
            from masksearch.errors import MaskSearchError

            raise MaskSearchError("the teacher needs a retriever: pass --retriever bm25:DIR (or any BaseRetriever)")
        return resources.resolve_retriever(self.retriever, self.k)

    def _roles(self) -> list[str]:
        return [r for r in roles.ROLES if r != "judge" or self.llm_judge]

    async def aresolve(self) -> "TeacherContext":
        """Load every spec this run needs (role models, retriever) in a worker thread, once per
        process; afterwards :meth:`model` and :meth:`get_retriever` return at once."""
        for role in self._roles():
            await resources.aresolve_model(self._spec_for(role), self.model_options)
        if self.retriever is not None:
            await resources.aresolve_retriever(self.retriever, self.k)
        return self

    def model_specs(self) -> dict[str, str]:
        return {r: describe_model(self._spec_for(r)) for r in self._roles()}

    def teacher_name(self) -> str:
        if self.name:
            return self.name
        specs = sorted(set(self.model_specs().values()))
        return "llm:" + "+".join(specs)


async def _context(runtime: Runtime[TeacherContext]) -> TeacherContext:
    """The run's context with its specs loaded (off the event loop); a run started with no
    context (the LangGraph server's default assistant) gets the defaults."""
    return await (runtime.context or TeacherContext()).aresolve()


# ----------------------------------------------------------------------------- state
CLEAR = "__clear__"


def _collect(left: list | None, right: Any) -> list:
    """Search results of the current turn: appended by the parallel searches, cleared by merge."""
    if right == CLEAR:
        return []
    return list(left or []) + list(right or [])


def _add_counts(left: dict | None, right: dict | None) -> dict:
    out = dict(left or {})
    for k, v in (right or {}).items():
        out[k] = out.get(k, 0) + v
    return out


class TeacherInput(TypedDict):
    """A run's input: a question; the gold answers (for the judge's verdict) are optional."""

    question: str
    golden_answers: NotRequired[list[str]]
    answer_match: NotRequired[str]  # "any" (default) or "all" (every span, in order: RAMP)
    id: NotRequired[str]


class TeacherState(TypedDict, total=False):
    # input
    id: str
    question: str
    golden_answers: list[str]
    answer_match: str
    # work in progress
    thought: str  # the thought that led to the current sub-query
    sub_query: str
    queries: list[str]
    feedback: str  # the observer's re-plan note
    results: Annotated[list[dict], _collect]
    steps: Annotated[list[dict], operator.add]
    thoughts: Annotated[list[str], operator.add]
    sub_queries: Annotated[list[str], operator.add]
    turn: int  # observer turns taken
    replans: int
    refusals: int  # observer replies refused after their retries that re-planned
    malformed: Annotated[dict[str, int], _add_counts]
    # outcome
    answer: str | None
    final_thought: str
    status: str
    reason: str
    verdicts: dict[str, Any]


class SearchTask(TypedDict):
    query: str
    index: int


def _counts(reasons: list[str], role: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        out[f"{role}:{r}"] = out.get(f"{role}:{r}", 0) + 1
    return out


def _end(update: dict, status: str, reason: str) -> Command:
    return Command(goto="judge", update={**update, "status": status, "reason": reason})


# ----------------------------------------------------------------------------- nodes
async def planner(state: TeacherState, runtime: Runtime[TeacherContext]) -> Command[Literal["rewriter", "judge"]]:
    ctx = await _context(runtime)
    call = await roles.plan(ctx.model("planner"), state["question"], state.get("steps", []),
                            state.get("feedback", ""), ctx.retries, ctx.retry_temperature)
    upd: dict[str, Any] = {"malformed": _counts(call.malformed, "planner")}
    if call.error:
        return _end(upd, "error", call.error)
    if not call.output.ok:
        return _end(upd, "malformed", f"planner output unreadable after retry: {call.output.reason}")
    thought = call.output.think or f"I need to find out: {call.output.text}"
    return Command(goto="rewriter", update={**upd, "thought": thought, "sub_query": call.output.text,
                                            "thoughts": [thought], "sub_queries": [call.output.text],
                                            "feedback": ""})


async def rewriter(state: TeacherState, runtime: Runtime[TeacherContext]) -> dict[str, Any]:
    ctx = await _context(runtime)
    sub = state["sub_query"]
    call = await roles.rewrite(ctx.model("rewriter"), state["question"], sub, ctx.n_queries, ctx.max_queries,
                               ctx.retries, ctx.retry_temperature)
    upd: dict[str, Any] = {"malformed": _counts(call.malformed, "rewriter")}
    if call.error:
        return {**upd, "status": "error", "reason": call.error}
    if not call.output.ok:
        return {**upd, "status": "malformed", "reason": f"rewriter output unreadable after retry: {call.output.reason}"}
    queries: list[str] = []
    for q in [sub] + call.output.queries:
        if q.lower() not in {x.lower() for x in queries}:
            queries.append(q)
    return {**upd, "queries": queries[: max(1, ctx.max_queries)]}


def fan_out(state: TeacherState) -> list[Send] | str:
    """One ``search`` task per rewritten query (``Send``), or to the judge if the rewriter failed."""
    if state.get("status", "running") != "running":
        return "judge"
    return [Send("search", {"query": q, "index": i}) for i, q in enumerate(state["queries"])]


def _retrieve(retriever: Any, query: str, k: int, retries: int = 1) -> list[Any]:
    """Top-``k`` documents for one query through the search tool (retried; raises SearchError)."""
    from masksearch.retrieval.tool import search_with_retry

    return list(search_with_retry(retriever, [query], k, retries=retries, backoff=0.2)[0])[:k]


async def search(task: SearchTask, runtime: Runtime[TeacherContext]) -> dict[str, Any]:
    ctx = await _context(runtime)
    try:
        docs = await asyncio.to_thread(_retrieve, ctx.get_retriever(), task["query"], ctx.k, ctx.search_retries)
        res = {"index": task["index"], "query": task["query"], "error": None,
               "documents": [vars(Document.from_langchain(d)) for d in docs]}
    except Exception as e:  # noqa: BLE001 - a failed search is an observation, not a crash
        res = {"index": task["index"], "query": task["query"], "documents": [],
               "error": f"search failed for {task['query']!r}: {type(e).__name__}: {e}"}
    return {"results": [res]}


def merge_round_robin(lists: list[list[dict]], cap: int) -> list[dict]:
    """Interleave ranked lists (1st of each, then 2nd of each, ...), drop duplicates, keep ``cap``."""
    out: list[dict] = []
    seen: set = set()
    depth = max((len(x) for x in lists), default=0)
    for r in range(depth):
        for lst in lists:
            if r < len(lst):
                d = lst[r]
                key = d.get("id") or (d.get("title"), d.get("text"))
                if key in seen:
                    continue
                seen.add(key)
                out.append(d)
                if len(out) >= cap:
                    return out
    return out


def format_information(documents: list[dict], max_tokens: int = 512, error: str | None = None) -> str:
    """The ``<information>`` block for merged documents, through the one document formatter
    (:func:`masksearch.retrieval.tool.format_documents`)."""
    from masksearch.retrieval.tool import format_documents

    if not documents and error:
        return information_block(f"Search failed: {error}")
    return information_block(format_documents(documents, max_tokens=max_tokens))


def merge(state: TeacherState, runtime: Runtime[TeacherContext]) -> dict[str, Any]:
    ctx = runtime.context or TeacherContext()
    results = sorted(state.get("results", []), key=lambda r: r["index"])
    docs = merge_round_robin([r["documents"] for r in results], ctx.max_docs)
    errors = [r["error"] for r in results if r.get("error")]
    error = "; ".join(errors) if errors else None
    step = {"thought": state.get("thought", ""), "queries": [r["query"] for r in results],
            "documents": docs, "raw": "", "error": error,
            "information": format_information(docs, ctx.info_max_tokens, error)}
    return {"steps": [step], "results": CLEAR}


async def observer(state: TeacherState, runtime: Runtime[TeacherContext]) -> Command[Literal["rewriter", "planner", "judge"]]:
    ctx = await _context(runtime)
    turn = state.get("turn", 0) + 1
    last = state["steps"][-1]
    call = await roles.observe(ctx.model("observer"), state["question"], state.get("thoughts", []),
                               state.get("sub_query", ""), last["information"], turn, ctx.max_turns, ctx.retries,
                               ctx.retry_temperature)
    upd: dict[str, Any] = {"turn": turn, "malformed": _counts(call.malformed, "observer")}
    if call.error:
        return _end(upd, "error", call.error)
    out = call.output
    if not out.ok:
        if ctx.replan_on_refusal and turn < ctx.max_turns:
            # the refused reply (a span not in the documents, or unreadable) is not the run's end:
            # a small model that cannot read an answer here usually lacks the passage, so search again
            return Command(goto="planner", update={**upd, "feedback": prompts.REFUSED_NOTE.format(reason=out.reason),
                                                   "replans": state.get("replans", 0) + 1,
                                                   "refusals": state.get("refusals", 0) + 1})
        return _end(upd, "malformed", f"observer output unreadable after retry: {out.reason}")
    if out.kind == "answer":
        final = out.think or "The search results contain the answer."
        return Command(goto="judge", update={**upd, "answer": out.text, "final_thought": final,
                                             "thoughts": [final], "status": "answered", "reason": ""})
    if turn >= ctx.max_turns:
        return _end(upd, "turn_cap", f"no answer after {ctx.max_turns} observer turns (last decision: {out.kind})")
    if out.kind == "next":
        thought = out.think or f"Next I need to find out: {out.text}"
        return Command(goto="rewriter", update={**upd, "thought": thought, "sub_query": out.text,
                                                "thoughts": [thought], "sub_queries": [out.text]})
    note = out.text or out.think or "the searches did not find the answer"
    return Command(goto="planner", update={**upd, "feedback": note, "replans": state.get("replans", 0) + 1,
                                           "thoughts": [out.think] if out.think else []})


async def judge(state: TeacherState, runtime: Runtime[TeacherContext]) -> dict[str, Any]:
    ctx = await _context(runtime)
    verdicts: dict[str, Any] = {"string": judge_mod.string_verdict(
        state.get("answer"), state.get("golden_answers", []), state.get("answer_match", "any"))}
    if ctx.llm_judge and state.get("answer"):
        verdicts["llm"] = await judge_mod.allm_verdict(ctx.model("judge"), state["question"],
                                                       state.get("golden_answers", []), state.get("answer"),
                                                       answer_match=state.get("answer_match"))
    return {"verdicts": verdicts}


def build_teacher_graph(checkpointer: Any = None) -> Any:
    """Compile the teacher graph (optionally with a checkpointer for resume / inspection)."""
    g = StateGraph(TeacherState, context_schema=TeacherContext, input_schema=TeacherInput)
    g.add_node("planner", planner)
    g.add_node("rewriter", rewriter)
    g.add_node("search", search)
    g.add_node("merge", merge)
    g.add_node("observer", observer)
    g.add_node("judge", judge)
    g.add_edge(START, "planner")
    g.add_conditional_edges("rewriter", fan_out, ["search", "judge"])
    g.add_edge("search", "merge")
    g.add_edge("merge", "observer")
    g.add_edge("judge", END)
    return g.compile(checkpointer=checkpointer, name="teacher")


# ----------------------------------------------------------------------------- LLM call capture
_SAFE_PARAMS = ("model", "model_name", "temperature", "max_tokens", "max_new_tokens", "top_p", "stop", "_type")


def _usage(response: Any) -> dict[str, int]:
    """Prompt and completion tokens of a chat reply, where the backend reports them (the OpenAI
    protocol does): what a slow teacher spends its time on, prefill or decoding."""
    try:
        meta = getattr(response.generations[0][0].message, "usage_metadata", None) or {}
    except (IndexError, AttributeError):
        meta = {}
    tok = (getattr(response, "llm_output", None) or {}).get("token_usage") or {}
    prompt = meta.get("input_tokens", tok.get("prompt_tokens"))
    completion = meta.get("output_tokens", tok.get("completion_tokens"))
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return {}
    out = {"prompt_tokens": int(prompt), "completion_tokens": int(completion)}
    # prompt tokens the server took from its prompt cache (llama.cpp, OpenAI: prompt_tokens_details)
    cached = (meta.get("input_token_details") or {}).get("cache_read")
    if cached is None:
        cached = (tok.get("prompt_tokens_details") or {}).get("cached_tokens")
    if isinstance(cached, int):
        out["cached_tokens"] = cached
    return out


class LLMCallRecorder(BaseCallbackHandler):
    """Captures every chat-model call of a run: node, role, messages, reply, timing.

    Only whitelisted invocation parameters are kept (model name, temperature, ...); the serialized
    model (which may hold credentials) is never stored, and every string is scrubbed of secrets.
    """

    run_inline = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._open: dict[Any, dict[str, Any]] = {}

    def on_chat_model_start(self, serialized: dict, messages: list[list[Any]], *, run_id: Any,
                            tags: list[str] | None = None, metadata: dict | None = None, **kw: Any) -> None:
        meta = metadata or {}
        params = kw.get("invocation_params") or {}
        rec = {
            "node": meta.get("langgraph_node"),
            "role": meta.get("role") or meta.get("langgraph_node"),
            "attempt": meta.get("attempt", 0),
            "read": meta.get("read"),  # "json_schema" | "tags": how the role's reply was read
            "params": {k: params[k] for k in _SAFE_PARAMS if k in params and isinstance(params[k], (str, int, float, list))},
            "messages": [{"role": getattr(m, "type", "?"), "content": scrub(message_text(m))}
                         for m in (messages[0] if messages else [])],
            "output": None,
            "error": None,
            "seconds": None,
        }
        self._open[run_id] = {"rec": rec, "t0": time.perf_counter()}

    def on_llm_end(self, response: Any, *, run_id: Any, **kw: Any) -> None:
        o = self._open.pop(run_id, None)
        if o is None:
            return
        try:
            text = response.generations[0][0].text
        except (IndexError, AttributeError):
            text = ""
        o["rec"]["output"] = scrub(text or "")
        o["rec"]["seconds"] = round(time.perf_counter() - o["t0"], 3)
        usage = _usage(response)
        if usage:
            o["rec"]["usage"] = usage
        self.calls.append(o["rec"])

    def on_llm_error(self, error: BaseException, *, run_id: Any, **kw: Any) -> None:
        o = self._open.pop(run_id, None)
        if o is None:
            return
        o["rec"]["error"] = scrub(f"{type(error).__name__}: {error}")
        o["rec"]["seconds"] = round(time.perf_counter() - o["t0"], 3)
        self.calls.append(o["rec"])


# ----------------------------------------------------------------------------- running
_GRAPH: Any = None


def _default_graph() -> Any:
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_teacher_graph()
    return _GRAPH


def _as_example(example: Any) -> Any:
    from masksearch.data.qa import QAExample, qa_from_record

    if isinstance(example, QAExample):
        return example
    if isinstance(example, Mapping):
        ex = qa_from_record(dict(example))
        ex.id = ex.id or uuid.uuid4().hex[:12]
        return ex
    raise TypeError(f"expected a QAExample or a record dict, got {type(example).__name__}")


def state_to_trajectory(state: Mapping[str, Any], example: Any, context: TeacherContext,
                        llm_calls: list[dict] | None = None) -> Trajectory:
    steps = [Step(thought=s.get("thought", ""), queries=list(s.get("queries", [])),
                  documents=[Document(**d) for d in s.get("documents", [])], raw=s.get("raw", ""),
                  error=s.get("error"), information=s.get("information")) for s in state.get("steps", [])]
    status = state.get("status", "running")
    if status == "running":  # graph ended without a decision (should not happen)
        status, reason = "error", "graph ended without a decision"
    else:
        reason = state.get("reason", "")
    meta = {"answer_match": example.answer_match, "turns": state.get("turn", 0),
            "replans": state.get("replans", 0),
            "refusals": state.get("refusals", 0), "malformed": dict(state.get("malformed", {})),
            "sub_queries": list(state.get("sub_queries", [])), "thoughts": list(state.get("thoughts", [])),
            "role_reads": {c["role"]: c["read"] for c in (llm_calls or []) if c.get("role") and c.get("read")}}
    for key in ("mask_count", "passage_id", "title"):
        if key in example.metadata:
            meta[key] = example.metadata[key]
    return Trajectory(
        id=example.id, question=example.question, golden_answers=list(example.golden_answers), steps=steps,
        answer=state.get("answer"), final_thought=state.get("final_thought", ""), status=status, reason=reason,
        verdicts=dict(state.get("verdicts", {})),
        provenance=Provenance(graph="teacher", teacher=context.teacher_name(), models=context.model_specs(),
                              retriever=describe_retriever(context.retriever), example_id=example.id,
                              source=example.source or ("ramp" if example.answer_match == "all" else "")),
        metadata=meta, llm_calls=llm_calls or [])


async def arun_teacher(example: Any, context: TeacherContext, *, graph: Any = None,
                       thread_id: str | None = None) -> Trajectory:
    """Run the teacher graph on one example (a ``QAExample`` or a RAMP/benchmark record)."""
    ex = _as_example(example)
    graph = graph or _default_graph()
    recorder = LLMCallRecorder()
    config: dict[str, Any] = {"callbacks": [recorder], "recursion_limit": 12 * context.max_turns + 20,
                              "run_name": "teacher"}
    if getattr(graph, "checkpointer", None) is not None:
        config["configurable"] = {"thread_id": thread_id or f"teacher:{ex.id}"}
    inputs = {"id": ex.id, "question": ex.question, "golden_answers": list(ex.golden_answers),
              "answer_match": ex.answer_match, "status": "running", "turn": 0, "replans": 0}
    t0 = time.perf_counter()
    try:
        state = await graph.ainvoke(inputs, config=config, context=context)
    except Exception as e:  # noqa: BLE001 - a crashed run is recorded with its reason
        state = {**inputs, "status": "error", "reason": f"{type(e).__name__}: {e}"}
    traj = state_to_trajectory(state, ex, context, recorder.calls)
    traj.metadata["seconds"] = round(time.perf_counter() - t0, 3)
    return traj


def run_teacher(example: Any, context: TeacherContext, **kw: Any) -> Trajectory:
    """Synchronous :func:`arun_teacher` (also works inside a running event loop, e.g. Jupyter)."""
    from masksearch.utils.aio import run_sync

    return run_sync(arun_teacher(example, context, **kw))


# LangGraph server / Studio entry point (langgraph.json); the context defaults run as they are.
graph = build_teacher_graph()
