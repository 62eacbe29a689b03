"""The Judge: a string verdict (normalised exact match + token recall) and an optional LLM verdict.

For ``answer_match="any"`` (benchmark questions) the best gold alternative counts.  For
``answer_match="all"`` (RAMP masks, FanoutQA lists) the prediction is split on ``|`` and compared
span by span, in order: EM needs every span right, recall is the mean per-span token recall.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Sequence

from masksearch.protocol import split_answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"‘", "’", "“", "”", "–", "—"}


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = str(text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_recall(pred: str, gold: str) -> float:
    """Share of the gold tokens (with multiplicity) found in the prediction."""
    g = normalize(gold).split()
    if not g:
        return 0.0
    p = Counter(normalize(pred).split())
    hit = sum(min(c, p[t]) for t, c in Counter(g).items())
    return hit / len(g)


def string_verdict(pred: str | None, gold: Sequence[str], answer_match: str = "any") -> dict[str, Any]:
    """``{"em": 0|1, "recall": float, "spans": [...]}`` of a predicted answer against the gold."""
    gold = [str(g) for g in gold]
    if not pred or not gold:
        return {"em": 0, "recall": 0.0, "match": answer_match}
    if answer_match == "all" and len(gold) > 1:
        spans = split_answer(pred)
        per = []
        for i, g in enumerate(gold):
            p = spans[i] if i < len(spans) else ""
            per.append({"gold": g, "pred": p, "em": int(normalize(p) == normalize(g)),
                        "recall": token_recall(p, g)})
        em = int(all(s["em"] for s in per) and len(spans) == len(gold))
        recall = sum(s["recall"] for s in per) / len(per)
        return {"em": em, "recall": round(recall, 4), "match": "all", "spans": per}
    if answer_match == "all":  # one gold span: ignore a stray separator in the prediction
        pred = " ".join(split_answer(pred)) or pred
    em = int(any(normalize(pred) == normalize(g) for g in gold))
    recall = max(token_recall(pred, g) for g in gold)
    return {"em": em, "recall": round(recall, 4), "match": answer_match}


_VERDICT = re.compile(r"<verdict>\s*(correct|incorrect)\s*(?:</verdict>|$)", re.I)


def parse_llm_verdict(text: str) -> bool | None:
    m = _VERDICT.search(text or "")
    if m:
        return m.group(1).lower() == "correct"
    low = (text or "").strip().lower()
    if low.startswith(("correct", "yes")):
        return True
    if low.startswith(("incorrect", "no")):
        return False
    return None


def judge_messages(question: str, gold: Sequence[str], pred: str) -> list[tuple[str, str]]:
    from masksearch.agents.prompts import JUDGE_SYSTEM

    return [("system", JUDGE_SYSTEM),
            ("human", f"Question: {question}\nGold answer(s): {' ; '.join(gold)}\n"
                      f"Predicted answer: {pred}\nIs the prediction correct?")]


async def allm_verdict(model: Any, question: str, gold: Sequence[str], pred: str | None) -> dict[str, Any]:
    """Ask any chat model whether ``pred`` is correct; ``correct`` is None when unreadable."""
    if not pred:
        return {"correct": False, "raw": "", "reason": "no answer"}
    try:
        reply = await model.ainvoke(judge_messages(question, gold, pred), config={"metadata": {"role": "judge"}})
    except Exception as e:  # noqa: BLE001 - an unreachable judge is recorded, not fatal
        return {"correct": None, "raw": "", "error": f"{type(e).__name__}: {e}"}
    text = reply.content if isinstance(reply.content, str) else str(reply.content)
    return {"correct": parse_llm_verdict(text), "raw": text}
