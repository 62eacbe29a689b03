"""Answer metrics of the evaluation: EM, token F1, token recall (the paper's headline metric),
precision and cover-EM, all from :mod:`masksearch.scoring` (the project's one scorer).

EM, F1, precision and recall are the official HotpotQA / FlashRAG definitions (their
``normalize_answer`` and yes/no rule); every metric is the max over gold alternatives.  A
question's match rule comes from its record (:func:`masksearch.scoring.example_match`):
``any`` (alternatives), ``all`` (every string, any order: FanoutQA) or ``ordered`` (RAMP masks).

:func:`score` returns every metric for one prediction as a dict of floats in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from masksearch.scoring import METRICS, cover_em, exact_match, f1, precision, score_example, token_recall
from masksearch.scoring import normalize as normalize_answer

HEADLINE_METRIC = "token_recall"

__all__ = ["METRICS", "HEADLINE_METRIC", "normalize_answer", "exact_match", "f1", "precision",
           "token_recall", "cover_em", "score", "aggregate"]


def score(prediction: str | None, example: Any) -> dict[str, float]:
    """Every metric for one prediction against a :class:`~masksearch.data.qa.QAExample` (or a
    mapping with ``golden_answers`` and optional ``answer_match`` / ``mask_count``), under the
    example's own match rule."""
    return score_example(prediction, example)


def aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over per-question metric dicts (missing values skipped)."""
    out: dict[str, float] = {}
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out
