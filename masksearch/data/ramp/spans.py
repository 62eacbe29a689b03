"""Spans: what a knowledge span is, and finding spans in a passage.

:func:`rule_spans` finds them with no model (dates, years, quantities, numbers, quoted titles,
capitalised (multi-word) names, by regular expressions, thousands of passages a second);
:func:`locate_spans` places the strings a model listed; :func:`classify_span` gives a span found by
a model its kind (for the masking weights).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable


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
