"""The RAG-PE baseline as a one-node LangGraph graph, for the LangGraph server and Studio.

``START -> rag_pe -> END``: retrieve the top-k passages for the question, answer in one model call
(:class:`masksearch.agents.rag.RagPE`, the one implementation the evaluation runs too).  The
output state holds the run's fields (``answer``, ``status``, ``steps`` with the retrieved
documents, ``final_raw``, ``llm_calls``), so Studio shows what the model was given and said.

The context (:class:`RagContext`) takes spec strings or objects, like the student's; the defaults
are the embedded model and the shared corpus's BM25 index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import NotRequired, TypedDict

from masksearch.agents.rag import RagPE
from masksearch.graphs.resources import DEFAULT_MODEL, SHARED_BM25, aresolve_model, aresolve_retriever
from masksearch.graphs.student import example_from_input


@dataclass
class RagContext:
    """Model and retriever (objects or specs, resolved once per process off the event loop) and
    the baseline's budgets."""

    model: Any = DEFAULT_MODEL
    retriever: Any = SHARED_BM25
    k: int = 3
    max_new_tokens: int = 32
    info_max_tokens: int = 512
    model_options: dict[str, Any] = field(default_factory=dict)


class RagInput(TypedDict):
    question: str
    golden_answers: NotRequired[list[str]]
    answer_match: NotRequired[str]
    id: NotRequired[str]


class RagState(TypedDict, total=False):
    question: str
    golden_answers: list[str]
    answer_match: str
    id: str
    answer: str | None
    status: str
    reason: str
    final_raw: str
    steps: list[dict[str, Any]]
    llm_calls: list[dict[str, Any]]


async def rag_pe(state: RagState, runtime: Runtime[RagContext]) -> dict[str, Any]:
    ctx = runtime.context or RagContext()
    model = await aresolve_model(ctx.model, ctx.model_options)
    retriever = await aresolve_retriever(ctx.retriever, ctx.k)
    method = RagPE(model, retriever, k=ctx.k, max_new_tokens=ctx.max_new_tokens, info_max_tokens=ctx.info_max_tokens,
                   model_name=ctx.model if isinstance(ctx.model, str) else None,
                   retriever_name=ctx.retriever if isinstance(ctx.retriever, str) else None)
    traj = (await method(example_from_input(state))).to_dict()
    return {k: traj[k] for k in ("answer", "status", "reason", "final_raw", "steps", "llm_calls")}


def build_rag_graph(checkpointer: Any = None) -> Any:
    g = StateGraph(RagState, context_schema=RagContext, input_schema=RagInput)
    g.add_node("rag_pe", rag_pe)
    g.add_edge(START, "rag_pe")
    g.add_edge("rag_pe", END)
    return g.compile(checkpointer=checkpointer, name="rag-pe")


# LangGraph server / Studio entry point (langgraph.json)
graph = build_rag_graph()
