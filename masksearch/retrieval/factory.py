"""``make_retriever(spec)``: one string (or object) -> a LangChain retriever."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from langchain_core.retrievers import BaseRetriever

from masksearch.errors import UnknownSpecError
from masksearch.retrieval.kinds import INDEX_KINDS, RETRIEVER_KINDS

def retriever_class(kind: str) -> Any:
    """The retriever class of a spec prefix, imported on first use."""
    mod, _, cls = RETRIEVER_KINDS[kind].partition(":")
    return getattr(importlib.import_module(mod), cls)


SPEC_FORMS = (
    "bm25:DIR (a tantivy BM25 index built by `masksearch index --kind bm25`)",
    "chroma:DIR (a Chroma index built by `masksearch index --kind chroma`)",
    "hybrid:SPEC+SPEC[+...] (reciprocal-rank fusion, e.g. hybrid:bm25:DIR+chroma:DIR)",
    "cache:FILE[@MODE]|SPEC (SPEC behind a persistent search cache; MODE read-write, read-only, off)",
    "ddg (DuckDuckGo web search)",
    "http://HOST:PORT (a `masksearch serve-retriever` server)",
    "module.path:attr (a BaseRetriever object or a factory returning one)",
    "a BaseRetriever object",
)

_PREFIX = re.compile(r"\+(?=(?:" + "|".join(map(re.escape, RETRIEVER_KINDS)) + r")(?::|$))")
_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*:[A-Za-z_][\w.]*$")


def unknown(spec: Any, why: str = "") -> UnknownSpecError:
    forms = "\n  ".join(SPEC_FORMS)
    return UnknownSpecError(f"unknown retriever spec {spec!r}{': ' + why if why else ''}; "
                            f"use one of:\n  {forms}")


def make_retriever(spec: Any, k: int = 5, *, search_cache: str | None = None, **kw: Any) -> BaseRetriever:
    """Build a retriever from a spec string (see :data:`SPEC_FORMS`) or return a
    ``BaseRetriever`` as is.  ``kw`` go to the retriever's constructor.

    ``search_cache="FILE[@MODE]"`` puts it behind the persistent search cache
    (:mod:`masksearch.retrieval.cache`), like the spec ``cache:FILE[@MODE]|SPEC``.
    """
    if search_cache:
        from masksearch.retrieval.cache import cache_spec, parse_option

        path, mode = parse_option(search_cache)
        spec = cache_spec(spec, path, mode) if isinstance(spec, str) else spec
        if isinstance(spec, BaseRetriever):
            from masksearch.retrieval.cache import wrap

            return wrap(spec, path, mode)
    if isinstance(spec, BaseRetriever):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise unknown(spec)
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "cache" and "|" in rest:
        from masksearch.retrieval.cache import parse_option, wrap

        option, _, inner = rest.partition("|")
        path, mode = parse_option(option)
        if mode == "off":
            return make_retriever(inner, k=k, **kw)
        if kw:  # constructor options go to the inner retriever, built now
            return wrap(make_retriever(inner, k=k, **kw), path, mode, spec=inner, k=k)
        return wrap(None, path, mode, spec=inner.strip(), k=k)
    if kind in INDEX_KINDS and rest:  # an index folder
        return retriever_class(kind).load(os.path.expanduser(rest), k=k, **kw)
    if kind == "hybrid" and rest:
        parts = [p for p in _PREFIX.split(rest) if p]
        if len(parts) < 2:
            raise unknown(spec, "hybrid needs at least two retrievers joined by '+'")
        return retriever_class(kind)(retrievers=[make_retriever(p, k=k) for p in parts], k=k, **kw)
    if kind == "ddg":
        if rest:
            kw.setdefault("base_url", rest.lstrip("@"))
        return retriever_class(kind)(k=k, **kw)
    if kind in ("http", "https"):
        return retriever_class(kind)(url=spec, k=k, **kw)
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "manifest.json")):
        from masksearch.retrieval.base import read_manifest

        return make_retriever(f"{read_manifest(spec)['kind']}:{spec}", k=k, **kw)
    if _MODULE_ATTR.match(spec):
        mod_name, _, attr = spec.partition(":")
        try:
            obj: Any = importlib.import_module(mod_name)
        except ImportError as e:
            raise unknown(spec, f"cannot import {mod_name!r} ({e})") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise unknown(spec, f"{mod_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if isinstance(obj, BaseRetriever):
            return obj
        if callable(obj):
            try:
                made = obj(k=k, **kw)
            except TypeError:
                made = obj(**kw)
            if isinstance(made, BaseRetriever):
                return made
            raise unknown(spec, f"{attr}() returned {type(made).__name__}, not a BaseRetriever")
        raise unknown(spec, f"{attr} is a {type(obj).__name__}, not a BaseRetriever")
    raise unknown(spec)
