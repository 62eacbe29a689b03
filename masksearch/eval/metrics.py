"""Answer metrics: normalised exact match, token F1, token recall (the paper's headline metric),
cover-EM, and FanoutQA's all-strings score.

All string metrics compare answers after SQuAD-style normalisation (lower case, punctuation and
the articles a/an/the removed, whitespace collapsed).

Gold answers come in two flavours (:attr:`QAExample.answer_match`):

* ``"any"`` – the strings are *alternatives* (aliases): every metric is the max over them;
* ``"all"`` – every string is required (FanoutQA, RAMP): each metric is averaged over the gold
  strings, each gold string being compared with the best-matching part of the prediction
  (multi-span predictions are split on ``|``).  ``all_match`` is FanoutQA's score: the fraction of
  gold strings found in the prediction.

:func:`score` returns every metric for one prediction as a dict of floats in ``[0, 1]``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

METRICS = ("em", "f1", "token_recall", "cover_em", "all_match")
HEADLINE_METRIC = "token_recall"

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation) | {"‘", "’", "“", "”", "–", "—", "…"}


def normalize_answer(s: Any) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    if s is None:
        return ""
    s = str(s).lower()
    s = "".join(" " if ch in _PUNCT else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens(s: Any) -> list[str]:
    return normalize_answer(s).split()


def _as_list(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


# ------------------------------------------------------------------ single-pair metrics
def _em(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred), normalize_answer(gold)
    return float(bool(g) and p == g)


def _f1(pred: str, gold: str) -> float:
    p, g = _tokens(pred), _tokens(gold)
    if not p or not g:
        return 0.0
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def _recall(pred: str, gold: str) -> float:
    """Fraction of the gold answer's tokens that occur in the prediction (with multiplicity)."""
    p, g = _tokens(pred), _tokens(gold)
    if not g or not p:
        return 0.0
    return sum((Counter(p) & Counter(g)).values()) / len(g)


def _cover(pred: str, gold: str) -> float:
    """The normalised gold answer occurs in the normalised prediction, on word boundaries."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not g or not p:
        return 0.0
    return float(f" {g} " in f" {p} ")


def _best(fn, pred: str | None, golds: str | Iterable[str]) -> float:
    if not pred:
        return 0.0
    return max((fn(pred, g) for g in _as_list(golds)), default=0.0)


# ------------------------------------------------------------------ public (max over alternatives)
def exact_match(prediction: str | None, golds: str | Iterable[str]) -> float:
    return _best(_em, prediction, golds)


def f1(prediction: str | None, golds: str | Iterable[str]) -> float:
    return _best(_f1, prediction, golds)


def token_recall(prediction: str | None, golds: str | Iterable[str]) -> float:
    return _best(_recall, prediction, golds)


def cover_em(prediction: str | None, golds: str | Iterable[str]) -> float:
    return _best(_cover, prediction, golds)


def all_match(prediction: str | None, golds: str | Iterable[str]) -> float:
    """FanoutQA's all-strings score: the fraction of gold strings found in the prediction."""
    golds = [g for g in _as_list(golds) if normalize_answer(g)]
    if not prediction or not golds:
        return 0.0
    return sum(_cover(prediction, g) for g in golds) / len(golds)


def _split_prediction(prediction: str) -> list[str]:
    from masksearch.protocol import split_answer

    return split_answer(prediction) or [prediction]


# ------------------------------------------------------------------ score one prediction
def score(prediction: str | None, example: Any) -> dict[str, float]:
    """Every metric for one prediction against a :class:`~masksearch.data.qa.QAExample`.

    ``example`` may also be a mapping with ``golden_answers`` (and optional ``answer_match``).
    """
    if isinstance(example, Mapping):
        golds = list(example.get("golden_answers") or [])
        match = example.get("answer_match", "any")
    else:
        golds = list(example.golden_answers)
        match = getattr(example, "answer_match", "any")
    pred = (prediction or "").strip()
    golds = [str(g) for g in golds if normalize_answer(g)]
    if not golds:
        return {m: 0.0 for m in METRICS}
    if match == "all":
        parts = _split_prediction(pred) if pred else []
        n = len(golds)

        def per_gold(fn) -> float:
            return sum(max((fn(p, g) for p in parts), default=0.0) for g in golds) / n

        am = all_match(pred, golds)
        return {
            "em": per_gold(_em),
            "f1": per_gold(_f1),
            # a gold token counts when it appears anywhere in the prediction
            "token_recall": sum(_recall(pred, g) for g in golds) / n if pred else 0.0,
            "cover_em": float(am == 1.0),
            "all_match": am,
        }
    return {
        "em": exact_match(pred, golds),
        "f1": f1(pred, golds),
        "token_recall": token_recall(pred, golds),
        "cover_em": cover_em(pred, golds),
        # with alternatives, "all strings found" means one alternative is found
        "all_match": cover_em(pred, golds),
    }


def aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over per-question metric dicts (missing values skipped)."""
    out: dict[str, float] = {}
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out
