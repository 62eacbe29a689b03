"""The retrieval server: any retriever behind ``POST /retrieve`` (Search-R1's shape) + ``GET /health``.

Request ``{"queries": [...], "topk": k, "return_scores": bool}``; answer
``{"result": [[{"document": {"id", "contents", "title", "text"}, "score"}, ...], ...]}`` (with
``return_scores: false`` each hit is the bare document, as in Search-R1).  A batch goes through the
retriever's ``search_many`` in one call.  Invalid bodies get 422 with the reason, a batch over
``max_queries`` gets 413 and is not run, ``topk`` outside ``1..max_topk`` gets 422.
"""


from typing import Any

from masksearch.retrieval.base import SearchError


def _hit(doc: Any, return_scores: bool) -> dict[str, Any]:
    meta = doc.metadata or {}
    title, text = str(meta.get("title", "") or ""), doc.page_content
    d = {"id": str(meta.get("id", "") or ""), "contents": f"{title}\n{text}" if title else text,
         "title": title, "text": text}
    if meta.get("url"):
        d["url"] = meta["url"]
    return {"document": d, "score": meta.get("score")} if return_scores else d


def create_app(retriever: Any, max_queries: int = 512, max_topk: int = 100, name: str | None = None):
    """A FastAPI app serving ``retriever`` (a spec string or a retriever object)."""
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field

    from masksearch.retrieval.factory import make_retriever

    retriever = make_retriever(retriever) if isinstance(retriever, str) else retriever
    label = name or type(retriever).__name__

    class RetrieveRequest(BaseModel):
        queries: list[str] = Field(..., description="queries to run as one batch")
        topk: int = Field(3, description="documents per query")
        return_scores: bool = True

    app = FastAPI(title="masksearch retrieval server")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "retriever": label, "max_queries": max_queries, "max_topk": max_topk}

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest) -> dict[str, Any]:
        if len(req.queries) > max_queries:
            raise HTTPException(413, f"{len(req.queries)} queries in one request; this server takes at "
                                     f"most {max_queries} (split the batch)")
        if not 1 <= req.topk <= max_topk:
            raise HTTPException(422, f"topk must be between 1 and {max_topk}, got {req.topk}")
        if not req.queries:
            return {"result": []}
        try:
            if hasattr(retriever, "search_many"):
                results = retriever.search_many(req.queries, req.topk)
            else:
                results = [list(d)[:req.topk] for d in retriever.batch(req.queries)]
        except SearchError as e:
            raise HTTPException(502, str(e)) from e
        return {"result": [[_hit(d, req.return_scores) for d in docs] for docs in results]}

    app.state.retriever = retriever
    return app


def serve(retriever: Any, host: str = "127.0.0.1", port: int = 8000, max_queries: int = 512,
          log_level: str = "info") -> None:
    """Run the server in the foreground (``masksearch serve-retriever``)."""
    import uvicorn

    uvicorn.run(create_app(retriever, max_queries=max_queries), host=host, port=port, log_level=log_level)
