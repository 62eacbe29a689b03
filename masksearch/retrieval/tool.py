"""The search tool: the ONE place that formats retrieved documents for a model.

- :func:`format_documents` -> ``Doc 1 (Title: T) text`` lines, deduplicated, cut to a token budget;
- :func:`search_with_retry` / :func:`asearch_with_retry` -> batched search with retries, raising
  :class:`SearchError` with a message an agent can read;
- :func:`make_search_tool` -> a LangChain tool over any retriever.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Sequence

from masksearch.retrieval.base import SearchError

NO_RESULTS = "No results found."


def _fields(doc: Any) -> tuple[str, str, str]:
    """(id, title, text) of a LangChain Document, a masksearch Document, a Passage or a dict."""
    if isinstance(doc, dict):
        meta = doc.get("metadata") or {}
        text = doc.get("text", doc.get("page_content", doc.get("contents", "")))
        return (str(doc.get("id", meta.get("id", "")) or ""), str(doc.get("title", meta.get("title", "")) or ""),
                str(text or ""))
    if hasattr(doc, "page_content"):
        meta = getattr(doc, "metadata", None) or {}
        pid = meta.get("id") or getattr(doc, "id", None) or ""
        return str(pid), str(meta.get("title", "") or ""), doc.page_content or ""
    return (str(getattr(doc, "id", "") or ""), str(getattr(doc, "title", "") or ""),
            str(getattr(doc, "text", "") or ""))


def _counter(tokenizer: Any) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda s: len(s.split())
    if callable(getattr(tokenizer, "encode", None)):
        def count(s: str) -> int:
            try:
                return len(tokenizer.encode(s, add_special_tokens=False))
            except TypeError:
                return len(tokenizer.encode(s))
        return count
    return lambda s: len(tokenizer(s))


def _cut(head: str, text: str, budget: int, count: Callable[[str], int]) -> str:
    """``head`` plus the longest prefix of ``text`` (whole words, then ``...``) within ``budget``
    tokens; ``""`` when not even one word fits."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the word count
        mid = (lo + hi + 1) // 2
        if count(f"{head} {' '.join(words[:mid])} ...") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return f"{head} {' '.join(words[:lo])} ..." if lo else ""


def format_documents(docs: Sequence[Any], max_tokens: int | None = 512, tokenizer: Any = None,
                     empty: str = NO_RESULTS) -> str:
    """Format retrieved documents for a model: one ``Doc i (Title: T) text`` line each.

    Documents are deduplicated by id (or by text when they have none), numbered from 1 in the
    order given, and the whole block is cut to ``max_tokens`` tokens: whitespace words, or the
    ``tokenizer``'s tokens when one is given.  The last document that does not fit is truncated
    (ending in ``...``); the ones after it are dropped.  ``docs`` may be LangChain Documents,
    ``masksearch.trajectory.Document``s, ``Passage``s or dicts, or a list of such lists (one per
    query), which is flattened.  No documents -> ``empty``.
    """
    flat: list[Any] = []
    for d in docs or []:
        if isinstance(d, (list, tuple)):
            flat.extend(d)
        else:
            flat.append(d)
    count = _counter(tokenizer)
    sep = 1 if tokenizer is not None else 0  # a newline costs a token, not a whitespace word
    seen: set[str] = set()
    lines: list[str] = []
    used = 0
    for d in flat:
        pid, title, text = _fields(d)
        text = " ".join(text.split())
        key = f"id:{pid}" if pid else f"text:{text}"
        if key in seen:
            continue
        seen.add(key)
        head = f"Doc {len(lines) + 1} (Title: {title})"
        line = f"{head} {text}".rstrip()
        if max_tokens is None:
            lines.append(line)
            continue
        cost = count(line) + (sep if lines else 0)
        if used + cost <= max_tokens:
            lines.append(line)
            used += cost
            continue
        room = max_tokens - used - (sep if lines else 0)
        cut = _cut(head, text, room, count) if room > 0 else ""
        if cut:
            lines.append(cut)
        break
    return "\n".join(lines) if lines else empty


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


def search_with_retry(retriever: Any, queries: str | Sequence[str], k: int = 3, retries: int = 2,
                      backoff: float = 0.5) -> list[list[Any]]:
    """``retriever.search_many(queries, k)`` (or ``invoke`` per query for a plain LangChain
    retriever), retried ``retries`` times with exponential backoff.  Returns one list of
    documents per query; raises :class:`SearchError` naming the cause when every attempt failed.
    """
    qs = _queries(queries)
    if not qs:
        return []
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            return _run(retriever, qs, k)
        except Exception as e:  # noqa: BLE001 - every failure becomes a readable SearchError
            last = e
            if attempt < retries:
                time.sleep(backoff * (2 ** attempt))
    raise SearchError(f"search failed after {retries + 1} attempts: {_describe(last)}") from last


async def asearch_with_retry(retriever: Any, queries: str | Sequence[str], k: int = 3,
                             retries: int = 2, backoff: float = 0.5) -> list[list[Any]]:
    """Async twin of :func:`search_with_retry`."""
    qs = _queries(queries)
    if not qs:
        return []
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            return await _arun(retriever, qs, k)
        except Exception as e:  # noqa: BLE001
            last = e
            if attempt < retries:
                await asyncio.sleep(backoff * (2 ** attempt))
    raise SearchError(f"search failed after {retries + 1} attempts: {_describe(last)}") from last


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
