"""Client for the retrieval server (``masksearch serve-retriever``, or any Search-R1-style server).

``POST {url}/retrieve`` with ``{"queries": [...], "topk": k, "return_scores": true}``; the answer
is ``{"result": [[{"document": {"id", "contents", ...}, "score"}, ...], ...]}``.  ``contents`` is
``"title"\\ntext`` (Search-R1's convention); our server adds ``title`` and ``text`` too.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from langchain_core.documents import Document
from pydantic import PrivateAttr

from masksearch.retrieval.base import RemoteSearchError, SearchRetriever, fast_doc


def parse_document(doc: Any, score: float | None) -> Document:
    if isinstance(doc, str):
        doc = {"contents": doc}
    title, text = doc.get("title"), doc.get("text")
    if text is None:
        contents = str(doc.get("contents", ""))
        head, sep, body = contents.partition("\n")
        if sep:
            title, text = (title if title is not None else head.strip().strip('"')), body
        else:
            text = contents
    return fast_doc(str(doc.get("id", "")), str(title or ""), str(text or ""),
                    None if score is None else float(score))


class RemoteRetriever(SearchRetriever):
    """A retriever served over HTTP (``make_retriever("http://host:port")``)."""

    url: str
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    batch_size: int = 256

    _client: Any = PrivateAttr(default=None)
    _aclient: Any = PrivateAttr(default=None)

    def _endpoint(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/retrieve") else u + "/retrieve"

    def _parse(self, data: Any, n: int) -> list[list[Document]]:
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list) or len(result) != n:
            raise RemoteSearchError(f"{self._endpoint()} answered an unexpected shape (expected "
                                    f"{{'result': [...]}} with {n} lists)")
        out = []
        for hits in result:
            docs = []
            for h in hits:
                if isinstance(h, dict) and "document" in h:
                    docs.append(parse_document(h["document"], h.get("score")))
                else:
                    docs.append(parse_document(h, None))
            out.append(docs)
        return out

    def _error(self, e: Exception) -> RemoteSearchError:
        import httpx

        if isinstance(e, httpx.HTTPStatusError):
            try:
                detail = e.response.json().get("detail", e.response.text)
            except Exception:
                detail = e.response.text
            return RemoteSearchError(f"retrieval server {self.url} refused the request "
                                     f"(HTTP {e.response.status_code}: {detail})")
        if isinstance(e, httpx.TimeoutException):
            return RemoteSearchError(f"retrieval server {self.url} timed out after {self.timeout:g}s")
        return RemoteSearchError(f"cannot reach the retrieval server at {self.url} ({type(e).__name__}: "
                                 f"{e}); start it with `masksearch serve-retriever --retriever SPEC "
                                 f"--port N` or fix the URL")

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        import httpx

        k = self.k if k is None else k
        queries = list(queries)
        if not queries:
            return []
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        out: list[list[Document]] = []
        for i in range(0, len(queries), self.batch_size):
            chunk = queries[i:i + self.batch_size]
            body = {"queries": chunk, "topk": k, "return_scores": True}
            for attempt in range(self.retries + 1):
                try:
                    resp = self._client.post(self._endpoint(), json=body)
                    resp.raise_for_status()
                    out.extend(self._parse(resp.json(), len(chunk)))
                    break
                except (httpx.TransportError, httpx.HTTPStatusError) as e:
                    time.sleep(self._retry_delay(e, attempt))
        return out

    def _retry_delay(self, e: Exception, attempt: int) -> float:
        """Backoff before the next try; raises the clear error when retrying cannot help (a 4xx
        refusal) or the retries are spent."""
        import httpx

        client_error = isinstance(e, httpx.HTTPStatusError) and 400 <= e.response.status_code < 500
        if client_error or attempt == self.retries:
            raise self._error(e) from e
        return self.backoff * (2 ** attempt)

    async def asearch_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        import asyncio

        import httpx

        k = self.k if k is None else k
        queries = list(queries)
        if not queries:
            return []
        out: list[list[Document]] = []
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for i in range(0, len(queries), self.batch_size):
                chunk = queries[i:i + self.batch_size]
                body = {"queries": chunk, "topk": k, "return_scores": True}
                for attempt in range(self.retries + 1):
                    try:
                        resp = await client.post(self._endpoint(), json=body)
                        resp.raise_for_status()
                        out.extend(self._parse(resp.json(), len(chunk)))
                        break
                    except (httpx.TransportError, httpx.HTTPStatusError) as e:
                        await asyncio.sleep(self._retry_delay(e, attempt))
        return out

    def health(self) -> dict[str, Any]:
        import httpx

        try:
            r = httpx.get(self.url.rstrip("/").removesuffix("/retrieve") + "/health", timeout=self.timeout)
            r.raise_for_status()
            return r.json()
        except Exception as e:
            raise self._error(e) from e
