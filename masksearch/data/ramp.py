"""RAMP data generation: Retrieval-Augmented Mask Prediction examples from Wikipedia passages.

Pipeline (:func:`generate_ramp`):

1. **Selection** – stream any corpus the retrieval layer reads, drop list-like, table-like, too
   short or too long passages (:func:`passage_filter_reason`), order the rest by a seeded hash of
   the passage id (a deterministic shuffle that needs no second pass and no whole-corpus memory:
   bottom-k sampling), optionally keep only shard ``i`` of ``n``.
2. **Span extraction** behind one interface, :class:`SpanExtractor`:

   * ``rules`` – no model: dates, years, quantities, numbers, quoted titles, capitalised
     (multi-word) names, by regular expressions (thousands of passages a second);
   * ``llm`` – any LangChain chat model: a prompt asking for the finest-grained knowledge spans,
     answered as JSON; replies are parsed strictly (:func:`parse_span_reply`, never ``eval``);
     a reply that cannot be parsed is counted and the passage skipped;
   * ``ppl`` – the paper's "harder masks": the ``rules`` candidates are scored by a local causal
     LM (:class:`PplScorer`), the perplexity of each span given the passage with that span masked;
     the hardest ``k`` are masked.  Scoring is batched across passages.
3. **Masking** (:func:`usable_spans`, :func:`choose_spans`, :func:`apply_masks`) – spans that
   occur more than once in the passage, that are (part of) the page title, that start the passage
   or are too long are not used; ``k`` in ``1..max_masks`` is drawn per passage from a configurable
   distribution truncated to the number of usable spans; spans are drawn weighted by kind (numbers
   and dates highest) and length; the first (only) occurrence is replaced by ``[mask]``; samples
   that start with ``[mask]`` and duplicate masked passages are dropped.
4. **Output** – one JSONL record per example (:data:`RECORD_FIELDS`), written through
   :class:`~masksearch.utils.jsonl.ResumableJsonlWriter`: ids are derived from passage id,
   strategy and seed, so a rerun after a kill skips what is done and duplicates nothing.

Readers: :func:`load_ramp` (a ``datasets.Dataset``), :func:`curriculum` (order / buckets by mask
count), :func:`solvability_report` (is the source passage in the top-k of a search for the masked
passage?).  Every record also loads through :func:`masksearch.data.qa.qa_from_record`.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import math
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from masksearch.errors import MaskSearchError, UnknownSpecError
from masksearch.utils.aio import run_sync
from masksearch.protocol import ANSWER_SEPARATOR, MASK_TOKEN
from masksearch.utils.jsonl import (ReadStats, ResumableJsonlWriter, in_shard, input_fingerprint, iter_jsonl,
                                    parse_shard)

STRATEGIES = ("rules", "llm", "ppl")

RECORD_FIELDS = ("id", "passage_id", "title", "question", "masked_passage", "answers", "mask_count",
                 "strategy", "passage", "spans")

FILL_INSTRUCTION_ONE = ("Fill in the [mask] in the passage above with the original text; search for it "
                        "if you need to. Answer with the masked span only.")
FILL_INSTRUCTION_MANY = ("Fill in each of the {k} [mask] blanks in the passage above with the original "
                         "text; search for them if you need to. Answer with the masked spans in order, "
                         "separated by '" + ANSWER_SEPARATOR + "'.")

# Kind weights: numbers and dates highest, then titles and names, then everything else.
KIND_WEIGHTS = {"date": 4.0, "year": 4.0, "quantity": 4.0, "number": 3.5, "title": 2.0, "name": 2.0,
                "name1": 1.5, "term": 1.5}


class RampError(MaskSearchError):
    """A RAMP job cannot run as asked (bad option, empty corpus...)."""


# ------------------------------------------------------------------------------ selection
@dataclass
class PassageFilter:
    """Which passages may become RAMP examples."""

    min_words: int = 30
    max_words: int = 300
    max_list_lines: int = 2        # more bullet/numbered lines than this: list-like
    max_comma_ratio: float = 0.2   # commas + semicolons per word above this: list-like
    max_table_marks: int = 2       # more '|' or tab characters than this: table-like
    max_digit_ratio: float = 0.3   # share of tokens that are numbers above this: table-like


_NUM_TOKEN = re.compile(r"(?<!\S)\d")
_LIST_LINE = re.compile(r"^\s*(?:[-*•·]|\d+[.)])\s+", re.M)
_DISAMBIG = re.compile(r"\b(?:may|can) (?:also )?refer to\b", re.I)


def passage_filter_reason(title: str, text: str, flt: PassageFilter | None = None) -> str | None:
    """Why a passage is not used (``too_short``, ``too_long``, ``list_like``, ``table_like``), or None."""
    flt = flt or PassageFilter()
    words = text.split()
    n = len(words)
    if n < flt.min_words:
        return "too_short"
    if n > flt.max_words:
        return "too_long"
    if text.count("|") + text.count("\t") > flt.max_table_marks:
        return "table_like"
    if len(_NUM_TOKEN.findall(text)) / n > flt.max_digit_ratio:
        return "table_like"
    if len(_LIST_LINE.findall(text)) > flt.max_list_lines or _DISAMBIG.search(text):
        return "list_like"
    if (text.count(",") + text.count(";")) / n > flt.max_comma_ratio:
        return "list_like"
    return None


def _key(seed: int, pid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{pid}".encode(), digest_size=8).digest(), "big")


def _iter_corpus(corpus: Any, stats: ReadStats) -> Iterator[tuple[str, str, str]]:
    """(id, title, text) from a corpus path (any format ``read_corpus`` knows) or an iterable of
    Passage objects / dicts."""
    if isinstance(corpus, (str, os.PathLike)):
        if not os.path.exists(corpus) and not str(corpus).startswith("hf:"):
            raise RampError(f"corpus not found: {corpus} (pass a JSONL/TSV file or folder; "
                            "the shared one is ../shared/data/corpus/wiki_passages.jsonl)")
        try:
            from masksearch.retrieval.corpus import read_corpus
        except ImportError:  # retrieval layer not installed: plain JSONL
            for i, rec in enumerate(iter_jsonl(corpus, stats=stats)):
                text = rec.get("text") or rec.get("contents")
                if isinstance(text, str) and text.strip():
                    yield str(rec.get("id", i)), str(rec.get("title", "")), text
            return
        for p in read_corpus(corpus, stats=stats):
            yield p.id, p.title, p.text
        return
    for i, item in enumerate(corpus):
        if isinstance(item, dict):
            text = item.get("text") or item.get("contents") or ""
            yield str(item.get("id", i)), str(item.get("title", "")), str(text)
        else:
            yield str(getattr(item, "id", i)), str(getattr(item, "title", "")), str(getattr(item, "text", ""))
        stats.read += 1


@dataclass
class Candidate:
    passage_id: str
    title: str
    text: str


def select_passages(corpus: Any, n: int, seed: int = 0, shard: str | tuple[int, int] | None = None,
                    flt: PassageFilter | None = None, filtered: Counter | None = None,
                    stats: ReadStats | None = None) -> list[Candidate]:
    """The first ``n`` passages of the seeded shuffle of the usable passages (in that order).

    Deterministic in (corpus, seed, shard, filter): each passage gets the key
    ``blake2b(seed, id)`` and the ``n`` smallest keys are kept, streaming, in ``O(n)`` memory.
    ``filtered`` receives the filter reasons of the dropped passages (only passages whose key
    would have placed them in the sample are examined, so the counts cover those).
    """
    shard_t = parse_shard(shard) if isinstance(shard, (str, type(None))) else shard
    filtered = filtered if filtered is not None else Counter()
    stats = stats if stats is not None else ReadStats()
    heap: list[tuple[int, int, Candidate]] = []  # max-heap on key via negation
    seen_ids: set[str] = set()
    for idx, (pid, title, text) in enumerate(_iter_corpus(corpus, stats)):
        if not in_shard(idx, shard_t):
            continue
        k = _key(seed, pid)
        if len(heap) >= n and (not n or -heap[0][0] <= k):
            continue  # would not be sampled: not even looked at
        why = passage_filter_reason(title, text, flt)
        if why:
            filtered[why] += 1
            continue
        if pid in seen_ids:
            filtered["duplicate_id"] += 1
            continue
        seen_ids.add(pid)
        if len(heap) < n:
            heapq.heappush(heap, (-k, idx, Candidate(pid, title, text)))
        elif n and -heap[0][0] > k:
            heapq.heapreplace(heap, (-k, idx, Candidate(pid, title, text)))
    heap.sort(key=lambda t: (-t[0], t[1]))
    out = [c for _, _, c in heap]
    for c in out:
        c.text = " ".join(c.text.split())
    return out


# ------------------------------------------------------------------------------ spans
@dataclass
class Span:
    text: str
    start: int
    end: int
    kind: str = "term"
    score: float | None = None  # ppl: mean negative log-likelihood of the span (higher = harder)

    def to_dict(self) -> dict[str, Any]:
        d = {"text": self.text, "start": self.start, "end": self.end, "kind": self.kind}
        if self.score is not None:
            d["nll"] = round(self.score, 4)
        return d


_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
          r"Jan\.|Feb\.|Mar\.|Apr\.|Aug\.|Sept?\.|Oct\.|Nov\.|Dec\.)")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE_RE = re.compile(
    rf"(?=[JFMASOND\d])\b(?:{_MONTH}\s+{_DAY},?\s+\d{{3,4}}|{_DAY}\s+{_MONTH},?\s+\d{{3,4}}|{_MONTH},?\s+\d{{4}}|"
    rf"{_MONTH}\s+{_DAY}\b|{_DAY}\s+{_MONTH}|\d{{1,2}}(?:st|nd|rd|th)[- ]century|\d{{3}}0s)(?!\w)")
_YEAR_RE = re.compile(r"(?=[12])(?<![\w.,$£€])(?:1[0-9]{3}|20[0-9]{2})(?![\w%]|[.,]\d)")
_UNITS = (r"(?:million|billion|trillion|thousand|hundred|percent|per cent|%|km2|km²|sq mi|square (?:miles|kilometres|kilometers|metres|meters|feet)|"
          r"km|kilometres|kilometers|metres|meters|m|cm|mm|miles?|mi|feet|foot|ft|inches|in|kg|kilograms|g|grams|tonnes|tons|pounds|lb|lbs|"
          r"hectares|ha|acres|°C|°F|degrees|mph|km/h|kW|MW|GW|hours|minutes|seconds|years|days|weeks|months)")
_QUANT_RE = re.compile(
    rf"(?=[$£€¥\d])(?:[$£€¥]\s?\d[\d,]*(?:\.\d+)?(?:\s(?:million|billion|trillion|thousand))?|"
    rf"\b\d[\d,]*(?:\.\d+)?\s?{_UNITS})(?![\w])")
_NUMBER_RE = re.compile(r"(?=\d)(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?![\w]|[.,]\d)")
_QUOTE_RE = re.compile(r"(?=[\"“])(?:\"([^\"]{2,80})\"|“([^”]{2,80})”)")
_CONNECT = r"(?:of|the|de|da|del|della|di|do|dos|du|des|von|van|der|den|la|le|les|y|al|bin|ibn|and|for|on|upon)"
_CAPWORD = r"(?:[A-Z][a-z]{0,2}\.|[A-Z][\w'’\-]*\w|[A-Z])"
_NAME_RE = re.compile(rf"(?=[A-Z])(?<![\w'’\-]){_CAPWORD}(?:\s+(?:{_CONNECT}\s+){{0,2}}{_CAPWORD})*")
_SENT_START = re.compile(r"(?:^|[.!?:;]\s+|[\"(]\s*)$")
_STOP_CAPS = {
    "The", "A", "An", "In", "On", "At", "He", "She", "It", "They", "His", "Her", "Its", "Their", "This",
    "That", "These", "Those", "After", "Before", "During", "Although", "Despite", "From", "For", "As", "By",
    "With", "When", "While", "Since", "Following", "However", "Also", "Both", "Each", "Some", "Many", "Most",
    "There", "Here", "Then", "Later", "Today", "Currently", "Originally", "I", "We", "You", "Our", "If",
    "But", "And", "Or", "Of", "To", "Is", "Was", "Were", "Are", "Be", "Not", "One", "Other", "According",
    "Between", "Under", "Over", "Among", "Born", "Following", "Unlike", "Like", "Until", "Upon", "Within",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "February",
    "March", "April", "May", "June", "July", "August", "September", "October", "November", "December",
}
_PRIORITY = {"date": 6, "quantity": 5, "title": 4, "name": 3, "year": 2, "number": 1, "name1": 0}


def _trim_name(text: str, start: int, end: int, full: str) -> tuple[int, int] | None:
    """Strip leading stop words (The, In, He...) and a trailing possessive from a capitalised run."""
    words = text.split()
    while words and words[0] in _STOP_CAPS:
        cut = full.find(words[0], start) + len(words[0])
        while cut < end and full[cut].isspace():
            cut += 1
        start = cut
        words = words[1:]
        # a connector left at the front ("of ...") is no name start
        while words and re.fullmatch(_CONNECT, words[0]):
            cut = full.find(words[0], start) + len(words[0])
            while cut < end and full[cut].isspace():
                cut += 1
            start = cut
            words = words[1:]
    if not words:
        return None
    s = full[start:end]
    for suf in ("'s", "’s"):
        if s.endswith(suf):
            end -= 2
    if full[end - 1] == "'" or full[end - 1] == "’":
        end -= 1
    return (start, end) if end > start else None


def rule_spans(text: str) -> list[Span]:
    """Candidate knowledge spans of a passage, non-overlapping, in text order (no filtering)."""
    cands: list[tuple[int, int, str]] = []
    for m in _DATE_RE.finditer(text):
        cands.append((m.start(), m.end(), "date"))
    for m in _QUANT_RE.finditer(text):
        cands.append((m.start(), m.end(), "quantity"))
    for m in _YEAR_RE.finditer(text):
        cands.append((m.start(), m.end(), "year"))
    for m in _NUMBER_RE.finditer(text):
        cands.append((m.start(), m.end(), "number"))
    for m in _QUOTE_RE.finditer(text):
        g = 1 if m.group(1) is not None else 2
        inner = m.group(g)
        s, e = m.start(g), m.end(g)
        lead = len(inner) - len(inner.lstrip())
        s, e = s + lead, e - (len(inner) - len(inner.rstrip()))
        if e > s and len(inner.split()) <= 10:
            cands.append((s, e, "title"))
    for m in _NAME_RE.finditer(text):
        trimmed = _trim_name(m.group(0), m.start(), m.end(), text)
        if not trimmed:
            continue
        s, e = trimmed
        span = text[s:e]
        if not span or span in _STOP_CAPS:
            continue
        multi = " " in span
        if not multi:
            at_sentence_start = bool(_SENT_START.search(text[max(0, s - 3):s])) or s == 0
            if at_sentence_start or len(span) < 3:
                continue
        cands.append((s, e, "name" if multi else "name1"))
    cands.sort(key=lambda c: (-_PRIORITY[c[2]], -(c[1] - c[0]), c[0]))
    taken = bytearray(len(text))
    out: list[Span] = []
    for s, e, kind in cands:
        if taken.find(1, s, e) >= 0:
            continue
        taken[s:e] = b"\x01" * (e - s)
        out.append(Span(text[s:e], s, e, kind))
    out.sort(key=lambda sp: sp.start)
    return out


def classify_span(span: str) -> str:
    """The kind of a span found by a model (for the masking weights)."""
    if _DATE_RE.fullmatch(span):
        return "date"
    if _YEAR_RE.fullmatch(span):
        return "year"
    if _QUANT_RE.fullmatch(span):
        return "quantity"
    if _NUMBER_RE.fullmatch(span):
        return "number"
    if span[:1].isupper():
        return "name" if " " in span else "name1"
    return "term"


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


# ------------------------------------------------------------------------------ llm spans
LLM_SYSTEM_PROMPT = "You choose the spans to blank out of an encyclopedia passage for a fill-in-the-blank quiz."
LLM_USER_PROMPT = (
    "Passage:\n{passage}\n\n"
    "List the finest-grained knowledge spans of this passage: names of people, places, organisations, "
    "works and events, dates, numbers, and short specific terms that a reader could not infer from the "
    "rest of the passage. Copy each span exactly as written in the passage, at most 6 words each. "
    "Reply with only a JSON list of strings, for example: [\"Ada Lovelace\", \"1843\", \"Analytical Engine\"]"
)


class SpanParseError(ValueError):
    """A model reply with no JSON list of spans in it."""


_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _items_to_spans(obj: Any) -> list[str] | None:
    if isinstance(obj, dict):
        for key in ("spans", "entities", "answers", "items", "knowledge_spans", "results"):
            if isinstance(obj.get(key), list):
                return _items_to_spans(obj[key])
        return None
    if not isinstance(obj, list):
        return None
    out: list[str] = []
    for it in obj:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, (int, float)) and not isinstance(it, bool):
            out.append(str(it))
        elif isinstance(it, dict):
            for key in ("span", "text", "entity", "value", "name"):
                if isinstance(it.get(key), (str, int, float)):
                    out.append(str(it[key]))
                    break
        # anything else (nested lists, null) is ignored
    return out


def parse_span_reply(reply: str) -> list[str]:
    """The spans a model listed, from a reply that should hold a JSON list of strings.

    Tolerates code fences, prose before/after the JSON, ``{"spans": [...]}`` objects, lists of
    ``{"text": ...}`` objects and a list cut off by the token limit (complete strings before the cut
    are kept).  Only ``json`` decodes anything; raises :class:`SpanParseError` when no list is found.
    """
    if not isinstance(reply, str) or not reply.strip():
        raise SpanParseError("empty reply")
    texts = [m.group(1) for m in _FENCE_RE.finditer(reply)] + [reply]
    dec = json.JSONDecoder()
    fallback: list[str] | None = None  # a list of numbers only ("[1]" in prose) is a last resort
    for t in texts:
        t = t.strip()
        for i, ch in enumerate(t):
            if ch not in "[{":
                continue
            try:
                obj, _ = dec.raw_decode(t, i)
            except json.JSONDecodeError:
                continue
            spans = _items_to_spans(obj)
            if spans is None:
                continue
            has_text = isinstance(obj, dict) or any(isinstance(x, (str, dict)) for x in obj) or not obj
            if has_text:
                return [s.strip() for s in spans if s.strip()]
            if fallback is None:
                fallback = [s.strip() for s in spans if s.strip()]
    # a list cut off by the token limit: keep the complete strings after the first '['
    i = reply.find("[")
    if i >= 0:
        strings: list[str] = []
        pos = i + 1
        while True:
            while pos < len(reply) and reply[pos] in " \n\r\t,":
                pos += 1
            m = _JSON_STRING.match(reply, pos)
            if not m:
                break
            try:
                strings.append(json.loads(m.group(0)))
            except json.JSONDecodeError:
                break
            pos = m.end()
        if strings and reply[pos:].strip()[:1] in ("", '"'):
            return [s.strip() for s in strings if s.strip()]
    if fallback is not None:
        return fallback
    raise SpanParseError("no JSON list of spans in the reply")


def locate_spans(span_texts: Iterable[str], text: str, drops: Counter | None = None) -> list[Span]:
    """Spans (strings) found in the passage at their first occurrence, on word boundaries."""
    drops = drops if drops is not None else Counter()
    out: list[Span] = []
    for s in span_texts:
        s = " ".join(s.strip().strip("\"'“”").split())
        if not s:
            continue
        i = text.find(s)
        if i < 0:
            drops["not_in_passage"] += 1
            continue
        j = i + len(s)
        if (i > 0 and text[i - 1].isalnum() and s[0].isalnum()) or (j < len(text) and text[j].isalnum() and s[-1].isalnum()):
            drops["partial_word"] += 1
            continue
        out.append(Span(s, i, j, classify_span(s)))
    # overlapping model spans: keep the earlier/longer one
    out.sort(key=lambda sp: (sp.start, -(sp.end - sp.start)))
    kept: list[Span] = []
    for sp in out:
        if kept and sp.start < kept[-1].end:
            drops["overlap"] += 1
            continue
        kept.append(sp)
    return kept


def _make_model(spec: str, **opts: Any) -> Any:
    """A chat model from a spec through the model layer."""
    try:
        from masksearch.models import make_chat_model
    except ImportError:  # older model layer: local specs only
        from masksearch.models.local import LocalChatModel

        return LocalChatModel.from_spec(spec, **opts)
    return make_chat_model(spec, **opts)


# ------------------------------------------------------------------------------ ppl scorer
class PplScorer:
    """Scores spans by how hard they are for a causal LM to restore: the mean negative
    log-likelihood (log-perplexity) of the span's tokens after ``masked passage + cue``.

    ``model`` is a ``LocalChatModel`` (its ``.model``/``.tokenizer`` are used), a spec string for
    :func:`masksearch.models.make_chat_model`, or a ``(model, tokenizer)`` pair.
    """

    CUE = "\nThe [mask] above is:"

    def __init__(self, model: Any = None, tokenizer: Any = None, batch_size: int = 16, max_tokens: int = 384):
        if tokenizer is None:
            if model is None or isinstance(model, str):
                model = _make_model(model or "smollm2")
            if isinstance(model, tuple):
                model, tokenizer = model
            else:
                tokenizer = getattr(model, "tokenizer", None)
                model = getattr(model, "model", model)
        if tokenizer is None:
            raise RampError("the ppl strategy needs a local model with a tokenizer (e.g. --model smollm2 or hf:PATH)")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self._lock = threading.Lock()

    def score(self, contexts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """Mean NLL (nats/token) of each target after its context; batched, longest first."""
        import torch

        tok = self.tokenizer
        enc_ctx = tok([c + self.CUE for c in contexts], add_special_tokens=False)["input_ids"]
        enc_tgt = tok([" " + t for t in targets], add_special_tokens=False)["input_ids"]
        seqs = []
        for c, t in zip(enc_ctx, enc_tgt):
            t = t[: self.max_tokens // 2] or [tok.eos_token_id]
            c = c[-(self.max_tokens - len(t)):]
            seqs.append((c, t))
        order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
        out = [0.0] * len(seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        dev = next(self.model.parameters()).device
        with self._lock, torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                L = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
                T = max(len(seqs[i][1]) for i in idx)
                # left padding: every target ends at the last position, so only the last T+1
                # positions need logits (the lm head over the vocabulary is most of the cost)
                ids = torch.full((len(idx), L), pad, dtype=torch.long)
                att = torch.zeros((len(idx), L), dtype=torch.long)
                for r, i in enumerate(idx):
                    row = seqs[i][0] + seqs[i][1]
                    ids[r, L - len(row):] = torch.tensor(row)
                    att[r, L - len(row):] = 1
                pos_ids = (att.cumsum(-1) - 1).clamp(min=0)
                kw = dict(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos_ids.to(dev))
                try:
                    logits = self.model(**kw, logits_to_keep=T + 1).logits
                except TypeError:  # a model without logits_to_keep
                    logits = self.model(**kw).logits
                logits = logits[:, -(T + 1):-1].float()  # predictions of the last T tokens
                tgt = ids[:, -T:].to(dev)
                nll = torch.logsumexp(logits, -1) - logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                for r, i in enumerate(idx):
                    t = len(seqs[i][1])
                    out[i] = float(nll[r, T - t:].mean())
        return out


# ------------------------------------------------------------------------------ strategies
class SpanExtractor:
    """One interface for every strategy: ``process(cands) -> list[record | skip reason]``."""

    name = "base"

    def __init__(self, cfg: MaskConfig, seed: int, drops: Counter):
        self.cfg, self.seed, self.drops = cfg, seed, drops

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        raise NotImplementedError

    def _finish(self, cand: Candidate, spans: Sequence[Span]) -> dict[str, Any] | str:
        ok = usable_spans(spans, cand.text, cand.title, self.cfg, self.drops)
        rng = passage_rng(self.seed, cand.passage_id, self.name)
        k = draw_k(len(ok), self.cfg, rng)
        if not k:
            return "no_usable_spans"
        return self._record(cand, choose_spans(ok, k, rng, self.cfg))

    def _record(self, cand: Candidate, chosen: Sequence[Span]) -> dict[str, Any] | str:
        rec = build_record(cand, chosen, self.name, self.seed)
        if rec["masked_passage"].lstrip().startswith(MASK_TOKEN):
            return "starts_with_mask"
        return rec


class RulesExtractor(SpanExtractor):
    name = "rules"

    def process_sync(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return [self._finish(c, rule_spans(c.text)) for c in cands]

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return self.process_sync(cands)


class LlmExtractor(SpanExtractor):
    name = "llm"

    def __init__(self, cfg: MaskConfig, seed: int, drops: Counter, model: Any, concurrency: int = 8,
                 max_new_tokens: int = 96):
        super().__init__(cfg, seed, drops)
        if model is None or isinstance(model, str):
            model = _make_model(model or "smollm2", temperature=0.0, max_new_tokens=max_new_tokens)
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.sem = asyncio.Semaphore(max(1, concurrency))
        self.replies_unparseable = 0

    def messages(self, cand: Candidate) -> list[Any]:
        from langchain_core.messages import HumanMessage, SystemMessage

        return [SystemMessage(content=LLM_SYSTEM_PROMPT), HumanMessage(content=LLM_USER_PROMPT.format(passage=cand.text))]

    async def _one(self, cand: Candidate) -> dict[str, Any] | str:
        async with self.sem:
            try:
                reply = await self.model.ainvoke(self.messages(cand))
            except MaskSearchError:
                raise
            except Exception:  # noqa: BLE001 - a failed call skips this passage, counted
                return "model_error"
        content = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
        try:
            texts = parse_span_reply(content)
        except SpanParseError:
            self.replies_unparseable += 1
            return "unparseable_reply"
        return self._finish(cand, locate_spans(texts, cand.text, self.drops))

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return list(await asyncio.gather(*(self._one(c) for c in cands)))


class PplExtractor(SpanExtractor):
    name = "ppl"

    def __init__(self, cfg: MaskConfig, seed: int, drops: Counter, model: Any, batch_size: int = 16,
                 max_candidates: int = 12):
        super().__init__(cfg, seed, drops)
        self.scorer = model if isinstance(model, PplScorer) else PplScorer(model, batch_size=batch_size)
        self.max_candidates = max_candidates

    def process_sync(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        per: list[list[Span]] = []
        ctxs, tgts = [], []
        for c in cands:
            ok = usable_spans(rule_spans(c.text), c.text, c.title, self.cfg, self.drops)
            if len(ok) > self.max_candidates:  # the most salient candidates by rule weight
                ok = sorted(sorted(ok, key=lambda sp: -span_weight(sp, self.cfg.kind_weights))[: self.max_candidates],
                            key=lambda sp: sp.start)
            per.append(ok)
            for sp in ok:
                ctxs.append(apply_masks(c.text, [sp]))
                tgts.append(sp.text)
        scores = self.scorer.score(ctxs, tgts) if ctxs else []
        out: list[dict[str, Any] | str] = []
        j = 0
        for c, ok in zip(cands, per):
            for sp in ok:
                sp.score = scores[j]
                j += 1
            rng = passage_rng(self.seed, c.passage_id, self.name)
            k = draw_k(len(ok), self.cfg, rng)
            if not k:
                out.append("no_usable_spans")
                continue
            hardest = sorted(ok, key=lambda sp: (-(sp.score or 0.0), sp.start))[:k]
            out.append(self._record(c, sorted(hardest, key=lambda sp: sp.start)))
        return out

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return await asyncio.to_thread(self.process_sync, cands)


def make_extractor(strategy: str, cfg: MaskConfig, seed: int, drops: Counter, model: Any = None,
                   concurrency: int = 8) -> SpanExtractor:
    if strategy == "rules":
        return RulesExtractor(cfg, seed, drops)
    if strategy == "llm":
        return LlmExtractor(cfg, seed, drops, model, concurrency=concurrency)
    if strategy == "ppl":
        return PplExtractor(cfg, seed, drops, model, batch_size=max(8, concurrency))
    raise UnknownSpecError(f"unknown RAMP strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")


# ------------------------------------------------------------------------------ driver
def _masked_key(masked: str) -> str:
    return hashlib.sha1(masked.encode()).hexdigest()


class RampWorker:
    """The span-extraction work of one worker (local, or a Ray actor built from plain options).

    ``run_batch(cands)`` -> one ``(record | skip reason, stats)`` per candidate, in order; the first
    entry's ``stats`` carry the batch's span drops and unparseable replies (counted by the driver),
    the others ``None``."""

    def __init__(self, strategy: str, seed: int = 0, max_masks: int = 4, mask_dist: Sequence[float] | None = None,
                 model: Any = None, concurrency: int = 8):
        self.drops: Counter = Counter()
        self.extractor = make_extractor(strategy, MaskConfig(max_masks=max_masks, mask_dist=mask_dist), seed,
                                        self.drops, model, concurrency)

    async def run_batch(self, cands: Sequence[Candidate]) -> list[tuple[dict[str, Any] | str, dict | None]]:
        before, unp = Counter(self.drops), getattr(self.extractor, "replies_unparseable", 0)
        results = await self.extractor.process(cands)
        stats = {"drops": dict(self.drops - before),
                 "unparseable": getattr(self.extractor, "replies_unparseable", 0) - unp}
        return [(r, stats if i == 0 else None) for i, r in enumerate(results)]


def generate_ramp(corpus: Any, out: str | os.PathLike, n: int, strategy: str = "rules", model: Any = None,
                  max_masks: int = 4, seed: int = 0, shard: str | None = None, concurrency: int = 8,
                  progress: bool = True, *, mask_dist: Sequence[float] | None = None,
                  passage_filter: PassageFilter | None = None, oversample: float | None = None,
                  resume: bool = True, executor: str | None = None, ray_address: str | None = None,
                  workers: int | None = None) -> dict[str, Any]:
    """Generate ``n`` RAMP examples (this shard's share of ``n`` with ``shard="i/k"``) into ``out``.

    ``corpus``: a corpus path (any format of ``masksearch.retrieval.read_corpus``) or an iterable
    of passages/dicts.  ``model``: for ``llm`` any chat model or spec (default ``smollm2``); for
    ``ppl`` a local model, spec, ``(model, tokenizer)`` or :class:`PplScorer`.  ``concurrency``
    bounds the model calls in flight (they are batched by a ``LocalChatModel``).  Rerunning with the
    same arguments resumes: finished ids are skipped, nothing is lost or duplicated.

    ``executor="ray"`` (``ray_address``, ``workers``) spreads the span extraction over Ray workers,
    each building its extractor (and model, from a spec string) once; the driver selects the
    passages, commits the results in candidate order and is the only writer, so the file is the one
    a local run writes.

    Returns a summary: ``kept`` (in the file for this job), ``written`` (this run), ``resumed``,
    ``skipped`` (by reason), ``filtered`` (passages the selection dropped, by reason),
    ``span_drops``, ``mask_counts`` and timing (``pps`` = passages processed per wall-clock second
    of the generation phase, ``cpu_pps`` per CPU second of this process, ``end_to_end_pps`` with the
    corpus scan).
    """
    from masksearch.utils.jobs import LocalExecutor, WorkerSpec, make_executor, run_jobs

    if strategy not in STRATEGIES:
        raise UnknownSpecError(f"unknown RAMP strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if n < 0:
        raise RampError(f"n must be >= 0, got {n}")
    try:
        i_shard, n_shards = parse_shard(shard) if isinstance(shard, (str, type(None))) else shard
    except ValueError as e:
        raise RampError(str(e)) from None
    if executor == "ray" and not (model is None or isinstance(model, str)):
        raise RampError("--executor ray builds the model in each worker: give --model as a spec string")
    MaskConfig(max_masks=max_masks, mask_dist=mask_dist)  # a bad option fails here, before any work
    target = n // n_shards + (1 if i_shard < n % n_shards else 0)
    oversample = oversample if oversample is not None else (2.0 if strategy == "rules" else 4.0)
    t0 = time.perf_counter()
    filtered: Counter = Counter()
    stats = ReadStats()
    pool = int(math.ceil(target * oversample)) + (64 if strategy == "rules" else 0)
    # the job's identity beside the output: a rerun resumes only the same job, never an input
    is_path = isinstance(corpus, (str, os.PathLike))
    if is_path and not str(corpus).startswith("hf:") and not os.path.exists(corpus):
        raise RampError(f"corpus not found: {corpus} (give a JSONL/TSV file, a folder, or hf:NAME)")
    job = {"command": "ramp", "strategy": strategy, "seed": seed, "shard": f"{i_shard}/{n_shards}",
           "input": input_fingerprint(corpus) if is_path else "iterable"}
    writer = ResumableJsonlWriter(out, resume=resume, job=job, inputs=[corpus] if is_path else [])
    try:
        cands = select_passages(corpus, pool, seed=seed,
                                shard=(i_shard, n_shards), flt=passage_filter, filtered=filtered, stats=stats)
    except BaseException:
        writer.close()
        raise
    t_select = time.perf_counter() - t0

    seen_masked: set[str] = set()
    existing_counts: dict[str, int] = {}
    if writer.done and os.path.exists(writer.path):
        for rec in iter_jsonl(writer.path):
            if isinstance(rec.get("masked_passage"), str):
                seen_masked.add(_masked_key(rec["masked_passage"]))
            if "id" in rec:
                existing_counts[str(rec["id"])] = int(rec.get("mask_count") or 0)
    drops: Counter = Counter()
    skipped: Counter = Counter()
    mask_counts: Counter = Counter()
    c: Counter = Counter()  # kept, resumed, written, processed, unparseable
    summary: dict[str, Any] = {}
    chunk_size = 256 if strategy == "rules" else max(1, concurrency)

    def on_skip(cand: Candidate) -> int:  # already in the file: counts towards the target
        c["kept"] += 1
        c["resumed"] += 1
        mask_counts[existing_counts.get(example_id(cand.passage_id, strategy, seed), 0)] += 1
        return 1

    def on_result(cand: Candidate, out: tuple[dict[str, Any] | str, dict | None]) -> int:
        res, st = out
        c["processed"] += 1
        if st:
            drops.update(st["drops"])
            c["unparseable"] += st["unparseable"]
        if isinstance(res, str):
            skipped[res] += 1
            return 0
        mk = _masked_key(res["masked_passage"])
        if mk in seen_masked:
            skipped["duplicate"] += 1
            return 0
        seen_masked.add(mk)
        if writer.write(res):
            c["written"] += 1
        c["kept"] += 1
        mask_counts[res["mask_count"]] += 1
        return 1

    worker = dict(strategy=strategy, seed=seed, max_masks=max_masks, mask_dist=list(mask_dist) if mask_dist else None,
                  model=model, concurrency=concurrency)

    async def drive() -> None:
        if executor in (None, "local"):
            ex = LocalExecutor(RampWorker(**worker), concurrency=1)
        else:
            ex = make_executor(executor, WorkerSpec("masksearch.data.ramp:RampWorker", worker), concurrency=1,
                               address=ray_address, workers=workers)
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            await run_jobs(cands, ex, key=lambda cd: example_id(cd.passage_id, strategy, seed), done=writer.done,
                           on_result=on_result, on_skip=on_skip, ordered=True, fail_fast=True,
                           batch_size=lambda pending: min(chunk_size, target - c["kept"] - pending),
                           stop=lambda: c["kept"] >= target,
                           progress={"total": target, "desc": f"ramp {strategy}", "unit": "ex"} if progress else None,
                           postfix=lambda: {"skipped": sum(skipped.values())})
        finally:
            ex.close()
        elapsed, cpu = time.perf_counter() - t1, time.process_time() - c1
        processed = c["processed"]
        summary.update(kept=c["kept"], written=c["written"], resumed=c["resumed"], processed=processed,
                       gen_s=round(elapsed, 3), pps=round(processed / elapsed, 2) if elapsed > 0 else None,
                       gen_cpu_s=round(cpu, 3), cpu_pps=round(processed / cpu, 2) if cpu > 0 else None,
                       unparseable_replies=c["unparseable"])

    try:
        run_sync(drive())
    finally:
        writer.close()
    total_s = time.perf_counter() - t0
    summary.update(
        out=str(out), strategy=strategy, seed=seed, shard=f"{i_shard}/{n_shards}", target=target,
        exhausted=summary.get("kept", 0) < target,
        skipped=dict(skipped.most_common()), filtered=dict(filtered.most_common()),
        span_drops=dict(drops.most_common()), mask_counts={k: mask_counts[k] for k in sorted(mask_counts)},
        corpus=stats.summary(), candidates=len(cands), select_s=round(t_select, 3), total_s=round(total_s, 3),
        end_to_end_pps=round(summary.get("processed", 0) / total_s, 2) if total_s > 0 else None,
        executor=executor or "local",
    )
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The end-of-job summary as a few human lines."""
    lines = [
        f"RAMP {s['strategy']} (seed {s['seed']}, shard {s['shard']}): kept {s['kept']}/{s['target']} "
        f"({s['written']} written now, {s['resumed']} already there) -> {s['out']}",
        "mask counts: " + (", ".join(f"{k}: {v}" for k, v in s["mask_counts"].items()) or "none"),
        "skipped: " + (", ".join(f"{k}: {v}" for k, v in s["skipped"].items()) or "none"),
        "passages filtered out: " + (", ".join(f"{k}: {v}" for k, v in s["filtered"].items()) or "none"),
        f"{s['processed']} passages processed in {s['gen_s']} s ({s['pps']} /s); selection {s['select_s']} s; "
        f"corpus: {s['corpus']}",
    ]
    if s.get("exhausted"):
        lines.append("warning: ran out of candidate passages before reaching n "
                     "(raise --n less, loosen the filters, or use a bigger corpus)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ readers
def _records(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, (str, os.PathLike)):
        return list(iter_jsonl(data, required=("id", "question", "answers", "mask_count")))
    if hasattr(data, "to_list"):  # datasets.Dataset
        return data.to_list()
    return [dict(r) for r in data]


def load_ramp(path: str | os.PathLike, stats: ReadStats | None = None) -> Any:
    """A RAMP JSONL file as a ``datasets.Dataset`` (bad lines counted in ``stats`` and skipped)."""
    import datasets

    if not os.path.exists(path):
        raise RampError(f"RAMP file not found: {path} (make one with: masksearch ramp --corpus ... --out {path})")
    rows = list(iter_jsonl(path, stats=stats, required=("id", "question", "answers", "mask_count")))
    if not rows:
        return datasets.Dataset.from_dict({k: [] for k in RECORD_FIELDS})
    for r in rows:
        r.setdefault("spans", [])
        r["spans"] = [{"text": str(s.get("text", "")), "start": int(s.get("start", -1)), "end": int(s.get("end", -1)),
                       "kind": str(s.get("kind", "")), "nll": float(s["nll"]) if s.get("nll") is not None else None}
                      for s in r["spans"] if isinstance(s, dict)]
    return datasets.Dataset.from_list(rows)


def curriculum(data: Any, mode: str = "order", seed: int | None = None, max_masks: int | None = None) -> Any:
    """Order or bucket RAMP examples by mask count (easy -> hard).

    ``mode="order"``: all examples, mask count ascending (shuffled within a count when ``seed`` is
    given, else file order); ``mode="buckets"``: ``{mask_count: examples}``.  ``data`` is a path, a
    list of records or a ``datasets.Dataset``; a Dataset comes back as Dataset(s), else lists.
    """
    if mode not in ("order", "buckets"):
        raise UnknownSpecError(f"unknown curriculum mode {mode!r}; use 'order' or 'buckets'")
    is_ds = hasattr(data, "select") and hasattr(data, "column_names")
    if is_ds:
        counts = [int(c) for c in data["mask_count"]]
        rows = None
    else:
        rows = _records(data)
        counts = [int(r.get("mask_count") or 1) for r in rows]
    buckets: dict[int, list[int]] = {}
    for i, c in enumerate(counts):
        if max_masks is None or c <= max_masks:
            buckets.setdefault(c, []).append(i)
    rng = random.Random(seed) if seed is not None else None
    for idx in buckets.values():
        if rng is not None:
            rng.shuffle(idx)
    keys = sorted(buckets)
    if mode == "order":
        order = [i for k in keys for i in buckets[k]]
        return data.select(order) if is_ds else [rows[i] for i in order]
    return {k: (data.select(buckets[k]) if is_ds else [rows[i] for i in buckets[k]]) for k in keys}


def _search_many(retriever: Any, queries: list[str], k: int) -> list[list[Any]]:
    if hasattr(retriever, "search_many"):
        return retriever.search_many(queries, k)
    return [retriever.invoke(q)[:k] for q in queries]


def _doc_id(doc: Any) -> str:
    meta = getattr(doc, "metadata", None)
    if isinstance(meta, dict) and "id" in meta:
        return str(meta["id"])
    return str(getattr(doc, "id", ""))


def _same_passage(doc_id: str, passage_id: str) -> bool:
    return doc_id == passage_id


def solvability_report(ramp: Any, retriever: Any, k: int = 5, limit: int | None = None,
                       batch_size: int = 256, query_words: int | None = None) -> dict[str, Any]:
    """Is the source passage in the top-``k`` of a search for the masked passage?

    ``ramp``: a RAMP path, records or Dataset; ``retriever``: a spec (``"bm25:DIR"``) or any
    retriever (``search_many`` used when present).  The query is the masked passage with the
    ``[mask]`` tokens removed (only its first ``query_words`` words when given: a stricter test,
    since the whole masked passage nearly always finds itself).  Returns ``{n, solvable, rate, by_mask_count: {k: {n, solvable, rate}}}``.
    """
    if isinstance(retriever, str):
        from masksearch.retrieval import make_retriever

        retriever = make_retriever(retriever, k=k)
    rows = _records(ramp)[:limit] if limit else _records(ramp)
    per: dict[int, list[int]] = {}
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        queries = [" ".join(str(r.get("masked_passage") or r["question"]).replace(MASK_TOKEN, " ").split()[:query_words])
                   for r in chunk]
        results = _search_many(retriever, queries, k)
        for r, docs in zip(chunk, results):
            hit = any(_same_passage(_doc_id(d), str(r.get("passage_id"))) for d in docs[:k])
            mc = int(r.get("mask_count") or 1)
            per.setdefault(mc, [0, 0])
            per[mc][0] += 1
            per[mc][1] += int(hit)
    n = sum(v[0] for v in per.values())
    s = sum(v[1] for v in per.values())
    return {
        "k": k, "n": n, "solvable": s, "rate": round(s / n, 4) if n else None,
        "by_mask_count": {m: {"n": v[0], "solvable": v[1], "rate": round(v[1] / v[0], 4)} for m, v in sorted(per.items())},
    }


__all__ = [
    "STRATEGIES", "RECORD_FIELDS", "PassageFilter", "passage_filter_reason", "select_passages", "Candidate",
    "Span", "rule_spans", "classify_span", "MaskConfig", "usable_spans", "span_weight", "draw_k", "choose_spans",
    "apply_masks", "make_question", "mask_passage", "example_id", "parse_span_reply", "SpanParseError",
    "locate_spans", "PplScorer", "SpanExtractor", "make_extractor", "generate_ramp", "format_summary",
    "load_ramp", "curriculum", "solvability_report", "RampError", "LLM_USER_PROMPT", "LLM_SYSTEM_PROMPT",
]
