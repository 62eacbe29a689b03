"""The RAG-PE baseline (the paper's prompted retrieval baseline): retrieve the top-k passages
for the question, answer in one model call with a prompt asking for a short answer in
``<answer>`` tags.  The run is saved as a :class:`~masksearch.trajectory.Trajectory` with one
search step (the question as the query).

It is a method (``async (example) -> Trajectory``) like the graph methods of
:mod:`masksearch.graphs.methods`; the evaluation (``eval --method rag-pe``) and the RAG-PE graph
(:mod:`masksearch.graphs.rag`, for the LangGraph server) both run this one implementation.
"""

from __future__ import annotations

import re
from typing import Any

from masksearch.data.qa import QAExample
from masksearch.protocol import ANSWER, format_documents, information_block, message_text, parse_action
from masksearch.trajectory import Document, Provenance, Step, Trajectory
from masksearch.utils.names import spec_name

__all__ = ["RAG_PE_SYSTEM_PROMPT", "RAG_PE_USER_TEMPLATE", "RagPE", "asearch", "extract_answer"]

RAG_PE_SYSTEM_PROMPT = (
    "Answer the question using the documents below and your own knowledge. "
    "Give only the short answer (a name, a date, a number or a few words) inside <answer> and "
    "</answer>, with no explanation."
)
RAG_PE_USER_TEMPLATE = "Documents:\n{documents}\n\nQuestion: {question}"


def extract_answer(text: str | None) -> tuple[str | None, bool]:
    """The answer of a one-call reply and whether it was properly tagged.

    ``<answer>…</answer>`` wins (an unclosed final tag is closed, as the protocol does); otherwise
    the reply is taken leniently, as prompted baselines are usually scored: ``<think>`` and
    ``<search>`` blocks dropped, remaining tags stripped, first non-empty line, at most 30 words.
    """
    if not text or not text.strip():
        return None, False
    action = parse_action(text)
    if action.kind == "answer" and action.answer:
        return action.answer, True
    m = re.search(rf"<{ANSWER}>(.*?)(?:</{ANSWER}>|$)", text, re.S)
    body = m.group(1) if m else text
    body = re.sub(r"<(think|search)>.*?(</\1>|$)", " ", body, flags=re.S)
    body = re.sub(r"</?[a-z_]{1,20}>", " ", body)
    for line in body.splitlines():
        line = line.strip()
        if line:
            return " ".join(line.split()[:30]), False
    return None, False


def _model_kwargs(model: Any, max_new_tokens: int | None) -> dict[str, Any]:
    # LocalChatModel takes generation options per call; API models are configured at construction
    if max_new_tokens and hasattr(model, "max_new_tokens"):
        return {"max_new_tokens": max_new_tokens}
    return {}


async def asearch(retriever: Any, query: str, k: int) -> list[Any]:
    """Top-k LangChain documents for one query (any retriever of ours or any BaseRetriever)."""
    from masksearch.retrieval.tool import asearch_with_retry

    return (await asearch_with_retry(retriever, [query], k))[0]


class RagPE:
    """Retrieve top-k for the question, answer in one call (the paper's RAG-PE baseline)."""

    name = "rag-pe"

    def __init__(self, model: Any, retriever: Any, k: int = 3, max_new_tokens: int = 32,
                 info_max_tokens: int = 512, model_name: str | None = None, retriever_name: str | None = None):
        self.model, self.retriever, self.k = model, retriever, k
        self.max_new_tokens, self.info_max_tokens = max_new_tokens, info_max_tokens
        self.model_name = model_name or spec_name(model)
        self.retriever_name = retriever_name or spec_name(retriever)

    def messages(self, question: str, formatted_documents: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": RAG_PE_SYSTEM_PROMPT},
            {"role": "user", "content": RAG_PE_USER_TEMPLATE.format(documents=formatted_documents.strip(),
                                                                   question=question)},
        ]

    async def __call__(self, example: QAExample) -> Trajectory:
        traj = Trajectory(id=example.id, question=example.question, golden_answers=list(example.golden_answers),
                          provenance=Provenance(graph="rag-pe", teacher="rag-pe", models={"answer": self.model_name},
                                                retriever=self.retriever_name, example_id=example.id,
                                                source=example.source),
                          metadata={"answer_match": example.answer_match})
        docs = await asearch(self.retriever, example.question, self.k)
        formatted = format_documents(docs, max_tokens=self.info_max_tokens)
        traj.steps.append(Step(queries=[example.question], documents=[Document.from_langchain(d) for d in docs],
                               information=information_block(formatted)))
        msgs = self.messages(example.question, formatted)
        reply = await self.model.ainvoke(msgs, stop=[f"</{ANSWER}>"], **_model_kwargs(self.model, self.max_new_tokens))
        text = message_text(reply)
        if "<answer>" in text and "</answer>" not in text and (reply.response_metadata or {}).get("finish_reason") == "stop":
            text += "</answer>"
        answer, tagged = extract_answer(text)
        traj.final_raw = text
        traj.answer = answer
        traj.status = "answered" if tagged else ("malformed" if answer is None else "answered")
        if not tagged:
            traj.reason = "no <answer> tags: first line of the reply taken as the answer" if answer else "empty reply"
        traj.llm_calls.append({"role": "answer", "messages": msgs, "output": text,
                               "finish_reason": (reply.response_metadata or {}).get("finish_reason")})
        return traj
