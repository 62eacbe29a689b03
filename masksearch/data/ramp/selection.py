"""Selection: which corpus passages become RAMP candidates.

Stream any corpus the retrieval layer reads, drop list-like, table-like, too short or too long
passages (:func:`passage_filter_reason`), order the rest by a seeded hash of the passage id (a
deterministic shuffle that needs no second pass and no whole-corpus memory: bottom-k sampling),
optionally keep only shard ``i`` of ``n``.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from masksearch.data.ramp.common import RampError
from masksearch.utils.jsonl import ReadStats, in_shard, iter_jsonl, parse_shard


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

