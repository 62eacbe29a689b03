"""Web search: DuckDuckGo through ``ddgs``, backend pinned to DuckDuckGo's HTML endpoint.

``ddgs.DDGS`` with ``backend="auto"`` mixes other engines and hides the HTTP status (a rate limit
looks like "no results"), so we drive ddgs's DuckDuckGo engine directly: its request building and
HTML parsing, our status handling, timeouts, and retries with exponential backoff (and jitter) on
rate limits (HTTP 202/403/429) and timeouts.  ``base_url`` (or ``$MASKSEARCH_DDG_URL``) points it
at another host: tests use a stand-in on 127.0.0.1.  When every attempt fails the search raises
:class:`SearchError` with a message the agent can read.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from langchain_core.documents import Document

from masksearch.retrieval.base import RemoteSearchError, SearchRetriever, fast_doc

DEFAULT_BASE_URL = "https://html.duckduckgo.com"
RATE_LIMIT_STATUSES = (202, 403, 429)


class RateLimited(Exception):
    pass


def _engine(base_url: str, timeout: float):
    from ddgs.engines.duckduckgo import Duckduckgo
    from ddgs.exceptions import DDGSException

    class _PinnedDuckduckgo(Duckduckgo):
        search_url = base_url.rstrip("/") + "/html/"

        def request(self, *args: Any, **kwargs: Any) -> Any:
            resp = self.http_client.request(*args, **kwargs)
            if resp.status_code == 200:
                return resp.text
            if resp.status_code in RATE_LIMIT_STATUSES:
                raise RateLimited(f"HTTP {resp.status_code}")
            raise DDGSException(f"HTTP {resp.status_code}")

    return _PinnedDuckduckgo(timeout=timeout)


class DDGRetriever(SearchRetriever):
    """DuckDuckGo web search (``make_retriever("ddg")``).

    Documents: ``page_content`` = the result snippet, ``title``, ``id`` = a hash of the URL, and
    the URL under ``metadata["url"]``; ``score`` = 1/rank.
    """

    base_url: str = ""
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 20.0
    region: str = "us-en"
    concurrency: int = 2

    def _base(self) -> str:
        return self.base_url or os.environ.get("MASKSEARCH_DDG_URL") or DEFAULT_BASE_URL

    def _search(self, query: str, k: int) -> list[Document]:
        from ddgs.exceptions import DDGSException, TimeoutException

        if not query.strip() or k <= 0:
            return []
        base = self._base()
        last = ""
        for attempt in range(self.retries + 1):
            try:
                results = _engine(base, self.timeout).search(query, region=self.region) or []
                docs = []
                for r in results[:k]:
                    url = getattr(r, "href", "") or ""
                    pid = "web-" + hashlib.sha1((url or r.body).encode("utf-8")).hexdigest()[:16]
                    d = fast_doc(pid, getattr(r, "title", "") or "", getattr(r, "body", "") or "",
                                 1.0 / (len(docs) + 1))
                    d.metadata["url"] = url
                    docs.append(d)
                return docs
            except RateLimited as e:
                last = f"rate limited by DuckDuckGo ({e})"
            except TimeoutException as e:
                last = f"timed out after {self.timeout:g}s ({e})"
            except DDGSException as e:
                last = f"request failed ({e})"
                if "HTTP 4" in str(e):
                    break  # a client error will not get better by retrying
            if attempt < self.retries:
                delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                time.sleep(delay * (0.5 + random.random() / 2))
        raise RemoteSearchError(f"web search for {query!r} failed after {attempt + 1} attempt(s): "
                                f"{last}. Wait and retry, or search a local index (bm25:DIR).")

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        k = self.k if k is None else k
        queries = list(queries)
        if len(queries) <= 1 or self.concurrency <= 1:
            return [self._search(q, k) for q in queries]
        with ThreadPoolExecutor(min(self.concurrency, len(queries))) as ex:
            return list(ex.map(lambda q: self._search(q, k), queries))


