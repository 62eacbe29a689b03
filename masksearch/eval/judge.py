"""The LLM judge of ``masksearch eval --judge SPEC``: the project's one judge.

Its prompt and strict parser live in :mod:`masksearch.agents.judge` (the teacher's judge node and
the GRPO judge reward use the same ones); this module keeps the names evaluation code imports.
A reply that is not a single clear verdict is *no verdict* (``Verdict.correct is None``), which is
never counted as correct.
"""

from __future__ import annotations

from masksearch.agents.judge import LLMJudge, Verdict, judge_messages, parse_verdict

__all__ = ["LLMJudge", "Verdict", "judge_messages", "parse_verdict"]
