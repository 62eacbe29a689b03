"""Hybrid retrieval: reciprocal-rank fusion (RRF) of any retrievers.

``score(d) = sum_i w_i / (rrf_k + rank_i(d))`` over the retrievers that returned ``d`` (rank from
1); documents are identified by ``metadata["id"]`` (or their text when they have no id).  Each
retriever is asked for ``fetch_k`` candidates (default ``max(2k, 20)``) through its batched
``search_many`` when it has one, in parallel threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from masksearch.retrieval.base import SearchRetriever


def _key(doc: Document) -> str:
    pid = (doc.metadata or {}).get("id") or doc.id
    return f"id:{pid}" if pid else f"text:{doc.page_content}"


def rrf_fuse(rankings: Sequence[Sequence[Document]], k: int, rrf_k: float = 60.0,
             weights: Sequence[float] | None = None) -> list[Document]:
    """Fuse ranked lists of documents; returns the top ``k`` with the fused score in metadata."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    scores: dict[str, float] = {}
    first: dict[str, Document] = {}
    order: dict[str, int] = {}
    for w, ranking in zip(weights, rankings):
        seen: set[str] = set()
        for rank, doc in enumerate(ranking, 1):
            key = _key(doc)
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + w / (rrf_k + rank)
            if key not in first:
                first[key] = doc
                order[key] = len(order)
    best = sorted(scores, key=lambda key: (-scores[key], order[key]))[:k]
    out = []
    for key in best:
        d = first[key]
        meta = dict(d.metadata or {})
        meta["score"] = scores[key]
        out.append(Document.model_construct(page_content=d.page_content, metadata=meta, id=None,
                                            type="Document"))
    return out


class HybridRetriever(SearchRetriever):
    """RRF over ``retrievers`` (``make_retriever("hybrid:bm25:DIR+chroma:DIR")``)."""

    retrievers: list[BaseRetriever]
    weights: list[float] | None = None
    rrf_k: float = 60.0
    fetch_k: int | None = None

    def _one(self, r: BaseRetriever, queries: list[str], n: int) -> list[list[Document]]:
        if hasattr(r, "search_many"):
            return r.search_many(queries, n)
        return [list(x)[:n] for x in r.batch(queries)]

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        k = self.k if k is None else k
        queries = list(queries)
        n = self.fetch_k or max(2 * k, 20)
        if len(self.retrievers) == 1:
            per = [self._one(self.retrievers[0], queries, n)]
        else:
            with ThreadPoolExecutor(len(self.retrievers)) as ex:
                per = list(ex.map(lambda r: self._one(r, queries, n), self.retrievers))
        return [rrf_fuse([p[i] for p in per], k, self.rrf_k, self.weights) for i in range(len(queries))]


