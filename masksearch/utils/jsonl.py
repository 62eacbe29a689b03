"""Streaming JSONL: tolerant readers, resumable writers and sharding.

Every long job (indexing, RAMP, trajectory building, evaluation) writes one JSON object per line
and flushes after each record, so a killed job loses at most the record in flight.  On restart
:class:`ResumableJsonlWriter` reads back the ids already written (ignoring a torn last line) and
the job skips them: nothing is redone, dropped or duplicated.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


@dataclass
class ReadStats:
    """Counts of what a tolerant reader kept and skipped (by reason)."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.read} records read, none skipped"
        why = ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common())
        return f"{self.read} records read, {self.n_skipped} skipped ({why})"


def decode_line(raw: bytes, stats: ReadStats) -> dict[str, Any] | None:
    """One JSONL line as a dict, or None (a blank line, or a bad one counted in ``stats``)."""
    if not raw.strip():
        return None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.skipped["undecodable"] += 1
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        stats.skipped["invalid_json"] += 1
        return None
    if not isinstance(rec, dict):
        stats.skipped["not_an_object"] += 1
        return None
    return rec


def iter_jsonl(path: str | os.PathLike, stats: ReadStats | None = None,
               required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a file, skipping (and counting) bad lines.

    Undecodable bytes, invalid JSON, non-objects and objects missing a ``required`` field are
    skipped with a reason in ``stats``; blank lines are ignored silently.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    stats = stats if stats is not None else ReadStats()
    required = tuple(required)
    with open(path, "rb") as f:
        for raw in f:
            rec = decode_line(raw, stats)
            if rec is None:
                continue
            if any(k not in rec for k in required):
                stats.skipped["missing_field"] += 1
                continue
            stats.read += 1
            yield rec


def read_jsonl(path: str | os.PathLike, **kw: Any) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, **kw))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


class ResumableJsonlWriter:
    """Append-only JSONL output that knows which ids it already holds.

    >>> w = ResumableJsonlWriter("out.jsonl")            # doctest: +SKIP
    >>> todo = [r for r in inputs if r["id"] not in w.done]
    >>> w.write({"id": ..., ...})                         # flushed at once

    A torn last line (the job was killed mid-write) is truncated away on open.  Thread-safe.
    """

    def __init__(self, path: str | os.PathLike, id_key: str = "id", resume: bool = True):
        self.path = str(path)
        self.id_key = id_key
        self.done: set[str] = set()
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if resume and os.path.exists(self.path):
            self._repair_and_load()
        elif not resume and os.path.exists(self.path):
            os.remove(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def _repair_and_load(self) -> None:
        good_bytes = 0
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn tail
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                good_bytes += len(raw)
                if isinstance(rec, dict) and self.id_key in rec:
                    self.done.add(str(rec[self.id_key]))
        if good_bytes != os.path.getsize(self.path):
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)

    def __contains__(self, rec_id: object) -> bool:
        return str(rec_id) in self.done

    def write(self, rec: dict[str, Any]) -> bool:
        """Write one record unless its id is already there; returns whether it was written."""
        rid = str(rec[self.id_key])
        with self._lock:
            if rid in self.done:
                return False
            self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self._f.flush()
            self.done.add(rid)
            return True

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()

    def __enter__(self) -> "ResumableJsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0-based i.  ``None`` -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"bad shard {spec!r}: expected 'i/n' with 0 <= i < n, e.g. '0/4'") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"bad shard {spec!r}: expected 'i/n' with 0 <= i < n, e.g. '0/4'")
    return i, n


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    i, n = shard
    return index % n == i
