"""Question records shared by every stage: RAMP examples and benchmark questions alike.

:func:`load_qa` reads the shared benchmark format (``id, question, golden_answers``, optional
``answer_match``) and RAMP files (``id, question, answers, mask_count``) into :class:`QAExample`;
bad lines are counted and skipped.  ``answer_match`` is the match rule of
:mod:`masksearch.scoring`: ``"any"`` (alternatives), ``"all"`` (every string, any order: FanoutQA)
or ``"ordered"`` (every string, in order: RAMP masks, the default of a RAMP record).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from masksearch.scoring import MATCH_RULES
from masksearch.utils.jsonl import ReadStats, iter_jsonl


@dataclass
class QAExample:
    id: str
    question: str
    golden_answers: list[str]
    answer_match: str = "any"  # "any": alternatives; "all": every string, any order (FanoutQA); "ordered": RAMP
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_count(self) -> int | None:
        return self.metadata.get("mask_count")


def qa_from_record(rec: dict[str, Any], source: str = "") -> QAExample:
    """Normalise one record (benchmark or RAMP) to a :class:`QAExample`; raises ValueError."""
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise ValueError("missing question")
    if "golden_answers" in rec:
        gold = rec["golden_answers"]
        match = rec.get("answer_match") or "any"
    elif "answers" in rec:  # RAMP: every masked span must be restored, in order
        gold = rec["answers"]
        match = rec.get("answer_match") or "ordered"
        source = source or "ramp"
    elif "answer" in rec:
        gold = rec["answer"]
        match = "any"
    else:
        raise ValueError("missing golden_answers/answers")
    if match not in MATCH_RULES:
        raise ValueError(f"bad answer_match {match!r} (use {', '.join(MATCH_RULES)})")
    if isinstance(gold, str):
        gold = [gold]
    if not isinstance(gold, list) or not all(isinstance(g, (str, int, float)) for g in gold):
        raise ValueError("answers must be a list of strings")
    meta = {k: v for k, v in rec.items() if k not in {"id", "question", "golden_answers", "answers", "answer"}}
    return QAExample(
        id=str(rec.get("id", "")),
        question=q.strip(),
        golden_answers=[str(g) for g in gold],
        answer_match=match,
        source=str(rec.get("source", source) or source),
        metadata=meta,
    )


def iter_qa(path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[QAExample]:
    stats = stats if stats is not None else ReadStats()
    name = os.path.basename(str(path)).split(".")[0]
    for i, rec in enumerate(iter_jsonl(path, stats=stats)):
        try:
            ex = qa_from_record(rec, source=name)
        except ValueError as e:
            stats.read -= 1
            stats.skipped[str(e)] += 1
            continue
        if not ex.id:
            ex.id = f"{name}-{i}"
        yield ex


def load_qa(path: str | os.PathLike, limit: int | None = None, stats: ReadStats | None = None) -> list[QAExample]:
    out = []
    for ex in iter_qa(path, stats=stats):
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    return out
