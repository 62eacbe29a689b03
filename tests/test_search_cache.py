"""The persistent search cache: keys, modes, replay with the index deleted, two writer processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import sqlite3

import pytest
from langchain_core.documents import Document

from masksearch.retrieval import build_index, make_retriever
from masksearch.retrieval.base import SearchRetriever
from masksearch.retrieval.cache import (CachedRetriever, SearchCacheError, SearchCacheMiss, cache_stats,
                                        fingerprint, normalise_query, reset_stats)

PASSAGES = [
    {"id": "p-paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "p-berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
    {"id": "p-madrid", "title": "Madrid", "text": "Madrid is the capital of Spain."},
    {"id": "p-rome", "title": "Rome", "text": "Rome is the capital of Italy."},
    {"id": "p-lisbon", "title": "Lisbon", "text": "Lisbon is the capital of Portugal, on the Tagus."},
]


@pytest.fixture(autouse=True)
def _fresh_stats():
    reset_stats()
    yield
    reset_stats()


@pytest.fixture
def index(tmp_path):
    out = tmp_path / "idx"
    build_index(PASSAGES, kind="bm25", out=str(out), progress=False)
    return out


class CountingRetriever(SearchRetriever):
    """Answers ``[query text, k]`` as one document; counts the queries it was asked."""

    asked: int = 0
    tag: str = "v1"

    def search_many(self, queries, k=None):
        k = self.k if k is None else k
        self.asked += len(queries)
        return [[Document(page_content=f"{self.tag}:{q}", metadata={"id": q, "title": "", "score": 1.0})] * k
                for q in queries]


def test_hits_misses_normalisation_and_k(tmp_path):
    inner = CountingRetriever(k=2)
    r = CachedRetriever(path=str(tmp_path / "c.sqlite"), inner=inner, k=2)
    first = r.search_many(["Capital of France", "capital of Spain"])
    assert inner.asked == 2
    # case and whitespace differences hit; a different k is another key
    again = r.search_many(["  CAPITAL   of france ", "capital of Spain", "capital of Spain"])
    assert inner.asked == 2
    assert [d.page_content for d in again[0]] == [d.page_content for d in first[0]]
    assert again[1] == again[2] and len(again[1]) == 2
    r.search_many(["capital of Spain"], k=3)
    assert inner.asked == 3
    # duplicates inside a batch of misses are searched once
    r.search_many(["new query", "NEW query"])
    assert inner.asked == 4
    st = next(iter(cache_stats().values()))
    assert (st["hits"], st["misses"]) == (4, 4) and st["lookups"] == 8
    assert st["saved_s"] >= 0 and st["hit_rate"] == 0.5
    # the LangChain face goes through the cache too
    assert r.invoke("capital of france")[0].page_content == "v1:Capital of France"
    assert normalise_query(" Ｐａｒｉｓ\tIS ") == "paris is"


def test_fingerprint_separates_retrievers(tmp_path, index):
    path = str(tmp_path / "c.sqlite")
    a = CachedRetriever(path=path, inner=CountingRetriever(tag="a"))
    b = CachedRetriever(path=path, inner=CountingRetriever(tag="b"))
    # same class, different fields -> different answers are kept apart
    assert a.search_many(["q"])[0][0].page_content == "a:q"
    assert b.search_many(["q"])[0][0].page_content == "b:q"
    bm = make_retriever(f"bm25:{index}")
    assert fingerprint(bm).startswith("bm25:")
    assert fingerprint(make_retriever("http://127.0.0.1:9/")) == "remote:http://127.0.0.1:9"
    us, de = make_retriever("ddg", region="us-en"), make_retriever("ddg", region="de-de")
    assert fingerprint(us) != fingerprint(de) and "us-en" in fingerprint(us)
    # a rebuilt index (other passages) is another fingerprint
    other = tmp_path / "idx2"
    build_index(PASSAGES[:3], kind="bm25", out=str(other), progress=False)
    assert fingerprint(make_retriever(f"bm25:{other}")) != fingerprint(bm)


def test_read_only_miss_is_a_clear_error(tmp_path, index):
    path = tmp_path / "c.sqlite"
    with pytest.raises(SearchCacheError, match="no search cache at"):
        make_retriever(f"bm25:{index}", search_cache=f"{path}@read-only")
    rw = make_retriever(f"cache:{path}|bm25:{index}", k=2)
    assert isinstance(rw, CachedRetriever)
    docs = rw.search_many(["capital of Germany"])[0]
    assert docs[0].metadata["id"] == "p-berlin"
    ro = make_retriever(f"bm25:{index}", k=2, search_cache=f"{path}@ro")
    assert ro.search_many(["Capital of GERMANY"])[0][0].metadata == docs[0].metadata
    with pytest.raises(SearchCacheMiss, match="has no answer for 'capital of Italy'.*read-write"):
        ro.search_many(["capital of Germany", "capital of Italy"])
    # mode off: the retriever itself
    assert type(make_retriever(f"bm25:{index}", search_cache=f"{path}@off")).__name__ == "BM25Retriever"


def _writer(path, worker, barrier, queue):
    try:
        reset_stats()
        inner = CountingRetriever(k=1)
        r = CachedRetriever(path=path, inner=inner, k=1)
        barrier.wait()
        qs = [f"query {i}" for i in range(worker * 150, worker * 150 + 300)]  # 150 shared with the other
        for i in range(0, len(qs), 7):
            got = r.search_many(qs[i:i + 7])
            assert [g[0].page_content for g in got] == [f"v1:{q}" for q in qs[i:i + 7]]
        queue.put(("ok", inner.asked))
    except BaseException as e:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(e)))


def test_two_processes_write_one_file_concurrently(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    CachedRetriever(path=path, inner=CountingRetriever(k=1), k=1)  # create the file
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, w, barrier, queue)) for w in (0, 1)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(status == "ok" for status, _ in results), results
    assert sum(asked for _, asked in results) >= 450  # every key searched by at least one process
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT query, docs FROM search").fetchall()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(rows) == 450 and len({q for q, _ in rows}) == 450  # union, no duplicates
    assert all(json.loads(d)[0][0] == f"v1:{q}" for q, d in rows)


def test_eval_replays_with_the_index_deleted(tmp_path, index, monkeypatch, capsys):
    """A whole evaluation, recorded through the cache, answered again with the index folder gone."""
    from masksearch.cli import main
    import masksearch.eval.runner as runner
    from test_eval_runner import ScriptedModel

    monkeypatch.setattr(runner, "_resolve_model", lambda m: ScriptedModel())
    q = tmp_path / "capitals.jsonl"
    q.write_text("".join(json.dumps({"id": f"c{i}", "question": f"What is the capital of {c}?",
                                     "golden_answers": [a]}) + "\n"
                         for i, (c, a) in enumerate([("France", "Paris"), ("Germany", "Berlin"),
                                                     ("Spain", "Madrid"), ("Portugal", "Lisbon")])))
    cache = tmp_path / "search.sqlite"
    args = ["eval", "--method", "rag-pe", "--model", "scripted", "--data", str(q), "--no-progress",
            "--search-cache", str(cache)]
    assert main([*args, "--retriever", f"bm25:{index}", "--out", str(tmp_path / "rec")]) == 0
    err = capsys.readouterr().err
    assert "0/4 hits" in err
    shutil.rmtree(index)
    reset_stats()
    assert main([*args, "--search-cache-mode", "read-only", "--retriever", f"bm25:{index}",
                 "--out", str(tmp_path / "replay")]) == 0
    err = capsys.readouterr().err
    assert "4/4 hits (100.0 %)" in err

    def preds(run):
        recs = [json.loads(line) for line in open(tmp_path / run / "capitals" / "predictions.jsonl")]
        return sorted((r["id"], r["prediction"], json.dumps(r["trajectory"]["steps"][0]["documents"]))
                      for r in recs)

    assert preds("rec") == preds("replay")
    assert sum(p == "Paris" or p == "Berlin" or p == "Madrid" for _, p, _ in preds("replay")) == 3
    # a question the recording never searched: one clear error, not a silent search
    q.write_text(json.dumps({"id": "x", "question": "What is the capital of Italy?",
                             "golden_answers": ["Rome"]}) + "\n")
    reset_stats()
    main([*args, "--search-cache-mode", "read-only", "--retriever", f"bm25:{index}",
          "--out", str(tmp_path / "miss")])
    out = capsys.readouterr()
    assert "has no answer for 'What is the capital of Italy?'" in out.out and "failed=1" in out.out
    assert "0/3 hits" in out.err  # the runner's search_with_retry asked three times


def test_cot_replays_with_the_index_deleted(tmp_path, capsys):
    """``cot --teacher provenance`` recorded, then replayed read-only with the index folder gone."""
    from test_export import RAMP

    from masksearch.cli import main

    idx = tmp_path / "idx"
    passages = PASSAGES + [{"id": f"r-{r['id']}", "title": "", "text": r["masked_passage"].replace("[mask]", a)}
                           for r in RAMP for a in r["answers"][:1]]
    build_index(passages, kind="bm25", out=str(idx), progress=False)
    inp = tmp_path / "ramp.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in RAMP))
    cache = tmp_path / "c.sqlite"
    base = ["cot", "--teacher", "provenance", "--input", str(inp), "--retriever", f"bm25:{idx}",
            "--search-cache", str(cache), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "rec")]) == 0
    assert " 0/" in capsys.readouterr().err
    n = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM search").fetchone()[0]
    assert n >= len(RAMP)
    shutil.rmtree(idx)
    reset_stats()
    assert main([*base, "--search-cache-mode", "read-only", "--out", str(tmp_path / "replay")]) == 0
    assert "(100.0 %)" in capsys.readouterr().err

    def runs(name):
        recs = [json.loads(x) for x in (tmp_path / name / "trajectories.jsonl").read_text().splitlines()]
        for r in recs:
            for key in ("created_at", "wall_s", "timings", "elapsed_s"):
                r.pop(key, None)
                r.get("metadata", {}).pop(key, None)
        return sorted(json.dumps(r["steps"], sort_keys=True) for r in recs)

    assert runs("rec") == runs("replay")
