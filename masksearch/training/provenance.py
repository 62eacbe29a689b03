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

The **multi-hop provenance teacher** (:func:`run_multihop_provenance`, teacher name
``multihop-provenance``) does the same for downstream multi-hop QA (HotpotQA-style records with
``supporting_passage_ids``/``supporting_titles``): one real search per hop, the bridge entity named
in the thoughts, the gold answer, accepted only when every supporting passage and the answer were
shown to the student.  A yes/no answer (a comparison question: "Are X and Y both ...?") is a
judgement over the supporting passages, not a span of them: such a run is accepted when every
supporting passage was shown, and its final thought quotes the lead of each.
"""

from __future__ import annotations

import re
import time
from typing import Any

from masksearch.agents.judge import string_verdict
from masksearch.scoring import normalize, span_in_text
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
# Every provenance teacher's thoughts say, in their first words, whether the answer is in hand: the
# students of the first ablation learned the search loop and not when to stop (most runs reached the
# turn cap with the answer already shown), and the RAMP stage can only teach that decision to the
# downstream stage if both say it the same way.
ANSWER_IN_HAND = "I have the answer now."
NOT_YET = "I do not have the answer yet."
_NEXT_THOUGHT = NOT_YET + " Another blank is in a different sentence. I will search for that sentence too."
# The final thought quotes the sentence of the shown passage that holds the answer, and the answer
# that follows is a span of the quote: the students of the second ablation named passages no search had shown and
# answered wrongly after one search; copying a sentence out of <information> is what a small model
# does well, and the answer is then a span of its own thought (see :func:`evidence_quotes`).  The
# answer is not repeated in the thought: the final turn stays within the evaluation's 96 new tokens.
_FINAL_THOUGHT = ANSWER_IN_HAND + " {evidence}"
_QUOTE = "The passage \"{title}\" says: \"{quote}\""
QUOTE_MAX_WORDS = 14  # words of one quote: the final turn (thought + answer) fits in 96 new tokens
_DOC_LINE = re.compile(r"^Doc \d+ \(Title: (.*?)\) (.*)$")


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


def _window(words: list[str], span: str, max_words: int) -> str | None:
    """The shortest run of ``words`` that contains ``span``, widened evenly to ``max_words`` words."""
    n = len(words)
    for width in range(1, min(n, max(max_words, 3 * len(span.split()) + 5)) + 1):
        for i in range(0, n - width + 1):
            if contains_span(" ".join(words[i:i + width]), span):
                extra = max(0, max_words - width)
                lo = max(0, i - extra // 2)
                hi = min(n, lo + max(width, max_words))
                lo = max(0, hi - max(width, max_words))
                return " ".join(words[lo:hi])
    return None


def evidence_quote(information: str, span: str, max_words: int = QUOTE_MAX_WORDS,
                   prefer: Any = ()) -> tuple[str, str] | None:
    """``(title, quote)``: the first sentence of a shown document that contains ``span``, as a
    literal run of its words (at most ``max_words``, around the span), or ``None``.  ``information``
    is one or more ``<information>`` blocks of ``Doc i (Title: T) text`` lines; documents titled as
    in ``prefer`` are tried first; a truncated document's trailing ``...`` is not quoted."""
    docs = [m.groups() for m in (_DOC_LINE.match(line.strip()) for line in (information or "").splitlines()) if m]
    prefer = set(prefer)
    for title, text in sorted(docs, key=lambda d: d[0] not in prefer):  # stable: shown order otherwise
        if text.endswith(" ..."):
            text = text[:-4]
        if not contains_span(text, span):
            continue
        for sent in _SENT_SPLIT.split(text):
            if contains_span(sent, span):
                quote = _window(sent.split(), span, max_words)
                if quote:
                    return title, quote
    return None


def evidence_quotes(information: str, spans: list[str], max_quotes: int = 1,
                    max_words: int = QUOTE_MAX_WORDS, prefer: Any = ()) -> str:
    """The final thought's evidence: one :data:`_QUOTE` for each span not already inside an earlier
    quote (at most ``max_quotes``: one keeps the final turn within the evaluation's 96 new tokens),
    joined; ``""`` when no span is in ``information``."""
    quotes: list[tuple[str, str]] = []
    for span in spans:
        if any(contains_span(q, span) for _, q in quotes):
            continue
        found = evidence_quote(information, span, max_words, prefer)
        if found and len(quotes) < max_quotes:
            quotes.append(found)
    return " ".join(_QUOTE.format(title=t, quote=q.rstrip(".!?;:, ")) + "." for t, q in quotes)


_QUOTED = re.compile(r'The passage "(.*?)" says: "(.*?)"\.')


def quoted_evidence(thought: str) -> tuple[str, str] | None:
    """``(title, quote)`` of the first :data:`_QUOTE` in a thought (a teacher's or a student's), or
    ``None``: the reader of the form :func:`evidence_quotes` writes."""
    m = _QUOTED.search(thought or "")
    return (m.group(1), m.group(2)) if m else None


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
    answer = join_answers(spans)
    evidence = evidence_quotes(info_all, spans) or "The search found the sentence."
    final = _FINAL_THOUGHT.format(evidence=evidence)
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
                 retriever_name: str | None = None, teacher: str = PROVENANCE_TEACHER):
        self.retriever, self.k, self.info_max_tokens = retriever, k, info_max_tokens
        self.max_searches, self.retriever_name = max_searches, retriever_name
        if teacher not in PROVENANCE_TEACHERS:
            raise ValueError(f"unknown provenance teacher {teacher!r}: use {', '.join(PROVENANCE_TEACHERS)}")
        self.teacher = self.name = teacher

    def teacher_name(self) -> str:
        return self.teacher

    async def __call__(self, example: Any) -> Trajectory:
        import asyncio

        if self.teacher == MULTIHOP_TEACHER:
            return await asyncio.to_thread(run_multihop_provenance, example, self.retriever, k=self.k,
                                           info_max_tokens=self.info_max_tokens, max_hops=self.max_searches,
                                           retriever_name=self.retriever_name)
        return await asyncio.to_thread(run_provenance, example, self.retriever, k=self.k,
                                       info_max_tokens=self.info_max_tokens, max_searches=self.max_searches,
                                       retriever_name=self.retriever_name)


# ----------------------------------------------------------------------------- multi-hop QA
MULTIHOP_TEACHER = "multihop-provenance"

# reasons a multi-hop provenance run is rejected (``verdicts.grounded.reason``)
REJECT_NO_SUPPORT = "no_supporting_facts"  # the record names no supporting passages
REJECT_SUPPORT = "support_not_shown"       # a supporting passage never reached the <information>
REJECT_ANSWER = "answer_not_shown"         # the gold answer is not in what the student was shown
REJECT_SEARCH = "search_error"             # a search failed

_HOP1_THOUGHTS = (
    "This question needs more than one fact. I will search for the question first.",
    "To answer this I need to find the passages it depends on. Let me search for the question.",
    "I should look up the entities in the question step by step, starting with the question itself.",
)
_HOP_FOUND = (NOT_YET + " The passage \"{found}\" mentions {bridge}, the entity that links the facts. "
              "Next I will search for {bridge}.")
_HOP_NEED = NOT_YET + " I still need the facts about {bridge}. I will search for {bridge}."
_MULTIHOP_FINAL = ANSWER_IN_HAND + " {evidence}"


YES_NO = ("yes", "no")
LEAD_MAX_WORDS = 8  # words of each passage's lead in a yes/no final thought (two fit in 96 tokens)


def yes_no_answer(golds: list[str]) -> str | None:
    """``"yes"`` or ``"no"`` when the (first) gold answer is one, normalised; else ``None``."""
    g = normalize(golds[0]) if golds else ""
    return g if g in YES_NO else None


def lead_quotes(information: str, titles: Any, question: str = "", max_words: int = LEAD_MAX_WORDS) -> str:
    """One :data:`_QUOTE` per title in ``titles`` (in order, each once): the literal run of at most
    ``max_words`` words of that shown document that shares the most words with ``question`` outside
    the title (then: fewest parenthesised words, earliest), the evidence of a yes/no answer."""
    docs: dict[str, str] = {}
    for m in (_DOC_LINE.match(line.strip()) for line in (information or "").splitlines()):
        if m and m.group(1) not in docs:
            docs[m.group(1)] = m.group(2)[:-4] if m.group(2).endswith(" ...") else m.group(2)
    out = []
    for title in dict.fromkeys(titles):
        if title not in docs:
            continue
        words = docs[title].split()
        keys = set(normalize(question).split()) - set(normalize(title).split()) - _STOP_WORDS
        norm = [normalize(w) for w in words]

        def rank(i: int) -> tuple[int, int, int]:
            window = range(i, min(len(words), i + max_words))
            hits = len({norm[j] for j in window} & keys)
            return hits, -sum(("(" in words[j] or ")" in words[j]) for j in window), -i

        best = max(range(max(1, len(words) - max_words + 1)), key=rank)
        quote = " ".join(words[best:best + max_words]).lstrip(",;: ")
        out.append(_QUOTE.format(title=title, quote=quote.rstrip(".!?;:, ")) + ".")
    return " ".join(out)


_STOP_WORDS = frozenset("""are is was were be been both the a an of in on at to for and or by with from as
 same which who what that this these those it its do does did not no yes than more""".split())


def _doc_shown(doc: Document, information: str) -> bool:
    """Whether ``doc`` made it into the ``<information>`` block (the formatter drops documents past
    the token budget)."""
    return f"(Title: {doc.title})" in information


def supporting_facts(example: Any) -> tuple[list[str], list[str]]:
    """``(supporting_passage_ids, supporting_titles)`` of a HotpotQA-style record (shared format)."""
    meta = example.metadata
    ids = [str(x) for x in (meta.get("supporting_passage_ids") or [])]
    titles = [str(x) for x in (meta.get("supporting_titles") or [])]
    return ids, titles


def run_multihop_provenance(example: Any, retriever: Any, *, k: int = 5, info_max_tokens: int = 512,
                            max_hops: int = 3, retriever_name: str | None = None) -> Trajectory:
    """One LLM-free multi-hop trajectory for a question that names its supporting passages.

    Hop 1 searches for the question.  Each later hop searches for the title of a supporting passage
    not yet shown (the bridge entity), and its thought names that entity.  The answer is the gold.
    The run is **accepted only when every supporting passage and the answer are in what the student
    was shown** (the ``<information>`` blocks); otherwise ``verdicts.grounded`` says why
    (``reason``: one of :data:`REJECT_NO_SUPPORT`, :data:`REJECT_SUPPORT`, :data:`REJECT_ANSWER`,
    :data:`REJECT_SEARCH`).  A yes/no gold (:func:`yes_no_answer`) counts as shown once every
    supporting passage is; its final thought quotes each passage's lead (:func:`lead_quotes`).
    """
    from masksearch.retrieval.corpus import parent_id

    t0 = time.perf_counter()
    ex = _as_example(example)
    golds = [str(a) for a in ex.golden_answers]
    sup_ids, sup_titles = supporting_facts(ex)
    title_of = dict(zip(sup_ids, sup_titles))
    steps: list[Step] = []
    shown: dict[str, str] = {}  # supporting passage id -> the title it was shown under
    info_all = ""
    errors: list[str] = []

    def search(query: str, thought: str) -> None:
        nonlocal info_all
        try:
            docs = [Document.from_langchain(d) for d in _retrieve(retriever, query, k)]
            error = None
        except Exception as e:  # noqa: BLE001 - recorded, the run is then rejected
            docs, error = [], f"search failed for {query!r}: {type(e).__name__}: {e}"
            errors.append(error)
        info = format_information([vars(d) for d in docs], info_max_tokens, error)
        steps.append(Step(thought=thought, queries=[query], documents=docs, error=error, information=info))
        info_all += "\n" + info
        for d in docs:
            pid = parent_id(d.id)
            if pid in title_of and pid not in shown and _doc_shown(d, info):
                shown[pid] = d.title

    if sup_ids and ex.question:
        search(sentence_query(ex.question, max_words=60),
               _HOP1_THOUGHTS[_seed(ex.id) % len(_HOP1_THOUGHTS)])
        while len(steps) < max_hops:
            todo = [pid for pid in sup_ids if pid not in shown]
            if not todo:
                break
            bridge = title_of[todo[0]]
            found = next(iter(shown.values()), None)
            if found and contains_span(info_all, bridge):
                thought = _HOP_FOUND.format(found=found, bridge=bridge)
            else:
                thought = _HOP_NEED.format(bridge=bridge)
            search(bridge, thought)
    missing_passages = [pid for pid in sup_ids if pid not in shown]
    yes_no = yes_no_answer(golds)
    # a yes/no answer is "shown" once its supporting passages are: it is a judgement over them
    answer_shown = yes_no or next((g for g in golds if contains_span(info_all, g)), None)
    if not sup_ids:
        reason = REJECT_NO_SUPPORT
    elif errors:
        reason = REJECT_SEARCH
    elif missing_passages:
        reason = REJECT_SUPPORT
    elif answer_shown is None:
        reason = REJECT_ANSWER
    else:
        reason = ""
    answer = answer_shown or (golds[0] if golds else "")
    if yes_no:
        evidence = lead_quotes(info_all, [shown[pid] for pid in sup_ids if pid in shown], ex.question)
    else:
        evidence = evidence_quotes(info_all, [answer], prefer=shown.values())
    evidence = evidence or "The passages give it."
    final = _MULTIHOP_FINAL.format(evidence=evidence)
    grounded = {"ok": not reason, "reason": reason or "accepted", "missing": [] if answer_shown else golds,
                "missing_passages": missing_passages}
    traj = Trajectory(
        id=ex.id, question=ex.question, golden_answers=golds, steps=steps, answer=answer, final_thought=final,
        status="answered" if steps else "error",
        reason="" if steps else "the record names no supporting passages",
        verdicts={"string": string_verdict(answer, golds, ex.answer_match), "grounded": grounded},
        provenance=Provenance(graph=MULTIHOP_TEACHER, teacher=MULTIHOP_TEACHER, models={},
                              retriever=retriever_name or describe_retriever(retriever), example_id=ex.id,
                              source=ex.source or "qa"),
        metadata={"answer_match": ex.answer_match, "turns": len(steps), "supporting_titles": sup_titles,
                  "bridge_queries": [s.queries[0] for s in steps[1:]]},
    )
    traj.metadata["seconds"] = round(time.perf_counter() - t0, 4)
    return traj


PROVENANCE_TEACHERS = {PROVENANCE_TEACHER: run_provenance, MULTIHOP_TEACHER: run_multihop_provenance}


def reject_reasons(trajs: Any) -> dict[str, int]:
    """Rejected runs of the provenance teachers counted by ``verdicts.grounded.reason``."""
    from collections import Counter

    c: Counter = Counter()
    for t in trajs:
        g = t.verdicts.get("grounded") or {}
        if not g.get("ok", True):
            c[g.get("reason") or ("answer_not_shown" if g.get("missing") else "ungrounded")] += 1
    return dict(c)
