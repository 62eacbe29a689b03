"""LLM judge: asks any chat model whether a prediction answers the question, parses strictly.

The model is any LangChain ``BaseChatModel`` (``make_chat_model("dashscope:qwen-max")``, a local
``hf:`` model …).  The reply must end in a verdict line ``Verdict: CORRECT`` or
``Verdict: INCORRECT``; :func:`parse_verdict` accepts light decoration (markdown, quotes, a
trailing full stop, a bare one-word reply) but returns ``None`` – *no verdict* – for anything
ambiguous (both verdicts, hedges, no verdict at all).  ``None`` is never counted as correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

JUDGE_SYSTEM_PROMPT = (
    "You grade answers to questions. You are given a question, the gold answer(s) and a predicted "
    "answer. The prediction is correct when it states the same fact as a gold answer (wording, "
    "abbreviations and extra detail that does not contradict it are fine). It is incorrect when it "
    "is wrong, contradicts a gold answer, is missing, or hedges between several answers."
)

JUDGE_USER_TEMPLATE = (
    "Question: {question}\n"
    "Gold answer{plural}: {gold}\n"
    "{all_note}"
    "Predicted answer: {prediction}\n\n"
    "Think in one or two sentences, then write the last line exactly as\n"
    "Verdict: CORRECT\nor\nVerdict: INCORRECT"
)

_VERDICT_LINE = re.compile(r"^\W*(?:final\s+)?(?:verdict|judgement|judgment|grade)\W*\s*(?:is\s*)?[:=\-]?\s*\W*"
                           r"(correct|incorrect|right|wrong|yes|no|true|false)\W*$", re.I)
_BARE = re.compile(r"^\W*(correct|incorrect)\W*$", re.I)
_POSITIVE = {"correct", "right", "yes", "true"}


def parse_verdict(reply: str | None) -> bool | None:
    """``True``/``False`` from a judge reply, ``None`` when there is no single clear verdict.

    Accepted: a line ``Verdict: CORRECT`` (any case, with markdown or punctuation around it;
    ``yes/no/true/false/right/wrong`` also count) or a reply that is just ``correct`` /
    ``incorrect``.  Several verdict lines that disagree give ``None``.
    """
    if not reply or not reply.strip():
        return None
    text = reply.replace("**", "").replace("__", "").replace("`", "")
    text = re.sub(r"</?verdict>", "\n", text, flags=re.I)
    found: list[bool] = []
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        m = _VERDICT_LINE.match(ln)
        if m:
            found.append(m.group(1).lower() in _POSITIVE)
    if not found and lines:
        # a verdict written alone on the reply's last line ("...reasoning.\nCORRECT")
        m = _BARE.match(lines[-1])
        if m:
            found.append(m.group(1).lower() == "correct")
    if not found or len(set(found)) > 1:
        return None
    return found[-1]


@dataclass
class Verdict:
    correct: bool | None
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "raw": self.raw}


class LLMJudge:
    """``judge(question, golds, prediction) -> Verdict`` with any chat model (sync and async)."""

    def __init__(self, model: Any, max_new_tokens: int = 128, name: str | None = None):
        if isinstance(model, str):
            from masksearch.models import make_chat_model

            name = name or model
            model = make_chat_model(model)
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.name = name or type(model).__name__

    @staticmethod
    def messages(question: str, golds: Sequence[str], prediction: str | None,
                 answer_match: str = "any") -> list[dict[str, str]]:
        golds = [str(g) for g in golds]
        all_note = ("(All of the gold strings are required; the prediction is correct only if it "
                    "gives every one of them.)\n") if answer_match == "all" and len(golds) > 1 else ""
        sep = " | " if answer_match == "all" else " OR "
        return [
            {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
            {"role": "user", "content": JUDGE_USER_TEMPLATE.format(
                question=question, gold=sep.join(golds), plural="s" if len(golds) > 1 else "",
                all_note=all_note, prediction=(prediction or "").strip() or "(no answer)")},
        ]

    def _kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens} if hasattr(self.model, "max_new_tokens") else {}

    def judge(self, question: str, golds: Sequence[str], prediction: str | None, answer_match: str = "any") -> Verdict:
        if not (prediction or "").strip():
            return Verdict(False, "")
        msg = self.model.invoke(self.messages(question, golds, prediction, answer_match), **self._kwargs())
        raw = str(getattr(msg, "content", msg))
        return Verdict(parse_verdict(raw), raw)

    async def ajudge(self, question: str, golds: Sequence[str], prediction: str | None,
                     answer_match: str = "any") -> Verdict:
        if not (prediction or "").strip():
            return Verdict(False, "")
        msg = await self.model.ainvoke(self.messages(question, golds, prediction, answer_match), **self._kwargs())
        raw = str(getattr(msg, "content", msg))
        return Verdict(parse_verdict(raw), raw)
