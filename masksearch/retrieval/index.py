"""``build_index``: corpus -> index folder, atomically (temp folder + rename, manifest last)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from masksearch.errors import MaskSearchError
from masksearch.retrieval.base import MANIFEST
from masksearch.retrieval.corpus import Passage, count_lines, iter_passages
from masksearch.retrieval.kinds import INDEX_KINDS
from masksearch.utils.jsonl import ReadStats, in_shard, parse_shard

KINDS = INDEX_KINDS  # the one list lives in the factory


def _progress(it: Iterable[Passage], total: int | None, desc: str, enabled: bool) -> Iterator[Passage]:
    if not enabled:
        yield from it
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="rec", file=sys.stderr, mininterval=0.5) as bar:
        for p in it:
            bar.update(1)
            yield p


def _dedupe(passages: Iterable[Passage], stats: ReadStats) -> Iterator[Passage]:
    seen: set[str] = set()
    for p in passages:
        if p.id in seen:
            stats.skipped["duplicate_id"] += 1
            continue
        seen.add(p.id)
        yield p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(out: Path) -> None:
    """Remove temp folders of builds into ``out`` that were killed (their process is gone)."""
    if not out.parent.exists():
        return
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def is_index_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is provably a masksearch index: its ``manifest.json`` has our schema (a
    ``kind``, an ``engine``, an integer ``format`` and a ``complete`` flag).  Only such a folder is
    ever replaced by a rebuild; a folder with someone else's ``manifest.json`` is not."""
    mf = Path(path) / MANIFEST
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(m, dict) and isinstance(m.get("kind"), str) and isinstance(m.get("engine"), str)
            and isinstance(m.get("format"), int) and not isinstance(m.get("format"), bool)
            and isinstance(m.get("complete"), bool))


def _empty_corpus_message(name: str, stats: ReadStats) -> str:
    msg = f"no passages read from {name} ({stats.summary()}): nothing to index"
    if stats.skipped.get("undecodable"):
        msg += "; the file is not UTF-8 (UTF-16? convert it: iconv -f UTF-16 -t UTF-8 IN > OUT)"
    elif stats.n_skipped:
        msg += "; check the format (--format) and that records have an id and a text"
    return msg


class CorpusBlockWorker:
    """Parse and chunk blocks of raw corpus lines (what a Ray worker does for ``index``)."""

    def __init__(self, stem: str, fmt: str = "jsonl", chunk_words: int = 100):
        self.stem, self.fmt, self.chunk_words = stem, fmt, chunk_words

    def __call__(self, block: tuple[int, list[bytes]]) -> tuple[list[Passage], dict[str, Any]]:
        from masksearch.retrieval.corpus import passages_from_lines

        st = ReadStats()
        out = passages_from_lines(block[0], block[1], stem=self.stem, fmt=self.fmt, chunk_words=self.chunk_words,
                                  stats=st)
        return out, {"read": st.read, "skipped": dict(st.skipped)}


def _passages_on_workers(corpus: Any, fmt: str, chunk_words: int, stats: ReadStats, executor: str,
                         address: str | None, workers: int | None, progress: bool) -> Iterator[Passage]:
    """The corpus's passages, parsed and chunked on workers, in file order.

    The driver reads raw lines (cheap) in blocks; the workers parse and chunk them; the results
    come back in block order (the runner's ordered commit) and stream into the one index writer
    here, so the index is the one a local build writes."""
    import queue
    import threading

    from masksearch.retrieval.corpus import LINE_FORMATS, detect_format, iter_line_blocks
    from masksearch.utils.aio import run_sync
    from masksearch.utils.jobs import WorkerSpec, make_executor, run_jobs

    if not isinstance(corpus, (str, os.PathLike)):
        raise MaskSearchError(f"--executor {executor} indexes a corpus file; got {type(corpus).__name__}")
    path = str(corpus)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in LINE_FORMATS:
        raise MaskSearchError(f"--executor {executor} reads line-based corpora ({', '.join(LINE_FORMATS)}); "
                              f"{path} is {fmt}: index it without --executor")
    spec = WorkerSpec("masksearch.retrieval.index:CorpusBlockWorker",
                      {"stem": Path(path).name, "fmt": fmt, "chunk_words": chunk_words})
    ex = make_executor(executor, spec, concurrency=2, address=address, workers=workers)  # Ray set up here
    q: queue.Queue = queue.Queue(maxsize=16)
    end, abandoned = object(), threading.Event()

    def on_result(block: Any, res: tuple[list[Passage], dict[str, Any]]) -> int:
        if abandoned.is_set():
            raise MaskSearchError("index build abandoned")
        passages, st = res
        stats.read += st["read"]
        stats.skipped.update(st["skipped"])
        q.put(passages)
        return len(block[1])

    def produce() -> None:
        try:
            run_sync(run_jobs(iter_line_blocks(path), ex, key=lambda b: str(b[0]), on_result=on_result,
                              ordered=True, fail_fast=True,
                              progress={"desc": f"index [{executor}]", "unit": "line", "total": count_lines(path),
                                        "file": sys.stderr, "mininterval": 0.5} if progress else None))
            q.put(end)
        except BaseException as e:  # noqa: BLE001 - re-raised in the driver's thread
            q.put(e)

    t = threading.Thread(target=produce, name="index-blocks", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        abandoned.set()
        while t.is_alive():  # let the producer see `abandoned` instead of blocking on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        ex.close()


def build_index(corpus: Any, kind: str = "bm25", out: str | os.PathLike | None = None, *,
                chunk_words: int = 100, shard: str | None = None, progress: bool = True,
                fmt: str = "auto", overwrite: bool = True, executor: str | None = None,
                ray_address: str | None = None, workers: int | None = None, **options: Any) -> dict[str, Any]:
    """Index ``corpus`` (a path any :func:`read_corpus` format accepts, or an iterable of
    ``Passage``/dicts) into the folder ``out`` and return its manifest (plus ``build_s`` and
    ``read_stats``, the reader's summary line).

    ``kind``: ``"bm25"`` (tantivy; options ``language``, ``stem``, ``stopwords``, ``heap_mb``,
    ``threads``) or ``"chroma"`` (options ``batch_size``, ``model_path``, ``device``).
    ``shard="i/n"`` indexes records i, i+n, i+2n... only.  The index is written into a temp folder
    beside ``out`` and renamed into place when complete, so a killed build never leaves a folder
    that loads; an existing index at ``out`` is replaced (``overwrite=False`` refuses).

    ``executor="ray"`` (``ray_address``, ``workers``): Ray workers parse and chunk blocks of the
    corpus's lines (JSONL and FlashRAG files); the passages come back in file order and this
    process, the only writer, builds the index from them (the same index as a local build).
    """
    if kind not in KINDS:
        raise MaskSearchError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if out is None:
        raise MaskSearchError("build_index needs out=DIR, the index folder to write")
    if chunk_words is None or int(chunk_words) < 0:
        raise MaskSearchError(f"chunk_words must be 0 (never split) or a positive number of words, "
                              f"got {chunk_words}")
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise MaskSearchError(f"{out} exists and is a file; give a folder path for the index")
        if any(out.iterdir()) and not is_index_folder(out):
            raise MaskSearchError(f"{out} exists, is not empty and is not a masksearch index (no "
                                  f"{MANIFEST} of ours); refusing to replace it (choose another --out)")
        if not overwrite and (out / MANIFEST).exists():
            raise MaskSearchError(f"{out} already holds an index (pass overwrite=True to rebuild)")
    if isinstance(corpus, (str, os.PathLike)) and os.path.exists(corpus) and (
            os.path.realpath(corpus) == os.path.realpath(out)
            or os.path.realpath(corpus).startswith(os.path.realpath(out).rstrip(os.sep) + os.sep)):
        raise MaskSearchError(f"the corpus {corpus} lies inside --out {out}; rebuilding would delete it")
    out.parent.mkdir(parents=True, exist_ok=True)

    stats = ReadStats()
    shard_t = parse_shard(shard)
    corpus_name = str(corpus) if isinstance(corpus, (str, os.PathLike)) else None
    distributed = executor not in (None, "local")
    if distributed:
        passages: Iterable[Passage] = _passages_on_workers(corpus, fmt, chunk_words, stats, executor, ray_address,
                                                           workers, progress)
    else:
        passages = iter_passages(corpus, chunk_words=chunk_words, stats=stats, fmt=fmt)
    if shard_t != (0, 1):
        passages = (p for i, p in enumerate(passages) if in_shard(i, shard_t))
    passages = _dedupe(passages, stats)
    if not distributed:  # the workers' run has its own bar
        total = count_lines(corpus_name) if corpus_name and shard_t == (0, 1) else None
        passages = _progress(passages, total, f"index {kind}", progress)

    extra = {"corpus": os.path.abspath(corpus_name) if corpus_name and os.path.exists(corpus_name)
             else corpus_name, "chunk_words": chunk_words, "shard": shard, "built_at": time.time()}
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    try:
        if kind == "bm25":
            from masksearch.retrieval.bm25 import build_bm25

            manifest = build_bm25(passages, tmp, extra=extra, **options)
        else:
            from masksearch.retrieval.dense import build_chroma

            manifest = build_chroma(passages, tmp, extra=extra, progress=progress, **options)
        build_s = time.perf_counter() - t0
        if not int(manifest.get("count") or 0):
            raise MaskSearchError(_empty_corpus_message(corpus_name or "the corpus", stats))
        # swap into place: old index aside, new one in, old one removed
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = dict(manifest)
    manifest.update(path=str(out), build_s=build_s, read_stats=stats.summary(),
                    skipped=dict(stats.skipped))
    return manifest
