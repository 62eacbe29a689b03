"""The provenance teacher: grounded RAMP trajectories without an LLM.

A RAMP example knows where it came from: the masked passage and the masked spans.  The provenance
teacher builds a trajectory from exactly that and from a *real* search:

1. a short templated thought;
2. a search through the configured retriever for each masked sentence (``[mask]`` removed), the
   real retrieved documents, the real ``<information>`` block (the one document formatter);
3. the masked spans, in order, as the answer.

The run is **accepted only when the retrieved information contains every answer span**, so each
answer the student learns is grounded in what the student is shown; otherwise it is rejected and
counted (verdict ``grounded``).  ``Provenance.teacher == "provenance"`` on every trajectory; the
export is the same as for the LLM teacher graph.
"""

from __future__ import annotations

import re
import time
from typing import Any

from masksearch.agents.judge import string_verdict
from masksearch.scoring import span_in_text
from masksearch.graphs.teacher import _as_example, _retrieve, describe_retriever, format_information
from masksearch.protocol import MASK_TOKEN, join_answers
from masksearch.trajectory import Document, Provenance, Step, Trajectory

PROVENANCE_TEACHER = "provenance"

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")

_FIRST_THOUGHTS = (
    "The text has {n} missing span{s}. I will search for the sentence around the blank to find its source passage.",
    "To fill the {n} blank{s}, I should find the original passage. I will search for the sentence that contains the blank.",
    "I need the source of this text to restore the {n} missing span{s}. Let me search for the masked sentence.",
)
_NEXT_THOUGHT = "Another blank is in a different sentence. I will search for that sentence too."
_FINAL_THOUGHT = "The passage \"{title}\" contains the sentence, so the missing span{s} {verb}: {spans}."


def masked_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that contain a ``[mask]``, in order."""
    sents = [s.strip() for s in _SENT_SPLIT.split(text or "") if s.strip()]
    return [s for s in sents if MASK_TOKEN in s]


def sentence_query(sentence: str, max_words: int = 40) -> str:
    """A search query from a masked sentence: the blanks removed, whitespace collapsed."""
    q = sentence.replace(MASK_TOKEN, " ")
    q = " ".join(q.split()).strip(" .,;:")
    return " ".join(q.split()[:max_words])


def contains_span(information: str, span: str) -> bool:
    """Whether ``span`` occurs in ``information`` (normalised, on word boundaries)."""
    return span_in_text(information, span)


def _seed(example_id: str) -> int:
    return sum(ord(c) for c in example_id)


def run_provenance(example: Any, retriever: Any, *, k: int = 5, info_max_tokens: int = 512,
                   max_searches: int = 3, retriever_name: str | None = None) -> Trajectory:
    """Build one provenance-teacher trajectory for a RAMP example (``QAExample`` or record dict)."""
    t0 = time.perf_counter()
    ex = _as_example(example)
    spans = [str(a) for a in ex.golden_answers]
    source_text = ex.metadata.get("masked_passage") or ex.question
    sentences = masked_sentences(source_text) or ([sentence_query(ex.question)] if ex.question else [])
    steps: list[Step] = []
    info_all = ""
    n = len(spans)
    plural = "s" if n != 1 else ""
    for i, sent in enumerate(sentences[:max_searches]):
        query = sentence_query(sent)
        if not query:
            continue
        thought = (_FIRST_THOUGHTS[_seed(ex.id) % len(_FIRST_THOUGHTS)].format(n=n, s=plural)
                   if not steps else _NEXT_THOUGHT)
        try:
            docs = [Document.from_langchain(d) for d in _retrieve(retriever, query, k)]
            error = None
        except Exception as e:  # noqa: BLE001 - recorded, the run is then rejected as ungrounded
            docs, error = [], f"search failed for {query!r}: {type(e).__name__}: {e}"
        info = format_information([vars(d) for d in docs], info_max_tokens, error)
        steps.append(Step(thought=thought, queries=[query], documents=docs, error=error, information=info))
        info_all += "\n" + info
        if all(contains_span(info_all, s) for s in spans):
            break
    missing = [s for s in spans if not contains_span(info_all, s)]
    title = next((d.title for st in steps for d in st.documents if spans and contains_span(d.text, spans[0])), "")
    answer = join_answers(spans)
    final = _FINAL_THOUGHT.format(title=title or "found", s=plural, verb="are" if n != 1 else "is",
                                  spans=answer)
    grounded = {"ok": not missing and bool(steps), "missing": missing}
    status = "answered" if steps else "error"
    traj = Trajectory(
        id=ex.id, question=ex.question, golden_answers=spans, steps=steps, answer=answer, final_thought=final,
        status=status, reason="" if steps else "no masked sentence to search for",
        verdicts={"string": string_verdict(answer, spans, ex.answer_match, ex.mask_count), "grounded": grounded},
        provenance=Provenance(graph=PROVENANCE_TEACHER, teacher=PROVENANCE_TEACHER, models={},
                              retriever=retriever_name or describe_retriever(retriever), example_id=ex.id,
                              source=ex.source or "ramp"),
        metadata={"answer_match": ex.answer_match, "turns": len(steps),
                  **{key: ex.metadata[key] for key in ("mask_count", "passage_id", "title") if key in ex.metadata}},
    )
    traj.metadata["seconds"] = round(time.perf_counter() - t0, 4)
    return traj


class ProvenanceMethod:
    """The provenance teacher as a method, ``async (example) -> Trajectory`` (see
    :mod:`masksearch.graphs.methods`); the search runs in a thread, off the event loop."""

    name = PROVENANCE_TEACHER

    def __init__(self, retriever: Any, *, k: int = 5, info_max_tokens: int = 512, max_searches: int = 3,
                 retriever_name: str | None = None):
        self.retriever, self.k, self.info_max_tokens = retriever, k, info_max_tokens
        self.max_searches, self.retriever_name = max_searches, retriever_name

    def teacher_name(self) -> str:
        return PROVENANCE_TEACHER

    async def __call__(self, example: Any) -> Trajectory:
        import asyncio

        return await asyncio.to_thread(run_provenance, example, self.retriever, k=self.k,
                                       info_max_tokens=self.info_max_tokens, max_searches=self.max_searches,
                                       retriever_name=self.retriever_name)
