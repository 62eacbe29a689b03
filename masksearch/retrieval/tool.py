"""The search tool.

- :func:`format_documents` (defined in :mod:`masksearch.protocol`, the environment's half of the
  protocol; re-exported here) -> ``Doc 1 (Title: T) text`` lines, deduplicated, cut to a token budget;
- :func:`search_with_retry` / :func:`asearch_with_retry` -> batched search with retries, raising
  :class:`SearchError` with a message an agent can read;
- :func:`make_search_tool` -> a LangChain tool over any retriever.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Sequence

from masksearch.protocol import NO_RESULTS, format_documents
from masksearch.retrieval.base import SearchError

def _describe(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if isinstance(e, SearchError) else f"{type(e).__name__}: {msg}"


def _run(retriever: Any, queries: list[str], k: int) -> list[list[Any]]:
    if hasattr(retriever, "search_many"):
        return retriever.search_many(queries, k)
    return [list(retriever.invoke(q))[:k] for q in queries]


async def _arun(retriever: Any, queries: list[str], k: int) -> list[list[Any]]:
    if hasattr(retriever, "asearch_many"):
        return await retriever.asearch_many(queries, k)
    if hasattr(retriever, "search_many"):
        return await asyncio.to_thread(retriever.search_many, queries, k)
    res = await asyncio.gather(*(retriever.ainvoke(q) for q in queries))
    return [list(r)[:k] for r in res]


def _queries(queries: str | Sequence[str]) -> list[str]:
    qs = [queries] if isinstance(queries, str) else list(queries)
    return [str(q) for q in qs]


async def _with_retries(attempt: Callable[[], Awaitable[Any]], pause: Callable[[float], Awaitable[Any]],
                        retries: int, backoff: float) -> Any:
    """The one retry decision: ``retries + 1`` attempts, exponential backoff between them, then a
    :class:`SearchError` naming the last cause."""
    last: BaseException | None = None
    for n in range(retries + 1):
        try:
            return await attempt()
        except Exception as e:  # noqa: BLE001 - every failure becomes a readable SearchError
            last = e
            if n < retries:
                await pause(backoff * (2 ** n))
    raise SearchError(f"search failed after {retries + 1} attempts: {_describe(last)}") from last


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (its awaits are plain calls) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a synchronous search suspended")  # pragma: no cover - a bug, not input


def search_with_retry(retriever: Any, queries: str | Sequence[str], k: int = 3, retries: int = 2,
                      backoff: float = 0.5) -> list[list[Any]]:
    """``retriever.search_many(queries, k)`` (or ``invoke`` per query for a plain LangChain
    retriever), retried ``retries`` times with exponential backoff.  Returns one list of
    documents per query; raises :class:`SearchError` naming the cause when every attempt failed.
    """
    qs = _queries(queries)
    if not qs:
        return []

    async def attempt() -> list[list[Any]]:
        return _run(retriever, qs, k)

    async def pause(seconds: float) -> None:
        time.sleep(seconds)

    return _drive(_with_retries(attempt, pause, retries, backoff))


async def asearch_with_retry(retriever: Any, queries: str | Sequence[str], k: int = 3,
                             retries: int = 2, backoff: float = 0.5) -> list[list[Any]]:
    """Async twin of :func:`search_with_retry`."""
    qs = _queries(queries)
    if not qs:
        return []
    return await _with_retries(lambda: _arun(retriever, qs, k), asyncio.sleep, retries, backoff)


def make_search_tool(retriever: Any, k: int = 3, max_tokens: int = 512, retries: int = 2,
                     name: str = "search", tokenizer: Any = None):
    """A LangChain tool ``search(query) -> formatted documents`` over ``retriever``.

    A failed search returns ``"Search failed: ..."`` as the tool's output (the agent sees it and
    can go on) instead of raising.
    """
    from langchain_core.tools import StructuredTool

    def search(query: str) -> str:
        try:
            docs = search_with_retry(retriever, [query], k=k, retries=retries)[0]
        except SearchError as e:
            return f"Search failed: {e}"
        return format_documents(docs, max_tokens=max_tokens, tokenizer=tokenizer)

    async def asearch(query: str) -> str:
        try:
            docs = (await asearch_with_retry(retriever, [query], k=k, retries=retries))[0]
        except SearchError as e:
            return f"Search failed: {e}"
        return format_documents(docs, max_tokens=max_tokens, tokenizer=tokenizer)

    return StructuredTool.from_function(
        func=search, coroutine=asearch, name=name,
        description=(f"Search the knowledge source and return the top {k} passages as "
                     "'Doc i (Title: ...) text' lines. Input: a short keyword query."))


__all__ = ["format_documents", "search_with_retry", "asearch_with_retry", "make_search_tool",
           "SearchError", "NO_RESULTS"]
