"""Degenerate search queries: what a student must not learn to search for.

:func:`degenerate_query` names why a query is useless as a training target, or returns None:

* ``empty`` / ``too_short``: no query, or fewer than 3 letters or digits in all;
* ``prompt_echo``: it repeats words of the teacher's own prompts (``next sub-query``, ``latest
  search results``, ``search phrase``, ``query one``...) instead of naming something to find;
* ``mask_token``: it contains ``[mask]`` (the blank itself is not a search term);
* ``copy``: for a masked (RAMP) question, it is merely the masked text pasted: a contiguous run of
  at least :data:`COPY_SHARE` of the masked passage's words and longer than its longest sentence
  (the passage is the question before its instruction paragraph). One sentence is not a copy --
  the provenance teacher searches exactly that -- and for an ordinary question, searching the
  question itself is a legitimate first query.

The accept filter of :mod:`masksearch.training.export` rejects a trajectory whose exported
``<search>`` queries are degenerate, and the teacher roles treat such a query as a malformed reply
(retried once with the reason).
"""

from __future__ import annotations

import re

from masksearch.protocol import MASK_TOKEN as MASK
from masksearch.scoring import normalize

COPY_SHARE = 0.8
# words of the teacher's prompts and message headings that small models echo as "queries"
PROMPT_ECHOES = (
    "sub query", "subquery", "sub question", "search results", "search result", "search phrase",
    "search engine query", "search query", "query one", "query two", "query three", "next query",
    "your reasoning", "short answer", "why the plan fails", "passage above", "masked span",
    "mask blanks", "original text", "latest search", "reasoning so far", "original passage",
    "search for the", "rare words", "key words", "main name",
)
_ALNUM = re.compile(r"[^\W_]", re.U)


def has_letters_or_digits(text: str) -> bool:
    """Whether ``text`` holds any letter or digit (``" | "``, ``"-"`` and ``""`` do not)."""
    return bool(_ALNUM.search(text or ""))


def _words(text: str) -> list[str]:
    return normalize(text.replace(MASK, " ").replace("[MASK]", " "), punctuation_as_space=True).split()


def _has_run(query: list[str], source: list[str], n: int) -> bool:
    """Whether ``query`` and ``source`` share a run of ``n`` consecutive words."""
    if n < 1 or len(query) < n or len(source) < n:
        return False
    grams = {tuple(source[i:i + n]) for i in range(len(source) - n + 1)}
    return any(tuple(query[i:i + n]) in grams for i in range(len(query) - n + 1))


def masked_passage(question: str) -> str:
    """The passage of a RAMP question: every paragraph but the last (the instruction), if several."""
    paras = [p for p in re.split(r"\n\s*\n", question or "") if p.strip()]
    return "\n\n".join(paras[:-1]) if len(paras) > 1 else (question or "")


def degenerate_query(query: str | None, question: str = "") -> str | None:
    """Why ``query`` is degenerate for ``question`` (see the module doc), or None when it is fine."""
    q = " ".join(str(query or "").split())
    if not q:
        return "empty"
    if len(_ALNUM.findall(q)) < 3:
        return "too_short"
    if MASK in q.lower():
        return "mask_token"
    norm = " " + normalize(q, punctuation_as_space=True) + " "
    if any(f" {e} " in norm for e in PROMPT_ECHOES):
        return "prompt_echo"
    if MASK in (question or "").lower():
        text = masked_passage(question)
        passage = _words(text)
        longest = max((len(_words(x)) for x in re.split(r"(?<=[.!?])\s+", text)), default=0)
        if _has_run(_words(q), passage, max(4, longest + 1, int(COPY_SHARE * len(passage) + 0.999))):
            return "copy"
    return None


def count_blanks(question: str) -> int:
    """How many ``[mask]`` blanks the passage of a RAMP question holds (0 for an ordinary question)."""
    return masked_passage(question).lower().count(MASK)


def blank_contexts(question: str, width: int = 8) -> list[str]:
    """For each blank of a RAMP question, in order, the ``width`` words before and after it, with the
    blank itself written ``[mask N]``: what a reader looks for in a document to find the original
    text.  Read from the question only (nothing of the answer)."""
    return [" ".join(w for w in (before, f"[mask {i}]", after) if w)
            for i, (before, after) in enumerate(blank_anchors(question, width), 1)]


def blank_anchors(question: str, width: int = 2) -> list[tuple[str, str]]:
    """For each blank of a RAMP question, in order, the ``width`` words just before and just after
    it (``""`` where another blank or the passage's edge comes first): the words that stand next
    to the original text in the passage it was cut from.  Read from the question only."""
    text = " ".join(masked_passage(question).split())
    parts = re.split(re.escape(MASK), text, flags=re.I)
    return [(" ".join(parts[i].split()[-width:]), " ".join(parts[i + 1].split()[:width]))
            for i in range(len(parts) - 1)]
