"""BM25 on tantivy (Rust, Lucene-like): the default lexical retriever.

An index folder holds::

    manifest.json        kind, engine, analyzer settings, passage count, corpus, complete flag
    tantivy/             the inverted index (title + text, BM25); a fast field ``row`` per doc
    store.jsonl          one ``[id, title, text]`` JSON array per line, in row order
    store.idx            little-endian uint64 byte offsets of each line (count + 1 entries)

Hits carry only their ``row`` (read in one batched call from the fast field); the passage is then
read from the store with one ``pread`` at the offset that the memory-mapped ``store.idx`` gives.
Nothing of the corpus is held in Python: the tantivy files are memory-mapped (tantivy's default
``MmapDirectory``), the offsets are a ``numpy.memmap`` and the passages come through the OS page
cache, which is not counted in the process's resident memory, so serving memory stays bounded
whatever the corpus size (``docs/retrieval.md``, "Wikipedia scale").  Queries are analysed with the same analyzer as the documents
(lower-casing, optional English stop words and stemming) and run as a disjunction of term queries
over title and text, so user text never hits a query-syntax parser.  ``search_many`` spreads a
batch over threads: tantivy releases the GIL while it searches.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from langchain_core.documents import Document
from pydantic import PrivateAttr

from masksearch.retrieval.base import (IndexCorruptError, SearchRetriever, fast_doc,
                                       read_manifest, rebuild_hint, write_manifest, INDEX_FORMAT)
from masksearch.retrieval.corpus import Passage

ANALYZER = "ms_text"
_loads = json.JSONDecoder().decode
LANGUAGES_WITH_STOPWORDS = {"danish", "dutch", "english", "finnish", "french", "german", "hungarian",
                            "italian", "norwegian", "portuguese", "russian", "spanish", "swedish"}


def _analyzer(language: str = "english", stem: bool = True, stopwords: bool | list[str] = True):
    import tantivy

    b = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
         .filter(tantivy.Filter.remove_long(40))
         .filter(tantivy.Filter.lowercase()))
    if isinstance(stopwords, (list, tuple)):
        b = b.filter(tantivy.Filter.custom_stopword(list(stopwords)))
    elif stopwords and language in LANGUAGES_WITH_STOPWORDS:
        b = b.filter(tantivy.Filter.stopword(language))
    if stem:
        b = b.filter(tantivy.Filter.stemmer(language))
    return b.build()


def _schema():
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("row", stored=False, indexed=False, fast=True)
    sb.add_text_field("title", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    sb.add_text_field("text", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    return sb.build()


class _Writer:
    """Adds passages to a (new or existing) index folder: tantivy docs + the passage store."""

    def __init__(self, path: Path, manifest: dict[str, Any], heap_mb: int = 128, threads: int = 0):
        import tantivy

        self.path = path
        self.manifest = manifest
        (path / "tantivy").mkdir(parents=True, exist_ok=True)
        self.index = tantivy.Index(_schema(), path=str(path / "tantivy"), reuse=True)
        self.index.register_tokenizer(ANALYZER, _analyzer(manifest["language"], manifest["stem"],
                                                          manifest["stopwords"]))
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.writer = self.index.writer(max(heap_mb * 1_000_000, 15_000_000 * threads), threads)
        self.row = int(manifest.get("count", 0))
        store, idx = path / "store.jsonl", path / "store.idx"
        # drop an uncommitted tail left by an interrupted add
        if idx.exists():
            offs = np.fromfile(idx, dtype="<u8")
            if len(offs) > self.row + 1:
                offs = offs[: self.row + 1]
                offs.tofile(idx)
            end = int(offs[-1]) if len(offs) else 0
            with open(store, "ab") as f:
                f.truncate(end)
        else:
            np.array([0], dtype="<u8").tofile(idx)
            open(store, "wb").close()
            end = 0
        self.store = open(store, "ab")
        self.idx = open(idx, "ab")
        self.offset = end

    def add(self, p: Passage) -> None:
        import tantivy

        doc = tantivy.Document()
        doc.add_unsigned("row", self.row)
        doc.add_text("title", p.title)
        doc.add_text("text", p.text)
        self.writer.add_document(doc)
        line = (json.dumps([p.id, p.title, p.text], ensure_ascii=False) + "\n").encode("utf-8")
        self.store.write(line)
        self.offset += len(line)
        self.idx.write(np.uint64(self.offset).astype("<u8").tobytes())
        self.row += 1

    def abort(self) -> None:
        """Give up: roll the tantivy writer back and release its threads, lock and files."""
        try:
            self.writer.rollback()
        except Exception:
            pass
        self.store.close()
        self.idx.close()
        self.writer = None
        self.index = None

    def add_all(self, passages: Iterable[Any]) -> int:
        """Add every passage and commit; on any error (or a kill) abort, leaving the index as it was."""
        try:
            for p in passages:
                self.add(p)
        except BaseException:
            self.abort()
            raise
        return self.commit()

    def commit(self) -> int:
        self.store.flush()
        self.idx.flush()
        os.fsync(self.store.fileno())
        os.fsync(self.idx.fileno())
        self.writer.commit()
        self.writer.wait_merging_threads()
        self.store.close()
        self.idx.close()
        self.manifest["count"] = self.row
        return self.row


def build_bm25(passages: Iterable[Passage], out: str | os.PathLike, *, language: str = "english",
               stem: bool = True, stopwords: bool | list[str] = True, heap_mb: int = 128,
               threads: int = 0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a BM25 index of ``passages`` into the (new, empty) folder ``out``; returns the manifest.

    The caller (``build_index``) handles the temp-folder + rename that makes the build atomic.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": "bm25", "engine": "tantivy", "format": INDEX_FORMAT, "language": language,
                "stem": stem, "stopwords": stopwords, "count": 0, "complete": False, **(extra or {})}
    _Writer(out, manifest, heap_mb=heap_mb, threads=threads).add_all(passages)
    manifest["complete"] = True
    write_manifest(out, manifest)
    return manifest


class BM25Retriever(SearchRetriever):
    """BM25 over a tantivy index folder (``make_retriever("bm25:DIR")``).

    ``title_boost`` weighs title matches against text matches; ``threads`` is the pool that
    ``search_many`` spreads a batch over (default: the machine's cores).
    """

    path: str
    title_boost: float = 1.0
    threads: int = 0

    _index: Any = PrivateAttr(default=None)
    _searcher: Any = PrivateAttr(default=None)
    _schema: Any = PrivateAttr(default=None)
    _analyzer: Any = PrivateAttr(default=None)
    _store: Any = PrivateAttr(default=None)
    _offsets: Any = PrivateAttr(default=None)
    _pool: Any = PrivateAttr(default=None)
    _manifest: dict = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, __context: Any) -> None:
        self._open()

    @classmethod
    def load(cls, path: str | os.PathLike, k: int = 5, **kw: Any) -> "BM25Retriever":
        return cls(path=str(path), k=k, **kw)

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        import tantivy

        path = Path(self.path)
        m = read_manifest(path, "bm25")
        hint = rebuild_hint("bm25", path, m.get("corpus"))
        store, idx = path / "store.jsonl", path / "store.idx"
        if not (path / "tantivy" / "meta.json").exists() or not store.exists() or not idx.exists():
            raise IndexCorruptError(f"{path} is missing index files: {hint}")
        # memory-mapped, not read: 8 bytes a passage is 170 MB at Wikipedia's 21M
        offsets = np.memmap(idx, dtype="<u8", mode="r") if os.path.getsize(idx) else np.zeros(0, "<u8")
        count = int(m["count"])
        if len(offsets) < count + 1 or (count and os.path.getsize(store) < int(offsets[count])):
            raise IndexCorruptError(f"{path}: passage store is truncated ({len(offsets) - 1} of "
                                    f"{count} passages): {hint}")
        try:
            index = tantivy.Index.open(str(path / "tantivy"))
            analyzer = _analyzer(m.get("language", "english"), m.get("stem", True),
                                 m.get("stopwords", True))
            index.register_tokenizer(ANALYZER, analyzer)
            index.reload()
            searcher = index.searcher()
        except Exception as e:
            raise IndexCorruptError(f"{path}: the tantivy index cannot be opened ({e}): {hint}") from e
        if searcher.num_docs != count:
            raise IndexCorruptError(f"{path}: index holds {searcher.num_docs} passages, manifest says "
                                    f"{count}: {hint}")
        self._manifest = m
        self._index, self._searcher, self._analyzer = index, searcher, analyzer
        self._schema = index.schema
        self._offsets = offsets[: count + 1]
        if self._store is not None:
            self._store.close()
        self._store = open(store, "rb", buffering=0)  # read with os.pread on its fd

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    def __len__(self) -> int:
        return int(self._manifest.get("count", 0))

    # ------------------------------------------------------------------ searching
    def _query(self, text: str):
        import tantivy

        terms = list(dict.fromkeys(self._analyzer.analyze(text)))
        if not terms:
            return None
        subs = []
        for t in terms:
            subs.append((tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "text", t)))
            tq = tantivy.Query.term_query(self._schema, "title", t)
            if self.title_boost != 1.0:
                tq = tantivy.Query.boost_query(tq, self.title_boost)
            subs.append((tantivy.Occur.Should, tq))
        return tantivy.Query.boolean_query(subs)

    def _read_row(self, row: int) -> list:
        """``[id, title, text]`` of store row ``row`` (one positioned read; thread-safe)."""
        a, b = int(self._offsets[row]), int(self._offsets[row + 1])
        return _loads(os.pread(self._store.fileno(), b - a, a).decode("utf-8"))

    def passage(self, row: int) -> Passage:
        pid, title, text = self._read_row(row)
        return Passage(pid, title, text)

    def _search_one(self, query: str, k: int) -> list[Document]:
        q = self._query(query)
        if q is None or k <= 0:
            return []
        searcher = self._searcher
        hits = searcher.search(q, k, count=False).hits
        if not hits:
            return []
        rows = searcher.fast_field_values("row", [a for _, a in hits])
        read = self._read_row
        out = []
        for (score, _), row in zip(hits, rows):
            pid, title, text = read(row)
            out.append(fast_doc(pid, title, text, float(score)))
        return out

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        k = self.k if k is None else k
        queries = list(queries)
        n_threads = self.threads or (os.cpu_count() or 1)
        if len(queries) < 4 or n_threads == 1:
            return [self._search_one(q, k) for q in queries]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(n_threads, thread_name_prefix="bm25")
        # contiguous slices, one per thread: fewer hand-offs than one task per query
        step = -(-len(queries) // n_threads)
        parts = [queries[i:i + step] for i in range(0, len(queries), step)]
        futures = [self._pool.submit(lambda qs: [self._search_one(q, k) for q in qs], part)
                   for part in parts[1:]]
        out = [self._search_one(q, k) for q in parts[0]]
        for f in futures:
            out.extend(f.result())
        return out

    # ------------------------------------------------------------------ incremental adds
    def add_passages(self, passages: Iterable[Passage], heap_mb: int = 128) -> int:
        """Append passages to this index in place; returns how many were added.

        Ids are not checked for duplicates against the existing index.  A crash mid-add leaves
        the index as it was before the add (the store tail is dropped on the next add).
        """
        with self._lock:
            before = len(self)
            w = _Writer(Path(self.path), dict(self._manifest), heap_mb=heap_mb)
            w.add_all(passages)
            m = w.manifest
            m["complete"] = True
            m["updated_at"] = time.time()
            write_manifest(self.path, m)
            self._open()
            return len(self) - before

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        if self._store is not None:
            self._store.close()
            self._store = None


