"""``make_retriever(spec)``: one string (or object) -> a LangChain retriever."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from langchain_core.retrievers import BaseRetriever

from masksearch.errors import UnknownSpecError

SPEC_FORMS = (
    "bm25:DIR (a tantivy BM25 index built by `masksearch index --kind bm25`)",
    "chroma:DIR (a Chroma index built by `masksearch index --kind chroma`)",
    "hybrid:SPEC+SPEC[+...] (reciprocal-rank fusion, e.g. hybrid:bm25:DIR+chroma:DIR)",
    "ddg (DuckDuckGo web search)",
    "http://HOST:PORT (a `masksearch serve-retriever` server)",
    "module.path:attr (a BaseRetriever object or a factory returning one)",
    "a BaseRetriever object",
)

_PREFIX = re.compile(r"\+(?=(?:bm25|chroma|ddg|hybrid|https?)(?::|$))")
_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*:[A-Za-z_][\w.]*$")


def unknown(spec: Any, why: str = "") -> UnknownSpecError:
    forms = "\n  ".join(SPEC_FORMS)
    return UnknownSpecError(f"unknown retriever spec {spec!r}{': ' + why if why else ''}; "
                            f"use one of:\n  {forms}")


def make_retriever(spec: Any, k: int = 5, **kw: Any) -> BaseRetriever:
    """Build a retriever from a spec string (see :data:`SPEC_FORMS`) or return a
    ``BaseRetriever`` as is.  ``kw`` go to the retriever's constructor."""
    if isinstance(spec, BaseRetriever):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise unknown(spec)
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "bm25" and rest:
        from masksearch.retrieval.bm25 import BM25Retriever

        return BM25Retriever.load(os.path.expanduser(rest), k=k, **kw)
    if kind == "chroma" and rest:
        from masksearch.retrieval.dense import ChromaRetriever

        return ChromaRetriever.load(os.path.expanduser(rest), k=k, **kw)
    if kind == "hybrid" and rest:
        from masksearch.retrieval.hybrid import HybridRetriever

        parts = [p for p in _PREFIX.split(rest) if p]
        if len(parts) < 2:
            raise unknown(spec, "hybrid needs at least two retrievers joined by '+'")
        return HybridRetriever(retrievers=[make_retriever(p, k=k) for p in parts], k=k, **kw)
    if spec == "ddg" or kind == "ddg":
        from masksearch.retrieval.web import DDGRetriever

        if rest:
            kw.setdefault("base_url", rest.lstrip("@"))
        return DDGRetriever(k=k, **kw)
    if kind in ("http", "https"):
        from masksearch.retrieval.remote import RemoteRetriever

        return RemoteRetriever(url=spec, k=k, **kw)
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
