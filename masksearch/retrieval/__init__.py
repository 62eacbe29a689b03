"""masksearch.retrieval: corpora, retrievers (BM25 / dense / hybrid / web / remote), the search
tool and the retrieval server.  Everything is a LangChain ``BaseRetriever`` with a batched
``search_many(queries, k)``; documents are LangChain ``Document``s whose metadata carries
``id``, ``title`` and ``score``.

Every name loads its module on first use, so importing the package (or its light `kinds`
module, as the command line does) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from masksearch.retrieval.kinds import RETRIEVER_KINDS

_LAZY = {
    **{name: "masksearch.retrieval.base" for name in ("IndexCorruptError", "RemoteSearchError", "SearchError",
                                                      "SearchRetriever")},
    **{name: "masksearch.retrieval.corpus" for name in ("CorpusError", "Passage", "chunk_text", "parent_id",
                                                        "read_corpus")},
    "SPEC_FORMS": "masksearch.retrieval.factory",
    "make_retriever": "masksearch.retrieval.factory",
    "build_index": "masksearch.retrieval.index",
    **{target.partition(":")[2]: target.partition(":")[0] for target in RETRIEVER_KINDS.values()},
    "MiniLMEmbeddings": "masksearch.retrieval.dense",
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


__all__ = ["RETRIEVER_KINDS", *_LAZY]
