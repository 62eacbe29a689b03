"""A persistent search cache that makes runs replayable: any retriever, wrapped.

``CachedRetriever`` is a LangChain ``BaseRetriever`` (with our batched ``search_many``) in front of
another retriever.  Every answer is stored in one SQLite file under the key

    sha256(retriever fingerprint, normalised query, k)

and the value is the documents (text + metadata) plus what the search cost, so a later hit knows
how much time it saved.  The fingerprint names what answered (:func:`fingerprint`): a BM25 index by
the hash of its manifest, a dense index by model + collection + manifest hash, web search by
engine + region, a retrieval server by URL, a hybrid by its parts.  Queries are normalised by
Unicode NFKC, case folding and whitespace collapsing (:func:`normalise_query`), nothing more.

Modes (``--search-cache PATH --search-cache-mode MODE``, or the spec ``cache:PATH[@MODE]|SPEC``):

- ``read-write`` (``rw``): hits come from the file, misses go to the retriever and are stored;
- ``read-only`` (``ro``, ``replay``): hits only; a miss raises :class:`SearchCacheMiss`.  The
  retriever is not even opened when the file has seen its spec (the spec -> fingerprint map is
  stored), so a run replays with the index deleted or the web unreachable;
- ``off``: no cache, the retriever as it is.

The file is shared safely by several processes, threads and Ray workers: WAL journal (readers never
wait for a writer), a 60 s busy timeout, one connection per process (reopened after a fork) behind a
lock, and ``INSERT OR IGNORE`` (the first writer of a key wins; identical retrievers write
identical values).  Counters per process: :func:`cache_stats` / :func:`cache_report`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import PrivateAttr

from masksearch.errors import MaskSearchError
from masksearch.retrieval.base import SearchRetriever

MODES = {"read-write": "read-write", "rw": "read-write", "read-only": "read-only", "ro": "read-only",
         "replay": "read-only", "off": "off"}
MODE_CHOICES = ("read-write", "read-only", "off")
SPEC_PREFIX = "cache:"
BUSY_TIMEOUT_MS = 60_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS search (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, query TEXT NOT NULL, k INTEGER NOT NULL,
    docs TEXT NOT NULL, cost_s REAL NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS specs (
    spec TEXT NOT NULL, fingerprint TEXT NOT NULL, last_used REAL NOT NULL,
    PRIMARY KEY (spec, fingerprint));
"""


class SearchCacheError(MaskSearchError):
    """The cache file or option is unusable (bad mode, unreadable file, unknown spec in replay)."""


class SearchCacheMiss(SearchCacheError):
    """Read-only (replay) mode met a query the cache has never answered."""


def normalise_query(query: str) -> str:
    """The cache's own query normalisation: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def parse_mode(mode: str | None) -> str:
    m = MODES.get((mode or "read-write").strip().lower())
    if m is None:
        raise SearchCacheError(f"unknown search cache mode {mode!r}: use one of {', '.join(MODE_CHOICES)}")
    return m


def parse_option(value: str) -> tuple[str, str]:
    """``"PATH"`` or ``"PATH@MODE"`` -> ``(path, mode)``."""
    head, sep, tail = value.rpartition("@")
    if sep and tail.strip().lower() in MODES:
        return os.path.expanduser(head), parse_mode(tail)
    return os.path.expanduser(value), "read-write"


def cache_spec(spec: str, path: str | None, mode: str | None = None) -> str:
    """The retriever spec ``spec`` behind the cache ``path`` (what ``--search-cache`` does); ``spec``
    unchanged when there is no path or the mode is ``off``."""
    if not path or parse_mode(mode) == "off" or not isinstance(spec, str):
        return spec
    return f"{SPEC_PREFIX}{path}@{parse_mode(mode)}|{spec}"


# ---------------------------------------------------------------------------- fingerprints

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode("utf-8")).hexdigest()[:16]


def fingerprint(retriever: Any) -> str:
    """What answered, as a string: equal fingerprints must give equal answers."""
    name = type(retriever).__name__
    own = getattr(retriever, "fingerprint", None)
    if isinstance(own, str):
        return own
    if callable(own):
        return str(own())
    if name == "CachedRetriever":
        return retriever.fingerprint_of_inner
    if name == "BM25Retriever":
        return f"bm25:{_digest(retriever.manifest)}:boost={retriever.title_boost}"
    if name == "ChromaRetriever":
        m = retriever.manifest
        return f"chroma:{m.get('model')}:{m.get('collection', 'passages')}:{_digest(m)}"
    if name == "DDGRetriever":
        return f"ddg:{retriever._base()}:{retriever.region}"
    if name == "RemoteRetriever":
        return f"remote:{retriever.url.rstrip('/')}"
    if name == "HybridRetriever":
        parts = [fingerprint(r) for r in retriever.retrievers]
        return (f"hybrid:{_digest([parts, retriever.weights, retriever.rrf_k, retriever.fetch_k])}:"
                + "+".join(p.split(":")[0] for p in parts))
    # any other retriever: its class and its (public) fields
    fields = retriever.model_dump() if hasattr(retriever, "model_dump") else {}
    return f"{type(retriever).__module__}.{type(retriever).__qualname__}:{_digest(fields)}"


# ---------------------------------------------------------------------------- the SQLite file

_CONNS: dict[str, tuple[int, sqlite3.Connection, threading.Lock]] = {}
_CONNS_LOCK = threading.Lock()


def _connection(path: str, create: bool) -> tuple[sqlite3.Connection, threading.Lock]:
    """This process's connection to ``path`` (reopened in a forked child)."""
    key = os.path.abspath(path)
    with _CONNS_LOCK:
        got = _CONNS.get(key)
        if got and got[0] == os.getpid():
            return got[1], got[2]
        if not create and not os.path.exists(key):
            raise SearchCacheError(f"no search cache at {path}: record one first with "
                                   f"--search-cache {path} --search-cache-mode read-write")
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(key, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                                   isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise SearchCacheError(f"{path} is not a usable search cache ({e}); "
                                   "give another --search-cache path") from e
        _CONNS[key] = (os.getpid(), conn, threading.Lock())
        return conn, _CONNS[key][2]


def _key(fp: str, nq: str, k: int) -> str:
    return hashlib.sha256(f"{fp}\x1f{nq}\x1f{k}".encode("utf-8")).hexdigest()


def _dump_docs(docs: Sequence[Document]) -> str:
    return json.dumps([[d.page_content, d.metadata] for d in docs], ensure_ascii=False, default=str)


def _load_docs(blob: str) -> list[Document]:
    return [Document.model_construct(page_content=c, metadata=m, type="Document", id=None)
            for c, m in json.loads(blob)]


@dataclass
class CacheStats:
    """Lookups of this process against one cache file."""

    hits: int = 0
    misses: int = 0
    miss_s: float = 0.0   # time the retriever spent on the misses
    saved_s: float = 0.0  # what the hits cost when they were first searched
    lookup_s: float = 0.0  # time spent reading the cache

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(lookups=self.lookups, hit_rate=round(self.hit_rate, 4),
                 net_saved_s=round(self.saved_s - self.lookup_s, 3))
        return d


_STATS: dict[str, CacheStats] = {}
_STATS_LOCK = threading.Lock()


def _stats_for(path: str) -> CacheStats:
    with _STATS_LOCK:
        return _STATS.setdefault(os.path.abspath(path), CacheStats())


def cache_stats() -> dict[str, dict[str, Any]]:
    """``{cache path: counters}`` for every cache this process has used."""
    with _STATS_LOCK:
        return {p: s.to_dict() for p, s in _STATS.items()}


def cache_report() -> list[str]:
    """One line per cache used: hit rate and time saved (for the CLI reports)."""
    lines = []
    for p, s in cache_stats().items():
        lines.append(f"search cache {p}: {s['hits']}/{s['lookups']} hits ({100 * s['hit_rate']:.1f} %), "
                     f"~{s['net_saved_s']:.1f} s of search saved; {s['misses']} misses, "
                     f"{s['miss_s']:.1f} s spent searching them")
    return lines


def reset_stats() -> None:
    with _STATS_LOCK:
        _STATS.clear()


# ---------------------------------------------------------------------------- the wrapper

class CachedRetriever(SearchRetriever):
    """``inner`` behind the SQLite cache at ``path`` (see the module doc for ``mode``).

    Give ``inner`` (a retriever) or ``spec`` (built on first need; in read-only mode only when the
    file has not seen the spec).
    """

    path: str
    mode: str = "read-write"
    inner: Any = None
    spec: str = ""

    _fp: str | None = PrivateAttr(default=None)
    _build_lock: Any = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, __context: Any) -> None:
        self.mode = parse_mode(self.mode)
        if self.mode == "off":
            raise SearchCacheError("CachedRetriever(mode='off') makes no sense: use the retriever itself")
        if self.inner is None and not self.spec:
            raise SearchCacheError("CachedRetriever needs inner= (a retriever) or spec= (a spec string)")
        conn, lock = _connection(self.path, create=self.mode == "read-write")
        if self.mode == "read-only" and self.inner is None:
            with lock:
                row = conn.execute("SELECT fingerprint FROM specs WHERE spec = ? ORDER BY last_used DESC "
                                   "LIMIT 1", (self.spec,)).fetchone()
            if row is not None:
                self._fp = row[0]
        if self._fp is None:
            self._fp = fingerprint(self._inner())
            if self.spec and self.mode == "read-write":
                with lock:
                    conn.execute("INSERT OR REPLACE INTO specs VALUES (?, ?, ?)",
                                 (self.spec, self._fp, time.time()))

    @property
    def fingerprint_of_inner(self) -> str:
        return self._fp or ""

    def _inner(self) -> BaseRetriever:
        if self.inner is None:
            with self._build_lock:
                if self.inner is None:
                    from masksearch.retrieval.factory import make_retriever

                    try:
                        self.inner = make_retriever(self.spec, k=self.k)
                    except Exception as e:
                        if self.mode == "read-only":
                            raise SearchCacheError(
                                f"search cache {self.path} has no record of the retriever "
                                f"{self.spec!r}, and it cannot be opened to replay ({e})") from e
                        raise
        return self.inner

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        k = self.k if k is None else k
        queries = list(queries)
        if not queries:
            return []
        stats = _stats_for(self.path)
        conn, lock = _connection(self.path, create=False)
        t0 = time.perf_counter()
        norm = [normalise_query(q) for q in queries]
        keys = [_key(self._fp, nq, k) for nq in norm]
        found: dict[str, tuple[str, float]] = {}
        uniq = list(dict.fromkeys(keys))
        with lock:
            for i in range(0, len(uniq), 500):
                part = uniq[i:i + 500]
                rows = conn.execute(f"SELECT key, docs, cost_s FROM search WHERE key IN "
                                    f"({','.join('?' * len(part))})", part).fetchall()
                found.update((key, (docs, cost)) for key, docs, cost in rows)
        lookup_s = time.perf_counter() - t0
        missing = [key for key in uniq if key not in found]
        fresh: dict[str, list[Document]] = {}
        if missing:
            if self.mode == "read-only":
                with _STATS_LOCK:
                    stats.misses += len(missing)
                first = next(q for q, key in zip(queries, keys) if key not in found)
                raise SearchCacheMiss(
                    f"read-only search cache has no answer for {first!r} (k={k}); {len(missing)} of "
                    f"{len(uniq)} queries in this batch are missing: record them with --search-cache-mode "
                    f"read-write (cache {self.path}, retriever {self._fp})")
            by_key = {key: q for q, key in zip(queries, keys)}
            todo = [by_key[key] for key in missing]
            inner = self._inner()
            t1 = time.perf_counter()
            if hasattr(inner, "search_many"):
                results = inner.search_many(todo, k)
            else:
                results = [list(inner.invoke(q))[:k] for q in todo]
            miss_s = time.perf_counter() - t1
            cost = miss_s / len(todo)
            now = time.time()
            rows = []
            for key, q, docs in zip(missing, todo, results):
                docs = list(docs)
                fresh[key] = docs
                rows.append((key, self._fp, normalise_query(q), k, _dump_docs(docs), cost, now))
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR IGNORE INTO search VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            with _STATS_LOCK:
                stats.misses += len(missing)
                stats.miss_s += miss_s
        t2 = time.perf_counter()
        out: list[list[Document]] = []
        hits, saved = 0, 0.0
        for key in keys:
            if key in fresh:
                out.append(list(fresh[key]))
                continue
            docs, cost = found[key]
            out.append(_load_docs(docs))
            hits += 1
            saved += cost
        # duplicates of a fresh miss inside one batch were served without a second search: hits too
        hits += sum(1 for key in keys if key in fresh) - len(fresh)
        with _STATS_LOCK:
            stats.hits += hits
            stats.saved_s += saved
            stats.lookup_s += lookup_s + (time.perf_counter() - t2)
        return out

    def entries(self) -> int:
        """Rows stored for this retriever's fingerprint."""
        conn, lock = _connection(self.path, create=False)
        with lock:
            return conn.execute("SELECT COUNT(*) FROM search WHERE fingerprint = ?", (self._fp,)).fetchone()[0]


def wrap(retriever: Any, path: str | None, mode: str | None = None, spec: str = "", k: int | None = None):
    """``retriever`` behind the cache at ``path`` (``retriever`` may be None when ``spec`` is given;
    mode ``off`` or no path returns it unchanged, building it from ``spec`` if needed)."""
    mode = parse_mode(mode)
    if not path or mode == "off":
        if retriever is None:
            from masksearch.retrieval.factory import make_retriever

            return make_retriever(spec, k=k or 5)
        return retriever
    kw = {"k": k if k is not None else getattr(retriever, "k", 5)}
    return CachedRetriever(path=str(path), mode=mode, inner=retriever, spec=spec, **kw)


__all__ = ["CachedRetriever", "SearchCacheError", "SearchCacheMiss", "cache_spec", "cache_stats",
           "cache_report", "fingerprint", "normalise_query", "parse_mode", "parse_option", "wrap",
           "MODE_CHOICES"]


# ---------------------------------------------------------------------------- CLI faces

def cli_spec(args: Any) -> str:
    """``args.retriever`` behind the cache the CLI flags name (unchanged without ``--search-cache``)."""
    return cache_spec(args.retriever, getattr(args, "search_cache", None),
                      getattr(args, "search_cache_mode", None))


def print_report(file: Any = None) -> None:
    """Print :func:`cache_report` (hit rate, time saved) to ``file`` (stderr by default)."""
    import sys

    for line in cache_report():
        print(line, file=file or sys.stderr)
