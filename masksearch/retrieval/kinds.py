"""The ONE list of retriever kinds (no heavy imports, so the command line can read it)."""

from __future__ import annotations

# spec prefix -> "module:Class". The spec parser (and its
# hybrid splitter), `masksearch index` (INDEX_KINDS), the CLI choices and the package's lazy
# imports all read it. A new backend is one line here plus its module.
RETRIEVER_KINDS: dict[str, str] = {
    "bm25": "masksearch.retrieval.bm25:BM25Retriever",
    "chroma": "masksearch.retrieval.dense:ChromaRetriever",
    "hybrid": "masksearch.retrieval.hybrid:HybridRetriever",
    "ddg": "masksearch.retrieval.web:DDGRetriever",
    "http": "masksearch.retrieval.remote:RemoteRetriever",
    "https": "masksearch.retrieval.remote:RemoteRetriever",
}
# the kinds `masksearch index` builds into a folder with a manifest (``kind:DIR`` specs)
INDEX_KINDS: tuple[str, ...] = ("bm25", "chroma")
