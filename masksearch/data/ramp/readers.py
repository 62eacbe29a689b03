"""Readers of RAMP files: :func:`load_ramp` (a ``datasets.Dataset``), :func:`curriculum` (order /
buckets by mask count), :func:`solvability_report` (is the source passage in the top-k of a search
for the masked passage?).  Every record also loads through :func:`masksearch.data.qa.qa_from_record`.
"""

from __future__ import annotations

import os
import random
from typing import Any

from masksearch.data.ramp.common import RECORD_FIELDS, RampError
from masksearch.errors import UnknownSpecError
from masksearch.protocol import MASK_TOKEN
from masksearch.utils.jsonl import ReadStats, iter_jsonl


def _records(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, (str, os.PathLike)):
        return list(iter_jsonl(data, required=("id", "question", "answers", "mask_count")))
    if hasattr(data, "to_list"):  # datasets.Dataset
        return data.to_list()
    return [dict(r) for r in data]


def load_ramp(path: str | os.PathLike, stats: ReadStats | None = None) -> Any:
    """A RAMP JSONL file as a ``datasets.Dataset`` (bad lines counted in ``stats`` and skipped)."""
    import datasets

    if not os.path.exists(path):
        raise RampError(f"RAMP file not found: {path} (make one with: masksearch ramp --corpus ... --out {path})")
    rows = list(iter_jsonl(path, stats=stats, required=("id", "question", "answers", "mask_count")))
    if not rows:
        return datasets.Dataset.from_dict({k: [] for k in RECORD_FIELDS})
    for r in rows:
        r.setdefault("spans", [])
        r["spans"] = [{"text": str(s.get("text", "")), "start": int(s.get("start", -1)), "end": int(s.get("end", -1)),
                       "kind": str(s.get("kind", "")), "nll": float(s["nll"]) if s.get("nll") is not None else None}
                      for s in r["spans"] if isinstance(s, dict)]
    return datasets.Dataset.from_list(rows)


def curriculum(data: Any, mode: str = "order", seed: int | None = None, max_masks: int | None = None) -> Any:
    """Order or bucket RAMP examples by mask count (easy -> hard).

    ``mode="order"``: all examples, mask count ascending (shuffled within a count when ``seed`` is
    given, else file order); ``mode="buckets"``: ``{mask_count: examples}``.  ``data`` is a path, a
    list of records or a ``datasets.Dataset``; a Dataset comes back as Dataset(s), else lists.
    """
    if mode not in ("order", "buckets"):
        raise UnknownSpecError(f"unknown curriculum mode {mode!r}; use 'order' or 'buckets'")
    is_ds = hasattr(data, "select") and hasattr(data, "column_names")
    if is_ds:
        counts = [int(c) for c in data["mask_count"]]
        rows = None
    else:
        rows = _records(data)
        counts = [int(r.get("mask_count") or 1) for r in rows]
    buckets: dict[int, list[int]] = {}
    for i, c in enumerate(counts):
        if max_masks is None or c <= max_masks:
            buckets.setdefault(c, []).append(i)
    rng = random.Random(seed) if seed is not None else None
    for idx in buckets.values():
        if rng is not None:
            rng.shuffle(idx)
    keys = sorted(buckets)
    if mode == "order":
        order = [i for k in keys for i in buckets[k]]
        return data.select(order) if is_ds else [rows[i] for i in order]
    return {k: (data.select(buckets[k]) if is_ds else [rows[i] for i in buckets[k]]) for k in keys}


def _search_many(retriever: Any, queries: list[str], k: int) -> list[list[Any]]:
    if hasattr(retriever, "search_many"):
        return retriever.search_many(queries, k)
    return [retriever.invoke(q)[:k] for q in queries]


def _doc_id(doc: Any) -> str:
    meta = getattr(doc, "metadata", None)
    if isinstance(meta, dict) and "id" in meta:
        return str(meta["id"])
    return str(getattr(doc, "id", ""))


def _same_passage(doc_id: str, passage_id: str) -> bool:
    return doc_id == passage_id


def solvability_report(ramp: Any, retriever: Any, k: int = 5, limit: int | None = None,
                       batch_size: int = 256, query_words: int | None = None) -> dict[str, Any]:
    """Is the source passage in the top-``k`` of a search for the masked passage?

    ``ramp``: a RAMP path, records or Dataset; ``retriever``: a spec (``"bm25:DIR"``) or any
    retriever (``search_many`` used when present).  The query is the masked passage with the
    ``[mask]`` tokens removed (only its first ``query_words`` words when given: a stricter test,
    since the whole masked passage nearly always finds itself).  Returns ``{n, solvable, rate, by_mask_count: {k: {n, solvable, rate}}}``.
    """
    if isinstance(retriever, str):
        from masksearch.retrieval import make_retriever

        retriever = make_retriever(retriever, k=k)
    rows = _records(ramp)[:limit] if limit else _records(ramp)
    per: dict[int, list[int]] = {}
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        queries = [" ".join(str(r.get("masked_passage") or r["question"]).replace(MASK_TOKEN, " ").split()[:query_words])
                   for r in chunk]
        results = _search_many(retriever, queries, k)
        for r, docs in zip(chunk, results):
            hit = any(_same_passage(_doc_id(d), str(r.get("passage_id"))) for d in docs[:k])
            mc = int(r.get("mask_count") or 1)
            per.setdefault(mc, [0, 0])
            per[mc][0] += 1
            per[mc][1] += int(hit)
    n = sum(v[0] for v in per.values())
    s = sum(v[1] for v in per.values())
    return {
        "k": k, "n": n, "solvable": s, "rate": round(s / n, 4) if n else None,
        "by_mask_count": {m: {"n": v[0], "solvable": v[1], "rate": round(v[1] / v[0], 4)} for m, v in sorted(per.items())},
    }
