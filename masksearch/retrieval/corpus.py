"""Streaming corpus readers: every format yields :class:`Passage` records with stable ids.

Formats (``fmt="auto"`` guesses from the path):

- ``jsonl``: ``{"id", "title", "text"}`` per line (the shared corpus);
- ``flashrag``: ``{"id", "contents"}`` with ``contents = "title\\ntext"``;
- ``tsv``: DPR's ``id<TAB>text<TAB>title`` with a header line;
- ``wikiextractor``: a folder of ``AA/wiki_00`` files holding JSON lines ``{id, url, title, text}``;
- ``textdir``: a folder with one ``.txt`` file per page (file name = title, paragraphs on lines);
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face ``datasets`` dataset, streamed (needs network);
- ``wikidump``: a MediaWiki XML dump, ``enwiki-*-pages-articles*.xml.bz2`` (:mod:`.wikidump`).

Nothing reads the whole dump into memory.  Bad records (undecodable bytes, invalid JSON, missing
fields, empty text) are counted in ``stats`` (a :class:`~masksearch.utils.jsonl.ReadStats`) and
skipped, never fatal.

Long texts are chunked into passages of about ``chunk_words`` words that keep their title.  A text
is only split when it is longer than ``2 * chunk_words`` words, so a corpus that is already cut into
~100-word passages keeps its ids unchanged; the first chunk keeps the record's id, later ones get
``ID#2``, ``ID#3``...  (:func:`parent_id` maps a chunk id back).  ``chunk_words=0`` disables it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from masksearch.errors import MaskSearchError
from masksearch.utils.jsonl import ReadStats, decode_line
from masksearch.utils.scrub import safe_text

FORMATS = ("jsonl", "flashrag", "tsv", "wikiextractor", "textdir", "hf", "wikidump")


class CorpusError(MaskSearchError):
    """The corpus path or format cannot be read at all (as opposed to a bad record)."""


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "text": self.text}


def parent_id(passage_id: str) -> str:
    """The id of the record a chunk came from (``"abc#3"`` -> ``"abc"``)."""
    head, sep, tail = passage_id.rpartition("#")
    return head if sep and tail.isdigit() else passage_id


_SENT_END = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, chunk_words: int = 100) -> list[str]:
    """Split ``text`` into pieces of about ``chunk_words`` words, preferring sentence ends.

    Texts up to ``2 * chunk_words`` words are returned whole.  Pieces are balanced so that no
    tiny tail is left over.
    """
    words = text.split()
    if not chunk_words or len(words) <= 2 * chunk_words:
        return [" ".join(words)] if words else []
    n_chunks = max(1, round(len(words) / chunk_words))
    target = len(words) / n_chunks
    sentences = [s.split() for s in _SENT_END.split(" ".join(words)) if s.strip()]
    chunks: list[list[str]] = [[]]
    for sent in sentences:
        # a single over-long sentence is cut by words (an offset, not re-slicing: linear time on a
        # multi-megabyte line with no sentence end)
        i = 0
        while len(sent) - i > 1.5 * target:
            room = max(1, int(target) - len(chunks[-1]))
            chunks[-1].extend(sent[i:i + room])
            i += room
            chunks.append([])
        rest = sent[i:] if i else sent
        if chunks[-1] and len(chunks[-1]) + len(rest) / 2 > target:
            chunks.append([])
        chunks[-1].extend(rest)
    return [" ".join(c) for c in chunks if c]


def _stable_id(*parts: str) -> str:
    return "p-" + hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def detect_format(path: str | os.PathLike) -> str:
    p = str(path)
    if p.startswith("hf:"):
        return "hf"
    if not os.path.exists(p):
        raise CorpusError(f"corpus not found: {p} (give a JSONL/TSV file, a folder, or hf:NAME)")
    if os.path.isdir(p):
        for root, _dirs, files in os.walk(p):
            for f in sorted(files):
                if re.fullmatch(r"wiki_\d+(\.bz2)?", f):
                    return "wikiextractor"
                if f.endswith(".txt"):
                    return "textdir"
        raise CorpusError(f"{p}: folder holds neither WikiExtractor files (AA/wiki_00) nor .txt pages")
    if p.endswith((".tsv", ".tsv.gz")):
        return "tsv"
    if p.endswith((".xml", ".xml.bz2")):  # a MediaWiki dump: enwiki-*-pages-articles*.xml.bz2
        return "wikidump"
    # JSONL: look at the first object to tell FlashRAG ({id, contents}) from ours
    with open(p, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                return "flashrag" if "contents" in rec and "text" not in rec else "jsonl"
    return "jsonl"


def _emit(pid: str, title: str, text: Any, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    if not isinstance(text, str) or not text.strip():
        stats.skipped["empty_text"] += 1
        return
    title = title if isinstance(title, str) else str(title or "")
    # outside text is made safe once, here: lone surrogates and NULs never reach an index
    text, title, pid = safe_text(text), safe_text(title), safe_text(pid)
    pieces = chunk_text(text, chunk_words)
    stats.read += 1
    for i, piece in enumerate(pieces):
        yield Passage(pid if i == 0 else f"{pid}#{i + 1}", title.strip(), piece)


def _iter_json_lines(path: str, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    opener = _open_maybe_compressed
    with opener(path) as f:
        for lineno, raw in enumerate(f, 1):
            rec = decode_line(raw, stats)
            if rec is not None:
                yield lineno, rec


def _open_maybe_compressed(path: str):
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rb")
    return open(path, "rb")


def _jsonl_rec(rec: dict, stem: str, lineno: int, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    text = rec.get("text")
    if text is None and "contents" in rec:
        yield from _flashrag_rec(rec, stem, lineno, chunk_words, stats)
        return
    if text is None:
        stats.skipped["missing_field"] += 1
        return
    pid = rec.get("id", rec.get("_id"))
    pid = str(pid) if pid not in (None, "") else f"{stem}:{lineno}"
    yield from _emit(pid, rec.get("title", ""), text, chunk_words, stats)


def _read_jsonl(path: str, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    stem = Path(path).name
    for lineno, rec in _iter_json_lines(path, stats):
        yield from _jsonl_rec(rec, stem, lineno, chunk_words, stats)


LINE_FORMATS = ("jsonl", "flashrag")  # one record per line: blocks of lines parse independently


def iter_line_blocks(path: str | os.PathLike, lines: int = 2000) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, raw lines)`` blocks of a line-based corpus, unparsed (cheap)."""
    block: list[bytes] = []
    start = 1
    with _open_maybe_compressed(str(path)) as f:
        for lineno, raw in enumerate(f, 1):
            if not block:
                start = lineno
            block.append(raw)
            if len(block) >= lines:
                yield start, block
                block = []
    if block:
        yield start, block


def passages_from_lines(start: int, raw_lines: list[bytes], *, stem: str, fmt: str = "jsonl",
                        chunk_words: int = 100, stats: ReadStats | None = None) -> list[Passage]:
    """Parse and chunk one block of raw lines exactly as :func:`read_corpus` does (the per-line half
    of the reader, which workers can run on blocks in parallel)."""
    if fmt not in LINE_FORMATS:
        raise CorpusError(f"format {fmt!r} is not line-based; blocks of lines need one of: {', '.join(LINE_FORMATS)}")
    stats = stats if stats is not None else ReadStats()
    per_rec = _jsonl_rec if fmt == "jsonl" else _flashrag_rec
    out: list[Passage] = []
    for lineno, raw in enumerate(raw_lines, start):
        rec = decode_line(raw, stats)
        if rec is not None:
            out.extend(per_rec(rec, stem, lineno, chunk_words, stats))
    return out


def _flashrag_rec(rec: dict, stem: str, lineno: int, chunk_words: int, stats: ReadStats):
    contents = rec.get("contents")
    if not isinstance(contents, str):
        stats.skipped["missing_field"] += 1
        return
    title, sep, text = contents.partition("\n")
    if not sep:
        title, text = "", contents
    title = title.strip().strip('"')
    pid = rec.get("id")
    pid = str(pid) if pid not in (None, "") else f"{stem}:{lineno}"
    yield from _emit(pid, title, text, chunk_words, stats)


def _read_flashrag(path: str, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    stem = Path(path).name
    for lineno, rec in _iter_json_lines(path, stats):
        yield from _flashrag_rec(rec, stem, lineno, chunk_words, stats)


def _read_tsv(path: str, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    cols = None
    with _open_maybe_compressed(path) as fb:
        for lineno, raw in enumerate(fb, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                stats.skipped["undecodable"] += 1
                continue
            row = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))
            if cols is None:
                low = [c.strip().lower() for c in row]
                if "text" in low:
                    cols = {name: low.index(name) for name in ("id", "text", "title") if name in low}
                    continue
                cols = {"id": 0, "text": 1, "title": 2}  # DPR order, no header
            if cols["text"] >= len(row):
                stats.skipped["missing_field"] += 1
                continue
            text = row[cols["text"]]
            title = row[cols["title"]] if "title" in cols and cols["title"] < len(row) else ""
            pid = row[cols["id"]] if "id" in cols and cols["id"] < len(row) else ""
            yield from _emit(pid or f"{Path(path).name}:{lineno}", title, text, chunk_words, stats)


def _read_wikiextractor(path: str, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in sorted(names) if re.fullmatch(r"wiki_\d+(\.bz2)?", n))
    for fp in files:
        for lineno, rec in _iter_json_lines(fp, stats):
            if "text" not in rec:
                stats.skipped["missing_field"] += 1
                continue
            pid = rec.get("id")
            pid = f"wiki{pid}" if pid not in (None, "") else f"{os.path.relpath(fp, path)}:{lineno}"
            text = rec["text"]
            title = rec.get("title", "")
            # WikiExtractor repeats the title as the first paragraph
            if isinstance(text, str) and isinstance(title, str) and text.startswith(title + "\n"):
                text = text[len(title) + 1:]
            yield from _emit(pid, title, text, chunk_words, stats)


def _read_textdir(path: str, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".txt"))
    for fp in files:
        title = Path(fp).stem.replace("_", " ")
        try:
            with open(fp, "rb") as f:
                data = f.read()
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            stats.skipped["undecodable"] += 1
            continue
        paragraphs = [p.strip() for p in text.splitlines() if p.strip()]
        if not paragraphs:
            stats.skipped["empty_text"] += 1
            continue
        base = _stable_id(os.path.relpath(fp, path))
        # paragraphs are grouped up to ~chunk_words words; a page is one record in the stats
        stats.read += 1
        idx = 0
        buf: list[str] = []
        n = 0

        def flush():
            nonlocal idx, buf, n
            out = []
            joined = " ".join(buf)
            for piece in chunk_text(joined, chunk_words):
                idx += 1
                out.append(Passage(base if idx == 1 else f"{base}#{idx}", title, piece))
            buf, n = [], 0
            return out

        for para in paragraphs:
            w = len(para.split())
            if buf and chunk_words and n + w > chunk_words:
                yield from flush()
            buf.append(para)
            n += w
        if buf:
            yield from flush()


def _read_hf(spec: str, chunk_words: int, stats: ReadStats) -> Iterator[Passage]:
    """``hf:NAME[:CONFIG][@SPLIT]``, streamed; fields ``id``/``title``/``text`` (or ``contents``)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise CorpusError("reading hf: corpora needs the `datasets` package") from e
    rest = spec[3:]
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as e:  # network, unknown name...
        raise CorpusError(f"cannot load Hugging Face dataset {name!r}: {e}") from e
    for i, rec in enumerate(ds):
        if "text" in rec:
            pid = str(rec.get("id") or f"{name}:{i}")
            yield from _emit(pid, rec.get("title", ""), rec["text"], chunk_words, stats)
        elif "contents" in rec:
            yield from _flashrag_rec(rec, name, i, chunk_words, stats)
        else:
            stats.skipped["missing_field"] += 1


_READERS = {
    "jsonl": _read_jsonl,
    "flashrag": _read_flashrag,
    "tsv": _read_tsv,
    "wikiextractor": _read_wikiextractor,
    "textdir": _read_textdir,
    "hf": _read_hf,
    "wikidump": lambda *a: __import__("masksearch.retrieval.wikidump", fromlist=["_"]).read_wikidump(*a),
}


def read_corpus(path: str | os.PathLike, fmt: str = "auto", chunk_words: int = 100,
                stats: ReadStats | None = None) -> Iterator[Passage]:
    """Stream the passages of a corpus (see the module doc for formats and chunking).

    ``stats`` (a ``ReadStats``) receives the number of records read and the skipped ones by
    reason; ``stats.summary()`` is the line to show the user at the end.
    """
    stats = stats if stats is not None else ReadStats()
    path = str(path)
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in _READERS:
        raise CorpusError(f"unknown corpus format {fmt!r}; use one of: auto, {', '.join(FORMATS)}")
    elif fmt != "hf" and not os.path.exists(path):
        raise CorpusError(f"corpus not found: {path}")
    if chunk_words is None or int(chunk_words) < 0:
        raise CorpusError(f"chunk_words must be 0 (never split) or a positive number of words, got {chunk_words}")
    if fmt != "hf" and os.path.isfile(path):
        _check_encoding(path)
    return _READERS[fmt](path, chunk_words, stats)


def _check_encoding(path: str) -> None:
    """A UTF-16/32 file is refused at once (every line would be skipped as undecodable)."""
    if path.endswith((".gz", ".bz2")):
        return
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) >= 2 and head.count(b"\x00") > len(head) // 8):
        raise CorpusError(f"{path} is UTF-16 or UTF-32 text, not UTF-8: convert it first "
                          f"(iconv -f UTF-16 -t UTF-8 {path} > corpus.utf8.jsonl)")


def iter_passages(source: Any, chunk_words: int = 100, stats: ReadStats | None = None,
                  fmt: str = "auto") -> Iterator[Passage]:
    """A corpus path, or an iterable of ``Passage`` / dicts, as passages."""
    if isinstance(source, (str, os.PathLike)):
        yield from read_corpus(source, fmt=fmt, chunk_words=chunk_words, stats=stats)
        return
    stats = stats if stats is not None else ReadStats()
    for i, item in enumerate(source):
        if isinstance(item, Passage):
            stats.read += 1
            yield item
        elif isinstance(item, dict):
            pid = str(item.get("id") or f"doc:{i}")
            yield from _emit(pid, item.get("title", ""), item.get("text"), chunk_words, stats)
        else:
            stats.skipped["not_a_passage"] += 1


def count_lines(path: str) -> int | None:
    """A fast line count for a progress bar total (None for folders / hf)."""
    if not os.path.isfile(path) or path.endswith((".gz", ".bz2")):
        return None
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


__all__ = ["Passage", "read_corpus", "iter_passages", "chunk_text", "parent_id", "detect_format",
           "CorpusError", "FORMATS", "LINE_FORMATS", "iter_line_blocks", "passages_from_lines"]
