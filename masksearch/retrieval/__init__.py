"""masksearch.retrieval: corpora, retrievers (BM25 / dense / hybrid / web / remote), the search
tool and the retrieval server.  Everything is a LangChain ``BaseRetriever`` with a batched
``search_many(queries, k)``; documents are LangChain ``Document``s whose metadata carries
``id``, ``title`` and ``score``.

Heavy modules (chroma, sentence-transformers, fastapi) load only when their names are used.
"""

from __future__ import annotations

import importlib
from typing import Any

from masksearch.retrieval.base import (IndexCorruptError, RemoteSearchError, SearchError,
                                       SearchRetriever)
from masksearch.retrieval.corpus import CorpusError, Passage, chunk_text, parent_id, read_corpus
from masksearch.retrieval.factory import SPEC_FORMS, make_retriever
from masksearch.retrieval.index import build_index

_LAZY = {
    "BM25Retriever": "masksearch.retrieval.bm25",
    "ChromaRetriever": "masksearch.retrieval.dense",
    "MiniLMEmbeddings": "masksearch.retrieval.dense",
    "HybridRetriever": "masksearch.retrieval.hybrid",
    "DDGRetriever": "masksearch.retrieval.web",
    "RemoteRetriever": "masksearch.retrieval.remote",
    "create_app": "masksearch.retrieval.server",
    "format_documents": "masksearch.retrieval.tool",
    "search_with_retry": "masksearch.retrieval.tool",
    "asearch_with_retry": "masksearch.retrieval.tool",
    "make_search_tool": "masksearch.retrieval.tool",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'masksearch.retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = ["Passage", "read_corpus", "chunk_text", "parent_id", "build_index", "make_retriever",
           "SPEC_FORMS", "SearchRetriever", "SearchError", "RemoteSearchError", "IndexCorruptError",
           "CorpusError", *_LAZY]
