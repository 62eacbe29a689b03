"""One way to score an answer: the normaliser, the pairwise metrics and the multi-span rules.

Every score in the project comes from here: the teacher's acceptance verdict
(:func:`masksearch.agents.judge.string_verdict`), every GRPO reward
(:mod:`masksearch.training.rewards`) and every evaluation metric (:mod:`masksearch.eval.metrics`).
Pure Python; it imports nothing but the protocol's answer joiner.

**Pairwise metrics follow the official definitions**, so a number here is a number from the
papers' own scorers:

* :func:`normalize` is HotpotQA's / SQuAD's / FlashRAG's ``normalize_answer``: lower case, *delete*
  every ASCII punctuation character (``string.punctuation``; ``U.S.`` -> ``us``, ``1,000`` -> ``1000``,
  ``DiCaprio's`` -> ``dicaprios``), remove the articles a/an/the, collapse whitespace.  Characters
  outside ``string.punctuation`` (``“ ” – … £``) stay, exactly as the official scorers leave them.
* :func:`exact_match`, :func:`f1`, :func:`precision` and :func:`token_recall` are HotpotQA's
  ``exact_match_score`` / ``f1_score`` and FlashRAG's ``ExactMatch`` / ``F1_Score`` /
  ``Precision_Score`` / ``Recall_Score``, including the **yes/no rule**: when either normalised side
  is ``yes``, ``no`` or ``noanswer`` and the two differ, F1, precision and recall are 0 (so
  ``"yes or no"`` earns nothing on a yes/no question).  Given several gold alternatives, each is
  the max over them (as FlashRAG does, per metric).
* :func:`cover_em`: the normalised gold occurs in the normalised prediction on word boundaries
  (no ``\\w`` character on either side); the yes/no rule applies here too.

**Multi-span answers** (several ``[mask]`` blanks, FanoutQA lists) are scored by
:func:`score` under an explicit match rule (:data:`MATCH_RULES`); the prediction's parts are
split on the protocol's ``" | "`` joiner (:func:`masksearch.protocol.split_answer`):

* ``"any"``: the golds are alternatives; every metric is the official one, max over them;
* ``"all"``: every gold string is required, in any order (FanoutQA-style).  Each gold is scored
  against its best-matching part of the prediction and the scores are averaged over the golds;
* ``"ordered"``: every gold string is required, in order (RAMP masks): gold *i* against part *i*.

Under ``"all"`` and ``"ordered"``, ``em`` is 1 only when the parts are exactly the golds (as a
multiset, or in order), and a prediction with more parts than golds has every graded metric
scaled by ``n_golds / n_parts``: listing candidates is not a free hedge.  ``cover_em`` under
``"all"`` is the fraction of gold strings found.  It is *not* FanoutQA's published loose/strict
accuracy, whose normaliser lemmatises with spaCy; do not compare the two.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Iterable, Mapping

from masksearch.protocol import split_answer

MATCH_RULES = ("any", "all", "ordered")
METRICS = ("em", "f1", "token_recall", "precision", "cover_em")
YES_NO_ANSWERS = frozenset({"yes", "no", "noanswer"})

_DELETE_PUNCT = str.maketrans("", "", string.punctuation)
_SPACE_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ------------------------------------------------------------------ normalisation
def normalize(text: Any, *, punctuation_as_space: bool = False) -> str:
    """HotpotQA/SQuAD ``normalize_answer``: lower case, no ASCII punctuation, no a/an/the, single spaces.

    ``punctuation_as_space=True`` turns each punctuation character into a word break instead of
    deleting it; only :func:`span_in_text` uses it, to find a span in running text
    (``"Obama's"`` contains ``"Obama"``).  Scores always use the official deletion.
    """
    if text is None:
        return ""
    s = str(text).lower().translate(_SPACE_PUNCT if punctuation_as_space else _DELETE_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _golds(golds: str | Iterable[Any] | None) -> list[str]:
    if golds is None:
        return []
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds if g is not None]


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


# ------------------------------------------------------------------ pairwise (one gold)
def _yes_no_mismatch(p: str, g: str) -> bool:
    return (p in YES_NO_ANSWERS or g in YES_NO_ANSWERS) and p != g


def _token_scores(p: str, g: str) -> tuple[float, float, float]:
    """(f1, precision, recall) of two *normalised* strings, HotpotQA's ``f1_score``."""
    if _yes_no_mismatch(p, g):
        return 0.0, 0.0, 0.0
    pt, gt = p.split(), g.split()
    same = sum((Counter(pt) & Counter(gt)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    prec, rec = same / len(pt), same / len(gt)
    return 2 * prec * rec / (prec + rec), prec, rec


def _pair(pred: str, gold: str) -> dict[str, float]:
    p, g = normalize(pred), normalize(gold)
    f, prec, rec = _token_scores(p, g)
    cover = 0.0 if _yes_no_mismatch(p, g) else float(_contains(p, g))
    return {"em": float(p == g), "f1": f, "token_recall": rec, "precision": prec, "cover_em": cover}


def _best(metric: str, prediction: Any, golds: str | Iterable[Any] | None) -> float:
    pred = "" if prediction is None else str(prediction)
    return max((_pair(pred, g)[metric] for g in _golds(golds)), default=0.0)


def exact_match(prediction: Any, golds: str | Iterable[Any] | None) -> float:
    """1.0 when the normalised prediction equals a normalised gold (a string or alternatives)."""
    return _best("em", prediction, golds)


def f1(prediction: Any, golds: str | Iterable[Any] | None) -> float:
    """HotpotQA's token F1 (with the yes/no rule), max over gold alternatives."""
    return _best("f1", prediction, golds)


def precision(prediction: Any, golds: str | Iterable[Any] | None) -> float:
    """Share of the prediction's tokens that are gold tokens (FlashRAG ``Precision_Score``)."""
    return _best("precision", prediction, golds)


def token_recall(prediction: Any, golds: str | Iterable[Any] | None) -> float:
    """FlashRAG's ``Recall_Score``: share of the gold's tokens (with multiplicity) found in the
    prediction, with the yes/no rule, max over gold alternatives.  The paper's headline metric."""
    return _best("token_recall", prediction, golds)


def cover_em(prediction: Any, golds: str | Iterable[Any] | None) -> float:
    """1.0 when a normalised gold occurs in the normalised prediction on word boundaries."""
    return _best("cover_em", prediction, golds)


def span_in_text(text: Any, span: Any) -> bool:
    """Whether ``span`` occurs in running ``text`` on word boundaries, punctuation read as a break
    (the grounding check: was the answer in what the student was shown)."""
    return _contains(normalize(text, punctuation_as_space=True), normalize(span, punctuation_as_space=True))


# ------------------------------------------------------------------ match rules
def match_rule(answer_match: str | None = None, mask_count: Any = None) -> str:
    """The match rule of a question from its record fields.

    ``answer_match`` is ``any``, ``all`` or ``ordered``; a record written before ``ordered``
    existed says ``all`` for RAMP masks, which carry a ``mask_count``: those are ``ordered``.
    No ``answer_match`` means ``ordered`` for a RAMP record, else ``any``.
    """
    rule = str(answer_match).strip().lower() if answer_match else ""
    if not rule:
        return "ordered" if mask_count is not None else "any"
    if rule == "all" and mask_count is not None:
        return "ordered"
    if rule not in MATCH_RULES:
        raise ValueError(f"unknown answer_match {answer_match!r}: use one of {', '.join(MATCH_RULES)}")
    return rule


def example_match(example: Any) -> str:
    """:func:`match_rule` of a ``QAExample``, a ``Trajectory`` or a record mapping."""
    if isinstance(example, Mapping):
        meta = example.get("metadata") or {}
        return match_rule(example.get("answer_match") or meta.get("answer_match"),
                          example.get("mask_count", meta.get("mask_count")))
    meta = getattr(example, "metadata", None) or {}
    return match_rule(getattr(example, "answer_match", None) or meta.get("answer_match"),
                      meta.get("mask_count"))


# ------------------------------------------------------------------ one prediction, many golds
def _zeros() -> dict[str, float]:
    return {m: 0.0 for m in METRICS}


def score(prediction: Any, golds: str | Iterable[Any] | None, match: str = "any") -> dict[str, float]:
    """Every metric of one prediction (``em, f1, token_recall, precision, cover_em``, each in [0, 1]).

    ``match`` is the rule of :data:`MATCH_RULES`; see the module docstring.  With no gold
    strings every metric is 0.
    """
    if match not in MATCH_RULES:
        raise ValueError(f"unknown match rule {match!r}: use one of {', '.join(MATCH_RULES)}")
    gold = _golds(golds)
    if not gold:
        return _zeros()
    pred = "" if prediction is None else str(prediction)
    if match == "any":
        pairs = [_pair(pred, g) for g in gold]
        return {m: max(p[m] for p in pairs) for m in METRICS}

    parts = split_answer(pred) or [pred.strip()]
    n, n_parts = len(gold), len(parts)
    n_pred_tokens = sum(len(normalize(part).split()) for part in parts)
    if match == "ordered":
        per = [_pair(parts[i] if i < n_parts else "", g) for i, g in enumerate(gold)]
        em = float(n_parts == n and all(p["em"] for p in per))
        # precision: the share of predicted tokens that are right *in their position*
        right = sum(p["precision"] * len(normalize(parts[i]).split()) for i, p in enumerate(per) if i < n_parts)
        prec = right / n_pred_tokens if n_pred_tokens else 0.0
    else:
        by_gold = [[_pair(part, g) for part in parts] for g in gold]
        per = [{m: max(c[m] for c in cands) for m in METRICS} for cands in by_gold]
        em = float(Counter(map(normalize, parts)) == Counter(map(normalize, gold)))
        # precision: the share of predicted tokens that are gold tokens, whichever gold
        _, prec, _ = _token_scores(normalize(" ".join(parts)), normalize(" ".join(gold)))
    dilution = n / max(n, n_parts)  # extra parts count as wrong answers
    out = {m: dilution * sum(p[m] for p in per) / n for m in ("f1", "token_recall", "cover_em")}
    out.update(em=em, precision=prec)
    return {m: out[m] for m in METRICS}


def score_example(prediction: Any, example: Any) -> dict[str, float]:
    """:func:`score` against a ``QAExample`` / ``Trajectory`` / record, under its own match rule."""
    if isinstance(example, Mapping):
        golds = example.get("golden_answers")
        if golds is None:
            golds = example.get("answers")
    else:
        golds = getattr(example, "golden_answers", None)
    return score(prediction, golds, example_match(example))


def capped_recall(prediction: Any, golds: str | Iterable[Any] | None, match: str = "any",
                  min_precision: float = 2 / 3) -> float:
    """Token recall, scaled down when the answer's precision is below ``min_precision``.

    Recall alone rewards listing candidates: ``"Paris | London | Rome | Berlin"`` has recall 1 on
    the gold ``Paris``.  Here it earns ``recall * min(1, precision / min_precision)``: with the
    default 2/3 (up to half as many extra tokens as gold tokens are free) that is 1 for
    ``"Paris"``, 0.75 for ``"Paris, France"`` and 0.375 for the four cities.  ``min_precision=0``
    is the paper's plain recall.
    """
    s = score(prediction, golds, match)
    r = s["token_recall"]
    if min_precision > 0 and r > 0:
        r *= min(1.0, s["precision"] / min_precision)
    return r
