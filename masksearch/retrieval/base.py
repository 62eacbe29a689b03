"""What every retriever of ours shares: a ``k`` field, a batched ``search_many`` and the errors.

Subclasses implement :meth:`SearchRetriever.search_many`; the LangChain API (``invoke``,
``ainvoke``, ``batch``, ``abatch``) is derived from it.  Documents are LangChain ``Document``s with
``metadata = {"id", "title", "score"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Sequence

from langchain_core.callbacks import (AsyncCallbackManagerForRetrieverRun,
                                      CallbackManagerForRetrieverRun)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from masksearch.errors import EndpointError, MaskSearchError

MANIFEST = "manifest.json"
INDEX_FORMAT = 1


class SearchError(MaskSearchError):
    """A search failed; the message is written for the agent (and the user) to read."""


class RemoteSearchError(SearchError, EndpointError):
    """A search endpoint (retrieval server, web engine) could not be reached or refused."""


class IndexCorruptError(MaskSearchError):
    """An index folder is missing, half-written or corrupt; the message names the rebuild command."""


def make_doc(pid: str, title: str, text: str, score: float | None) -> Document:
    return Document(page_content=text, metadata={"id": pid, "title": title, "score": score})


def fast_doc(pid: str, title: str, text: str, score: float | None) -> Document:
    """``make_doc`` without pydantic validation (30 us a document; the fields are known good)."""
    return Document.model_construct(page_content=text, type="Document", id=None,
                                    metadata={"id": pid, "title": title, "score": score})


class SearchRetriever(BaseRetriever):
    """Base of our retrievers: ``k`` plus ``search_many(queries, k)``, the batch fast path."""

    k: int = 5

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        raise NotImplementedError

    async def asearch_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        return await asyncio.to_thread(self.search_many, list(queries), k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, **_: Any) -> list[Document]:
        return self.search_many([query], k or self.k)[0]

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None, **_: Any) -> list[Document]:
        return (await self.asearch_many([query], k or self.k))[0]


# ---------------------------------------------------------------------------- index folders

def rebuild_hint(kind: str, out: str | os.PathLike, corpus: str | None = None) -> str:
    return (f"rebuild it with: masksearch index --corpus {corpus or 'PATH'} --kind {kind} "
            f"--out {out}")


def read_manifest(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Load and check ``DIR/manifest.json``; raise :class:`IndexCorruptError` naming the fix."""
    path = Path(path)
    k = kind or "bm25"
    if not path.exists():
        raise IndexCorruptError(f"no index at {path}: {rebuild_hint(k, path)}")
    if not path.is_dir():
        raise IndexCorruptError(f"{path} is a file, not an index folder: {rebuild_hint(k, path)}")
    mf = path / MANIFEST
    if not mf.exists():
        raise IndexCorruptError(f"{path} is not a complete masksearch index (no {MANIFEST}; a build "
                                f"was interrupted or this is another folder): {rebuild_hint(k, path)}")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        assert isinstance(manifest, dict) and "kind" in manifest
    except Exception:
        raise IndexCorruptError(f"{path}/{MANIFEST} is corrupt: {rebuild_hint(k, path)}") from None
    if kind and manifest["kind"] != kind:
        raise IndexCorruptError(f"{path} holds a {manifest['kind']!r} index, not {kind!r}: use "
                                f"'{manifest['kind']}:{path}' or {rebuild_hint(kind, path)}")
    if not manifest.get("complete", False):
        raise IndexCorruptError(f"{path} was not finished: "
                                f"{rebuild_hint(manifest['kind'], path, manifest.get('corpus'))}")
    return manifest


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (temp file + rename)."""
    path = Path(path)
    tmp = path / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path / MANIFEST)
