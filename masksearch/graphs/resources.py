"""Models and retrievers of the graphs' run contexts: spec strings resolved once per process.

A graph's context (``StudentContext``, ``TeacherContext``, ``RagContext``) holds either live objects
(a ``BaseChatModel``, a ``BaseRetriever``: notebooks and tests pass those) or JSON-friendly spec
strings, which is all the LangGraph server and Studio can send.  A spec is resolved here, once per
process, and cached under the spec (and the options it was built with), so every run of every
graph that names ``"smollm2"`` shares one loaded model.

Loading a model or opening an index blocks (file I/O, torch), so the graphs resolve through the
``a…`` functions, which do the work in a worker thread (``asyncio.to_thread``) and never on the
event loop; a cached spec costs a dictionary lookup.

``"bm25:shared"`` (:data:`SHARED_BM25`) names the BM25 index of the shared corpus
(``../shared/data/corpus``); it is built on first use into the masksearch cache
(``$MASKSEARCH_HOME/bm25-shared``, about 20 s) and rebuilt when the corpus file changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping

DEFAULT_MODEL = "smollm2"
SHARED_BM25 = "bm25:shared"

_CACHE: dict[tuple, Any] = {}
_LOCKS: dict[tuple, threading.Lock] = {}
_GUARD = threading.Lock()


def _options_key(options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(options or {}), sort_keys=True, default=str)


def _cached(key: tuple, build: Any) -> Any:
    """``_CACHE[key]``, built once by ``build()`` even when several threads ask at once."""
    if key in _CACHE:
        return _CACHE[key]
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _CACHE:
            _CACHE[key] = build()
    return _CACHE[key]


def _model_is_cached(spec: Any, options: Mapping[str, Any] | None) -> bool:
    return not isinstance(spec, str) or ("model", spec.strip(), _options_key(options)) in _CACHE


# ------------------------------------------------------------------------------ the shared index
def _index_is_current(index: Path, corpus: Path) -> bool:
    try:
        m = json.loads((index / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("kind") == "bm25" and m.get("complete") is True
            and m.get("corpus") == os.path.abspath(corpus)
            and float(m.get("built_at") or 0) >= corpus.stat().st_mtime)


def shared_bm25_dir(progress: bool = False) -> Path:
    """The BM25 index of the shared corpus in the masksearch cache, built when missing or older
    than the corpus (the build is atomic: a killed build never leaves a folder that loads)."""
    from masksearch.errors import MaskSearchError
    from masksearch.paths import home, shared_corpus

    corpus = shared_corpus()
    if corpus is None:
        raise MaskSearchError(
            f"retriever {SHARED_BM25!r} needs the shared corpus (../shared/data/corpus/wiki_passages.jsonl "
            "beside the checkout, or $MASKSEARCH_SHARED_DATA); give another retriever spec, e.g. bm25:DIR")
    index = home() / "bm25-shared"

    def build() -> Path:
        if not _index_is_current(index, corpus):
            from masksearch.retrieval import build_index

            build_index(str(corpus), kind="bm25", out=str(index), progress=progress)
        return index

    return _cached(("index", SHARED_BM25, str(index)), build)


# ------------------------------------------------------------------------------ resolving
_LOAD_OPTIONS = ("dtype", "device")  # what a local model's weights depend on


def _is_local(spec: str) -> bool:
    return spec in ("smollm2", "embedded") or (spec.startswith("hf:") and bool(spec[3:].strip()))


def resolve_model(spec: Any, options: Mapping[str, Any] | None = None) -> Any:
    """A chat model for ``spec`` (see :func:`masksearch.models.make_chat_model`); an object is
    returned as is.  Blocking: call :func:`aresolve_model` from async code.

    A local model's weights are loaded once per spec (and ``dtype``/``device``): the same spec
    with other generation options (``max_new_tokens``, ``temperature``…) wraps the same weights."""
    if not isinstance(spec, str):
        return spec
    s = spec.strip()
    opts = dict(options or {})

    def build() -> Any:
        from masksearch.models import make_chat_model

        if not _is_local(s):
            return make_chat_model(s, **opts)
        load = {k: opts.pop(k) for k in _LOAD_OPTIONS if k in opts}
        weights = resolve_model(s, load) if opts else make_chat_model(s, **load)
        if not opts:
            return weights
        from masksearch.models.local import LocalChatModel

        return LocalChatModel.from_model(weights.model, weights.tokenizer,
                                         **{"model_name": weights.model_name, **opts})

    return _cached(("model", s, _options_key(options)), build)


def _per_call_k(retriever: Any) -> bool:
    """True when the retriever takes ``k`` on every call (``search_many``): one object serves
    every ``k``; a plain ``BaseRetriever`` returns its constructor's ``k``, so it is kept per ``k``."""
    return callable(getattr(retriever, "search_many", None))


def _lookup_retriever(spec: str, k: int) -> Any:
    first = _CACHE.get(("retriever", spec))  # (k it was built with, retriever)
    if first is not None and (_per_call_k(first[1]) or first[0] == int(k)):
        return first[1]
    return _CACHE.get(("retriever", spec, int(k)))


def resolve_retriever(spec: Any, k: int = 5) -> Any:
    """A retriever for ``spec`` (see :func:`masksearch.retrieval.make_retriever`, plus
    :data:`SHARED_BM25`); an object is returned as is.  One index is opened once per process,
    whatever ``k`` the contexts ask for.  Blocking: use :func:`aresolve_retriever`."""
    if not isinstance(spec, str):
        return spec
    s = spec.strip()

    def build() -> Any:
        from masksearch.retrieval import make_retriever

        target = f"bm25:{shared_bm25_dir()}" if s == SHARED_BM25 else s
        return make_retriever(target, k=k)

    built_k, first = _cached(("retriever", s), lambda: (int(k), build()))
    if _per_call_k(first) or built_k == int(k):
        return first
    return _cached(("retriever", s, int(k)), build)


async def aresolve_model(spec: Any, options: Mapping[str, Any] | None = None) -> Any:
    """:func:`resolve_model` off the event loop (a cached spec returns at once)."""
    if _model_is_cached(spec, options):
        return resolve_model(spec, options)
    return await asyncio.to_thread(resolve_model, spec, options)


async def aresolve_retriever(spec: Any, k: int = 5) -> Any:
    """:func:`resolve_retriever` off the event loop (a cached spec returns at once)."""
    if not isinstance(spec, str):
        return spec
    found = _lookup_retriever(spec.strip(), k)
    return found if found is not None else await asyncio.to_thread(resolve_retriever, spec, k)


def clear_cache() -> None:
    """Forget every resolved spec (tests; a long-lived process that wants to free a model)."""
    with _GUARD:
        _CACHE.clear()
        _LOCKS.clear()


__all__ = ["DEFAULT_MODEL", "SHARED_BM25", "resolve_model", "resolve_retriever", "aresolve_model",
           "aresolve_retriever", "shared_bm25_dir", "clear_cache"]
