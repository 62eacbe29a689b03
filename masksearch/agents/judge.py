"""The Judge: the string verdict (from :mod:`masksearch.scoring`) and the one LLM judge.

* :func:`string_verdict` scores a predicted answer with :func:`masksearch.scoring.score` under the
  question's match rule (``any`` alternatives, ``all`` strings in any order, ``ordered`` RAMP masks).
* The LLM judge has one prompt (:data:`masksearch.agents.prompts.JUDGE_SYSTEM` /
  ``JUDGE_USER``, built by :func:`judge_messages`) and one strict parser, :func:`parse_verdict`:
  a reply that is not a single clear verdict is *no verdict* (``None``), never correct.  The
  teacher's judge node (:func:`allm_verdict`), the GRPO judge reward
  (:func:`masksearch.training.rewards.make_judge_reward`) and ``masksearch eval --judge``
  (:class:`LLMJudge`) all use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from masksearch.protocol import message_text
from masksearch.scoring import MATCH_RULES, match_rule, score


def string_verdict(pred: str | None, gold: Sequence[str], answer_match: str | None = "any",
                   mask_count: Any = None) -> dict[str, Any]:
    """``{"em", "recall", "f1", "cover_em", "match"}`` of a predicted answer against the gold.

    ``em`` is 1 only when the whole answer is right (every span, under ``all``/``ordered``);
    ``recall`` is the token recall the rewards and metrics report for the same match rule.
    """
    rule = match_rule(answer_match, mask_count)
    s = score(pred, [str(g) for g in gold], rule)
    return {"em": int(s["em"]), "recall": round(s["token_recall"], 4), "f1": round(s["f1"], 4),
            "cover_em": round(s["cover_em"], 4), "match": rule}


# ----------------------------------------------------------------------------- the LLM judge
_VERDICT_LINE = re.compile(r"^\W*(?:final\s+)?(?:verdict|judgement|judgment|grade)\W*\s*(?:is\s*)?[:=\-]?\s*\W*"
                           r"(correct|incorrect|right|wrong|yes|no|true|false)\W*$", re.I)
_BARE = re.compile(r"^\W*(correct|incorrect|yes|no)\W*$", re.I)
_POSITIVE = {"correct", "right", "yes", "true"}
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def parse_verdict(reply: Any) -> bool | None:
    """``True``/``False`` from a judge reply, ``None`` when there is no single clear verdict.

    Read: lines ``Verdict: CORRECT`` / ``Verdict: INCORRECT`` (any case, markdown or punctuation
    around it; ``yes/no/true/false/right/wrong`` also count; ``<verdict>…</verdict>`` tags are read
    as a line), or, when there is no such line, a last line that is only ``correct``,
    ``incorrect``, ``yes`` or ``no``.  ``<think>…</think>`` blocks are ignored.  Verdict lines that
    disagree, negations (``not correct``), hedges and prose give ``None``.
    """
    if reply is None:
        return None
    text = _THINK.sub("\n", str(getattr(reply, "content", reply)))
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = re.sub(r"</?verdict>", "\n", text, flags=re.I)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [m.group(1).lower() in _POSITIVE for m in map(_VERDICT_LINE.match, lines) if m]
    if not found and lines:
        m = _BARE.match(lines[-1])
        if m:
            found.append(m.group(1).lower() in _POSITIVE)
    if not found or len(set(found)) > 1:
        return None
    return found[-1]


def judge_messages(question: str, golds: Sequence[str], prediction: str | None,
                   answer_match: str | None = "any") -> list[dict[str, str]]:
    """The judge's chat messages (system + user) for one prediction."""
    from masksearch.agents.prompts import JUDGE_MATCH_NOTES, JUDGE_SYSTEM, JUDGE_USER

    golds = [str(g) for g in golds]
    if answer_match is not None and answer_match not in MATCH_RULES:
        raise ValueError(f"unknown answer_match {answer_match!r}: use one of {', '.join(MATCH_RULES)}")
    # no rule given (a caller that does not know it): the golds are shown without a claim
    note = JUDGE_MATCH_NOTES[answer_match] if answer_match and len(golds) > 1 else ""
    sep = " OR " if answer_match == "any" else " | "
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_USER.format(
            question=question, gold=sep.join(golds), plural="s" if len(golds) > 1 else "",
            match_note=note, prediction=(prediction or "").strip() or "(no answer)")},
    ]


@dataclass
class Verdict:
    correct: bool | None
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "raw": self.raw}


class LLMJudge:
    """``judge(question, golds, prediction, answer_match) -> Verdict`` with any chat model (sync,
    async and batched).  An empty prediction is incorrect without a model call."""

    def __init__(self, model: Any, max_new_tokens: int = 128, name: str | None = None):
        if isinstance(model, str):
            from masksearch.models import make_chat_model

            name = name or model
            model = make_chat_model(model, temperature=0.0)
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.name = name or type(model).__name__

    messages = staticmethod(judge_messages)

    def _kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens} if hasattr(self.model, "max_new_tokens") else {}

    def judge(self, question: str, golds: Sequence[str], prediction: str | None,
              answer_match: str | None = "any") -> Verdict:
        if not (prediction or "").strip():
            return Verdict(False, "")
        raw = message_text(self.model.invoke(judge_messages(question, golds, prediction, answer_match), **self._kwargs()))
        return Verdict(parse_verdict(raw), raw)

    async def ajudge(self, question: str, golds: Sequence[str], prediction: str | None,
                     answer_match: str | None = "any", config: dict[str, Any] | None = None) -> Verdict:
        if not (prediction or "").strip():
            return Verdict(False, "")
        msgs = judge_messages(question, golds, prediction, answer_match)
        raw = message_text(await self.model.ainvoke(msgs, config=config, **self._kwargs()))
        return Verdict(parse_verdict(raw), raw)

    def judge_batch(self, items: Sequence[tuple[str, Sequence[str], str | None, str | None]]) -> list[Verdict | Exception]:
        """Judge several ``(question, golds, prediction, answer_match)`` at once, in one ``batch``
        call (a batching local model serves them in one ``generate``).  A failed call comes back
        as its exception, in place."""
        out: list[Verdict | Exception | None] = [None] * len(items)
        todo = []
        for i, (q, golds, pred, match) in enumerate(items):
            if not (pred or "").strip():
                out[i] = Verdict(False, "")
            else:
                todo.append((i, judge_messages(q, golds, pred, match)))
        if todo:
            replies = self.model.batch([m for _, m in todo], return_exceptions=True, **self._kwargs())
            for (i, _), r in zip(todo, replies):
                out[i] = r if isinstance(r, Exception) else Verdict(parse_verdict(message_text(r)), message_text(r))
        return out  # type: ignore[return-value]


async def allm_verdict(model: Any, question: str, gold: Sequence[str], pred: str | None,
                       answer_match: str | None = None) -> dict[str, Any]:
    """The teacher's judge node: ``{"correct": bool | None, "raw": reply}``; ``correct`` is None
    when the reply holds no single clear verdict or the call failed (``error`` says why).
    Give ``answer_match`` (``any``/``all``/``ordered``) so the prompt says how several golds count."""
    if not pred:
        return {"correct": False, "raw": "", "reason": "no answer"}
    from masksearch.agents.teacher import read_mode

    mode = read_mode(model)  # a constrained decoder answers {"verdict": ...} (same prompt, same parser)
    try:
        if mode == "json_schema":
            from masksearch.agents.schemas import judge_schema

            out = await model.with_structured_output(judge_schema(), method="json_schema", include_raw=True,
                                                     strict=True).ainvoke(
                judge_messages(question, gold, pred, answer_match), config={"metadata": {"role": "judge", "read": mode}})
            raw = message_text(out.get("raw"))
            verdict = (out.get("parsed") or {}).get("verdict")
            return {**Verdict(parse_verdict(f"Verdict: {verdict}" if verdict else raw), raw).to_dict(), "read": mode}
        v = await LLMJudge(model).ajudge(question, gold, pred, answer_match,
                                         config={"metadata": {"role": "judge", "read": mode}})
    except Exception as e:  # noqa: BLE001 - an unreachable judge is recorded, not fatal
        return {"correct": None, "raw": "", "error": f"{type(e).__name__}: {e}"}
    return {**v.to_dict(), "read": mode}
