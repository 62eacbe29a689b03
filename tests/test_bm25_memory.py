"""Serving memory of the BM25 retriever stays bounded: passages are read through the page cache,
not mapped into (or copied into) the process."""

from __future__ import annotations

import random
import sys

import pytest

from masksearch.retrieval import build_index, make_retriever


def _rss_file_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_every_passage_does_not_grow_resident_memory(tmp_path):
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    passages = [{"id": f"p{i}", "title": f"T{i}", "text": " ".join(rng.choices(vocab, k=700))}
                for i in range(4000)]  # a ~16 MB store
    build_index(passages, kind="bm25", out=str(tmp_path / "idx"), progress=False, chunk_words=0)
    r = make_retriever(f"bm25:{tmp_path / 'idx'}", k=10)
    store_mb = (tmp_path / "idx" / "store.jsonl").stat().st_size / 2**20
    assert store_mb > 12
    before = _rss_file_mb()
    for row in range(len(r)):
        assert r.passage(row).id == f"p{row}"
    hits = r.search_many([" ".join(rng.choices(vocab, k=8)) for _ in range(300)], 10)
    assert all(len(h) == 10 for h in hits)
    grown = _rss_file_mb() - before
    # a memory-mapped store would now have all of it resident (file-backed RSS ~ store_mb)
    assert grown < store_mb / 4, (grown, store_mb)
