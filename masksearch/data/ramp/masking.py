"""Masking: which spans of a passage are blanked out, and the record that results.

Spans that occur more than once in the passage, that are (part of) the page title, that start the
passage or are too long are not used (:func:`usable_spans`); ``k`` in ``1..max_masks`` is drawn per
passage from a configurable distribution truncated to the number of usable spans (:func:`draw_k`);
spans are drawn weighted by kind (numbers and dates highest) and length (:func:`choose_spans`); the
first (only) occurrence is replaced by ``[mask]`` (:func:`apply_masks`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from masksearch.data.ramp.common import RampError
from masksearch.data.ramp.selection import Candidate, _key
from masksearch.data.ramp.spans import Span, rule_spans
from masksearch.protocol import ANSWER_SEPARATOR, MASK_TOKEN

FILL_INSTRUCTION_ONE = ("Fill in the [mask] in the passage above with the original text; search for it "
                        "if you need to. Answer with the masked span only.")
FILL_INSTRUCTION_MANY = ("Fill in each of the {k} [mask] blanks in the passage above with the original "
                         "text; search for them if you need to. Answer with the masked spans in order, "
                         "separated by '" + ANSWER_SEPARATOR + "'.")

# Kind weights: numbers and dates highest, then titles and names, then everything else.
KIND_WEIGHTS = {"date": 4.0, "year": 4.0, "quantity": 4.0, "number": 3.5, "title": 2.0, "name": 2.0,
                "name1": 1.5, "term": 1.5}


# ------------------------------------------------------------------------------ masking
@dataclass
class MaskConfig:
    max_masks: int = 4
    # relative probability of k = 1..max_masks masks (truncated to the usable spans); None = uniform
    mask_dist: Sequence[float] | None = None
    max_span_words: int = 8
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))

    def __post_init__(self) -> None:
        if self.max_masks < 1:
            raise RampError(f"max_masks must be >= 1, got {self.max_masks}")
        if self.mask_dist is not None:
            d = [float(x) for x in self.mask_dist]
            if len(d) < self.max_masks:
                d += [0.0] * (self.max_masks - len(d))
            if any(x < 0 for x in d) or not any(d[: self.max_masks]):
                raise RampError(f"mask_dist needs non-negative weights with one > 0 for k in 1..{self.max_masks}: {self.mask_dist}")
            self.mask_dist = d[: self.max_masks]


def _norm_title(title: str) -> str:
    return re.sub(r"\s*\([^)]*\)\s*$", "", title).strip().lower()


_TITLE_STOP = {"of", "the", "a", "an", "and", "in", "on", "at", "for", "to", "de", "la", "le", "von", "van"}


def _title_words(title_norm: str) -> set[str]:
    return {w for w in re.findall(r"\w+", title_norm)}


def usable_spans(spans: Iterable[Span], text: str, title: str, cfg: MaskConfig | None = None,
                 drops: Counter | None = None) -> list[Span]:
    """The spans that may be masked: each occurs once in the passage, is not (part of) the title,
    does not contain the title, is not made only of title words, does not start the passage, is at most ``max_span_words`` long;
    de-duplicated, in text order."""
    cfg = cfg or MaskConfig()
    drops = drops if drops is not None else Counter()
    t = _norm_title(title)
    t_words = _title_words(t)
    out: list[Span] = []
    seen: set[str] = set()
    for sp in spans:
        s = sp.text
        low = s.lower()
        if not s.strip() or s in seen:
            drops["duplicate_span"] += 1
            continue
        seen.add(s)
        if len(s.split()) > cfg.max_span_words:
            drops["too_long"] += 1
        elif text.count(s) > 1:
            drops["repeated"] += 1
        elif t and (low in t or t in low or _only_title_words(low, t_words)):
            drops["in_title"] += 1
        elif sp.start == 0 or not text[: sp.start].strip():
            drops["at_start"] += 1
        else:
            out.append(sp)
    out.sort(key=lambda sp: sp.start)
    return out


def _only_title_words(span_low: str, t_words: set[str]) -> bool:
    words = [w for w in re.findall(r"\w+", span_low) if w not in _TITLE_STOP]
    return bool(words) and all(w in t_words for w in words)


def span_weight(sp: Span, kind_weights: dict[str, float] | None = None) -> float:
    """Kind weight (numbers and dates highest) times a length factor (longer spans weigh more)."""
    kw = kind_weights or KIND_WEIGHTS
    return kw.get(sp.kind, 1.0) * (1.0 + 0.25 * min(len(sp.text.split()), 4))


def passage_rng(seed: int, passage_id: str, strategy: str = "") -> random.Random:
    """The per-passage random stream: independent of order, shard and concurrency."""
    return random.Random(_key(seed, f"{strategy}\x00{passage_id}"))


def draw_k(n_usable: int, cfg: MaskConfig, rng: random.Random) -> int:
    """k in 1..min(max_masks, n_usable) from the configured distribution (0 if nothing is usable)."""
    hi = min(cfg.max_masks, n_usable)
    if hi < 1:
        return 0
    weights = list(cfg.mask_dist[:hi]) if cfg.mask_dist is not None else [1.0] * hi
    if not any(weights):  # the distribution puts no mass below the cap: take the largest k allowed
        return hi
    return rng.choices(range(1, hi + 1), weights=weights)[0]


def choose_spans(spans: Sequence[Span], k: int, rng: random.Random, cfg: MaskConfig | None = None) -> list[Span]:
    """k spans drawn without replacement, weighted (Efraimidis-Spirakis keys), in text order."""
    cfg = cfg or MaskConfig()
    keyed = sorted(spans, key=lambda sp: rng.random() ** (1.0 / span_weight(sp, cfg.kind_weights)), reverse=True)
    return sorted(keyed[:k], key=lambda sp: sp.start)


def apply_masks(text: str, spans: Sequence[Span]) -> str:
    """Replace each span (given by its position) with ``[mask]``."""
    out, pos = [], 0
    for sp in sorted(spans, key=lambda s: s.start):
        if sp.start < pos:
            raise ValueError(f"overlapping spans at {sp.start}")
        if text[sp.start:sp.end] != sp.text:
            raise ValueError(f"span {sp.text!r} is not at {sp.start}")
        out.append(text[pos:sp.start])
        out.append(MASK_TOKEN)
        pos = sp.end
    out.append(text[pos:])
    return "".join(out)


def make_question(masked_passage: str, k: int) -> str:
    """The masked passage plus the fill-in instruction (answers joined by ' | ', as the student
    protocol expects)."""
    instr = FILL_INSTRUCTION_ONE if k == 1 else FILL_INSTRUCTION_MANY.format(k=k)
    return f"{masked_passage}\n\n{instr}"


def example_id(passage_id: str, strategy: str, seed: int) -> str:
    return "ramp-" + hashlib.sha1(f"{passage_id}\x00{strategy}\x00{seed}".encode()).hexdigest()[:16]


def build_record(cand: Candidate, chosen: Sequence[Span], strategy: str, seed: int) -> dict[str, Any]:
    masked = apply_masks(cand.text, chosen)
    k = len(chosen)
    return {
        "id": example_id(cand.passage_id, strategy, seed),
        "passage_id": cand.passage_id,
        "title": cand.title,
        "question": make_question(masked, k),
        "masked_passage": masked,
        "answers": [sp.text for sp in chosen],
        "mask_count": k,
        "strategy": strategy,
        "passage": cand.text,
        "spans": [sp.to_dict() for sp in chosen],
    }


def mask_passage(text: str, title: str = "", *, passage_id: str = "p", spans: Sequence[Span] | None = None,
                 cfg: MaskConfig | None = None, seed: int = 0, strategy: str = "rules",
                 drops: Counter | None = None) -> dict[str, Any] | None:
    """One RAMP record for one passage (``spans`` default: the rule spans), or None when no span is
    usable or the masked text would start with ``[mask]``."""
    cfg = cfg or MaskConfig()
    text = " ".join(text.split())
    cand = Candidate(passage_id, title, text)
    spans = rule_spans(text) if spans is None else spans
    ok = usable_spans(spans, text, title, cfg, drops)
    rng = passage_rng(seed, passage_id, strategy)
    k = draw_k(len(ok), cfg, rng)
    if not k:
        return None
    rec = build_record(cand, choose_spans(ok, k, rng, cfg), strategy, seed)
    if rec["masked_passage"].lstrip().startswith(MASK_TOKEN):
        return None
    return rec

