"""Corpus readers, BM25 on disk, make_retriever and the search tool (offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from langchain_core.documents import Document as LCDocument

from masksearch.errors import MaskSearchError, UnknownSpecError
from masksearch.retrieval import (IndexCorruptError, Passage, SearchError, build_index, chunk_text,
                                  make_retriever, parent_id, read_corpus)
from masksearch.retrieval.tool import format_documents, make_search_tool, search_with_retry
from masksearch.trajectory import Document as TDoc
from masksearch.utils.jsonl import ReadStats

PASSAGES = [
    {"id": "p1", "title": "Shirley Temple", "text": "Shirley Temple was an American actress and diplomat, "
     "United States ambassador to Ghana and Chief of Protocol."},
    {"id": "p2", "title": "Kiss and Tell (1945 film)", "text": "Kiss and Tell is a 1945 comedy film "
     "starring Shirley Temple as Corliss Archer."},
    {"id": "p3", "title": "Photosynthesis", "text": "Photosynthesis converts light energy into chemical "
     "energy in plants and algae."},
    {"id": "p4", "title": "Mount Everest", "text": "Mount Everest is the highest mountain above sea level, "
     "in the Himalayas on the border of Nepal and China."},
]


def write_jsonl(path: Path, recs, extra_lines=()) -> Path:
    with open(path, "wb") as f:
        for r in recs:
            f.write((json.dumps(r) + "\n").encode())
        for line in extra_lines:
            f.write(line)
    return path


@pytest.fixture()
def small_corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "c.jsonl", PASSAGES)


@pytest.fixture()
def small_bm25(small_corpus, tmp_path) -> Path:
    out = tmp_path / "idx"
    build_index(str(small_corpus), kind="bm25", out=str(out), progress=False)
    return out


# ---------------------------------------------------------------------------- readers

def test_jsonl_reader_skips_and_counts_bad_lines(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", PASSAGES[:2], extra_lines=[
        b"{not json\n", b"\xff\xfe bad bytes\n", b'{"id": "x", "title": "t"}\n',
        b'{"id": "e", "title": "t", "text": "   "}\n', b"[1, 2]\n", b"\n"])
    stats = ReadStats()
    got = list(read_corpus(p, stats=stats))
    assert [g.id for g in got] == ["p1", "p2"]
    assert got[0].title == "Shirley Temple" and got[0].text.startswith("Shirley Temple was")
    assert stats.read == 2
    assert dict(stats.skipped) == {"invalid_json": 1, "undecodable": 1, "missing_field": 1,
                                   "empty_text": 1, "not_an_object": 1}
    assert "5 skipped" in stats.summary()


def test_flashrag_reader(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [
        {"id": "0", "contents": '"Paris"\nParis is the capital of France.'},
        {"id": "1", "contents": "Berlin\nBerlin is the capital of Germany."},
        {"id": "2"}])
    stats = ReadStats()
    got = list(read_corpus(p, stats=stats))
    assert got == [Passage("0", "Paris", "Paris is the capital of France."),
                   Passage("1", "Berlin", "Berlin is the capital of Germany.")]
    assert stats.skipped["missing_field"] == 1


def test_dpr_tsv_reader(tmp_path):
    p = tmp_path / "psgs.tsv"
    p.write_bytes(b'id\ttext\ttitle\n1\t"Aaron is a prophet."\tAaron\n2\tLondon is big.\tLondon\n'
                  b"3\t\tEmpty\n4\t\xff\xfe\tBad\n")
    stats = ReadStats()
    got = list(read_corpus(p, stats=stats))
    assert got == [Passage("1", "Aaron", "Aaron is a prophet."), Passage("2", "London", "London is big.")]
    assert stats.skipped["empty_text"] == 1 and stats.skipped["undecodable"] == 1


def test_wikiextractor_reader(tmp_path):
    d = tmp_path / "wiki" / "AA"
    d.mkdir(parents=True)
    write_jsonl(d / "wiki_00", [{"id": "12", "url": "u", "title": "Anarchism",
                                 "text": "Anarchism\nAnarchism is a political philosophy."}],
                extra_lines=[b"oops\n"])
    write_jsonl(d / "wiki_01", [{"id": "25", "url": "u", "title": "Autism", "text": "Autism is a condition."}])
    stats = ReadStats()
    got = list(read_corpus(tmp_path / "wiki", stats=stats))
    assert got == [Passage("wiki12", "Anarchism", "Anarchism is a political philosophy."),
                   Passage("wiki25", "Autism", "Autism is a condition.")]
    assert stats.skipped["invalid_json"] == 1


def test_textdir_reader_groups_paragraphs_and_keeps_title(tmp_path):
    d = tmp_path / "pages"
    d.mkdir()
    (d / "Albert_Einstein.txt").write_text("First paragraph here.\n\n" + " ".join(["word"] * 30) + "\n")
    (d / "Empty.txt").write_text("\n\n")
    (d / "Bad.txt").write_bytes(b"\xff\xfe\xfa")
    stats = ReadStats()
    got = list(read_corpus(d, chunk_words=10, stats=stats))
    assert {g.title for g in got} == {"Albert Einstein"}
    assert got[0].text == "First paragraph here."  # the next paragraph would overflow 10 words
    assert len(got) == 4 and got[1].id == got[0].id + "#2"  # 30 words -> 3 chunks of 10
    assert stats.skipped["empty_text"] == 1 and stats.skipped["undecodable"] == 1
    # ids are stable across reads
    assert [g.id for g in read_corpus(d, chunk_words=10)] == [g.id for g in got]


def test_chunking_keeps_short_texts_and_splits_long_ones():
    short = " ".join(f"w{i}" for i in range(150))
    assert chunk_text(short, 100) == [short]
    long = ". ".join(" ".join(f"s{j}w{i}" for i in range(10)) for j in range(50)) + "."
    pieces = chunk_text(long, 100)
    assert len(pieces) == 5
    assert " ".join(pieces).split() == long.split()  # nothing lost or reordered
    assert all(60 <= len(p.split()) <= 140 for p in pieces)
    assert parent_id("abc#3") == "abc" and parent_id("abc") == "abc" and parent_id("a#b") == "a#b"


def test_long_record_is_chunked_with_derived_ids(tmp_path):
    text = " ".join(f"w{i}." for i in range(500))
    p = write_jsonl(tmp_path / "c.jsonl", [{"id": "long", "title": "T", "text": text}])
    got = list(read_corpus(p, chunk_words=100))
    assert [g.id for g in got] == ["long", "long#2", "long#3", "long#4", "long#5"]
    assert all(g.title == "T" for g in got)
    assert list(read_corpus(p, chunk_words=0))[0].text == text


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(MaskSearchError, match="corpus not found"):
        list(read_corpus(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------------------- BM25

def test_bm25_round_trip_on_disk(small_bm25):
    r = make_retriever(f"bm25:{small_bm25}", k=2)
    docs = r.invoke("Who was the Chief of Protocol?")
    assert isinstance(docs[0], LCDocument)
    assert docs[0].metadata["id"] == "p1" and docs[0].metadata["title"] == "Shirley Temple"
    assert docs[0].page_content == PASSAGES[0]["text"]
    assert len(docs) <= 2 and docs[0].metadata["score"] > 0
    # stemming: "mountains" finds "mountain"; stop words alone find nothing
    assert r.invoke("highest mountains")[0].metadata["id"] == "p4"
    assert r.invoke("the of and") == []
    assert r.invoke("") == []
    # title field counts: the query word only in a title
    assert r.search_many(["Tell"], 1)[0][0].metadata["id"] == "p2"


def test_bm25_search_many_matches_single_queries(small_bm25):
    r = make_retriever(f"bm25:{small_bm25}", k=3, threads=2)
    qs = ["Shirley Temple film", "light energy plants", "Nepal China border", "Ghana ambassador",
          "Corliss Archer", "zzzz unknownword"] * 3
    batched = r.search_many(qs, 3)
    single = [r.search_many([q], 3)[0] for q in qs]
    assert batched == single
    assert batched[1][0].metadata["id"] == "p3" and batched[5] == []
    assert [len(b) for b in r.search_many(qs[:4], 1)] == [1, 1, 1, 1]


async def test_bm25_async(small_bm25):
    r = make_retriever(f"bm25:{small_bm25}", k=1)
    docs = await r.ainvoke("photosynthesis")
    assert docs[0].metadata["id"] == "p3"
    assert (await r.abatch(["everest", "ghana"])) == r.batch(["everest", "ghana"])


def test_bm25_incremental_add(small_bm25):
    r = make_retriever(f"bm25:{small_bm25}")
    assert r.invoke("volcano") == []
    n = r.add_passages([Passage("p5", "Vesuvius", "Vesuvius is a volcano near Naples.")])
    assert n == 1 and len(r) == 5
    assert r.invoke("volcano")[0].metadata["id"] == "p5"
    # the added passage persists: a fresh load sees it, and older ones are intact
    r2 = make_retriever(f"bm25:{small_bm25}")
    assert r2.invoke("volcano")[0].metadata["title"] == "Vesuvius"
    assert r2.invoke("photosynthesis")[0].metadata["id"] == "p3"


def test_bm25_stemming_and_stopwords_configurable(small_corpus, tmp_path):
    out = tmp_path / "nostem"
    build_index(str(small_corpus), kind="bm25", out=str(out), progress=False, stem=False,
                stopwords=False)
    r = make_retriever(f"bm25:{out}")
    assert r.invoke("mountains") == []  # no stemming
    assert r.invoke("the")  # "the" is indexed now


def test_build_is_atomic_and_corruption_names_rebuild(small_corpus, tmp_path):
    out = tmp_path / "idx"

    def exploding():
        yield Passage("a", "A", "alpha text")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        build_index(exploding(), kind="bm25", out=str(out), progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx")]  # temp folder removed

    build_index(str(small_corpus), kind="bm25", out=str(out), progress=False)
    # a failed rebuild leaves the previous index loadable
    with pytest.raises(RuntimeError):
        build_index(exploding(), kind="bm25", out=str(out), progress=False)
    assert make_retriever(f"bm25:{out}").invoke("everest")[0].metadata["id"] == "p4"

    (out / "manifest.json").write_text("{ half written")
    with pytest.raises(IndexCorruptError, match="masksearch index --corpus .* --kind bm25 --out"):
        make_retriever(f"bm25:{out}")
    (out / "manifest.json").unlink()
    with pytest.raises(IndexCorruptError, match="rebuild"):
        make_retriever(f"bm25:{out}")
    with pytest.raises(IndexCorruptError, match="no index at"):
        make_retriever(f"bm25:{tmp_path / 'missing'}")


def test_truncated_store_is_detected(small_bm25):
    store = small_bm25 / "store.jsonl"
    store.write_bytes(store.read_bytes()[:20])
    with pytest.raises(IndexCorruptError, match="truncated"):
        make_retriever(f"bm25:{small_bm25}")


def test_build_refuses_to_replace_a_foreign_folder(small_corpus, tmp_path):
    foreign = tmp_path / "mydocs"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    with pytest.raises(MaskSearchError, match="not a masksearch index"):
        build_index(str(small_corpus), kind="bm25", out=str(foreign), progress=False)
    assert (foreign / "important.txt").read_text() == "keep me"


def test_shards_partition_the_corpus(small_corpus, tmp_path):
    ids = []
    for i in range(2):
        out = tmp_path / f"s{i}"
        m = build_index(str(small_corpus), kind="bm25", out=str(out), shard=f"{i}/2", progress=False)
        ids.append({d.metadata["id"] for q in ("shirley", "energy", "everest", "film", "protocol")
                    for d in make_retriever(f"bm25:{out}", k=5).invoke(q)})
        assert m["count"] == 2
    assert ids[0] | ids[1] == {"p1", "p2", "p3", "p4"} and not ids[0] & ids[1]


def test_duplicate_ids_are_skipped_and_counted(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", PASSAGES + [PASSAGES[0]])
    m = build_index(str(p), kind="bm25", out=str(tmp_path / "i"), progress=False)
    assert m["count"] == 4 and m["skipped"] == {"duplicate_id": 1}


def test_shared_corpus_index(bm25_dir, bench_path):
    r = make_retriever(f"bm25:{bm25_dir}", k=5)
    assert len(r) >= 30991
    ex = json.loads(open(bench_path("hotpotqa")).readline())
    ids = [d.metadata["id"] for d in r.invoke(ex["question"])]
    assert set(ids) & set(ex["supporting_passage_ids"])


# ---------------------------------------------------------------------------- make_retriever

def test_make_retriever_forms(small_bm25, monkeypatch):
    r = make_retriever(f"bm25:{small_bm25}", k=2)
    assert make_retriever(r) is r
    assert make_retriever(str(small_bm25)).invoke("everest")[0].metadata["id"] == "p4"  # bare DIR
    import types, sys
    mod = types.ModuleType("my_retrievers_mod")
    mod.r = r
    mod.factory = lambda k=5: make_retriever(f"bm25:{small_bm25}", k=k)
    monkeypatch.setitem(sys.modules, "my_retrievers_mod", mod)
    assert make_retriever("my_retrievers_mod:r") is r
    assert make_retriever("my_retrievers_mod:factory", k=1).k == 1
    with pytest.raises(UnknownSpecError) as e:
        make_retriever("elastic:foo")
    for form in ("bm25:DIR", "chroma:DIR", "hybrid:", "ddg", "http://HOST:PORT", "module.path:attr"):
        assert form in str(e.value)
    with pytest.raises(UnknownSpecError, match="no attribute"):
        make_retriever("my_retrievers_mod:nothing")
    with pytest.raises(UnknownSpecError):
        make_retriever(42)


# ---------------------------------------------------------------------------- the tool

def test_format_documents_numbering_dedup_and_kinds():
    docs = [LCDocument(page_content="alpha beta", metadata={"id": "1", "title": "A"}),
            TDoc(id="2", title="B", text="gamma  delta\n epsilon"),
            LCDocument(page_content="alpha beta", metadata={"id": "1", "title": "A"}),  # dup id
            {"id": "", "title": "C", "text": "zeta"},
            {"id": "", "title": "C2", "text": "zeta"}]  # dup text, no id
    out = format_documents(docs)
    assert out == "Doc 1 (Title: A) alpha beta\nDoc 2 (Title: B) gamma delta epsilon\nDoc 3 (Title: C) zeta"
    assert format_documents([]) == "No results found."
    assert format_documents([[docs[0]], [docs[1]]]).count("Doc ") == 2  # per-query lists flatten


def test_format_documents_token_budget():
    docs = [TDoc(id=str(i), title=f"T{i}", text=" ".join(f"w{i}_{j}" for j in range(20)))
            for i in range(5)]
    out = format_documents(docs, max_tokens=60)
    assert len(out.split()) == 60
    lines = out.splitlines()
    assert lines[0].startswith("Doc 1 (Title: T0) w0_0") and lines[0].endswith("w0_19")
    assert lines[-1].endswith("...") and len(lines) == 3
    full = format_documents(docs, max_tokens=None)
    assert len(full.splitlines()) == 5

    class Tok:  # one token per character
        def encode(self, s, add_special_tokens=False):
            return list(s)

    out = format_documents(docs, max_tokens=60, tokenizer=Tok())
    assert len(out) <= 60 and out.startswith("Doc 1 (Title: T0) w0_0")


def test_search_with_retry_retries_then_raises_readable_error(small_bm25):
    r = make_retriever(f"bm25:{small_bm25}")
    res = search_with_retry(r, ["everest", "ghana"], k=1)
    assert [x[0].metadata["id"] for x in res] == ["p4", "p1"]

    class Flaky:
        calls = 0

        def search_many(self, queries, k):
            Flaky.calls += 1
            if Flaky.calls < 3:
                raise ConnectionError("server busy")
            return [[TDoc(id="x")] for _ in queries]

    assert search_with_retry(Flaky(), ["q"], k=1, retries=2, backoff=0) == [[TDoc(id="x")]]

    class Broken:
        def search_many(self, queries, k):
            raise TimeoutError("timed out after 5s")

    with pytest.raises(SearchError, match="search failed after 3 attempts: TimeoutError: timed out"):
        search_with_retry(Broken(), ["q"], k=1, retries=2, backoff=0)
    assert issubclass(SearchError, MaskSearchError)


def test_search_tool(small_bm25):
    tool = make_search_tool(make_retriever(f"bm25:{small_bm25}"), k=1)
    out = tool.invoke({"query": "highest mountain"})
    assert out.startswith("Doc 1 (Title: Mount Everest)") and "Doc 2" not in out

    class Broken:
        def search_many(self, queries, k):
            raise ConnectionError("refused")

    assert make_search_tool(Broken(), retries=0).invoke({"query": "x"}).startswith("Search failed:")


def test_conftest_signature_still_works(tmp_path, small_corpus):
    # tests/conftest.py's bm25_dir fixture calls exactly this
    out = tmp_path / "index"
    build_index(str(small_corpus), kind="bm25", out=str(out))
    assert (out / "manifest.json").exists() and os.path.isdir(out / "tantivy")


def test_killed_build_leftovers_are_cleaned(small_corpus, tmp_path):
    stale = tmp_path / ".idx.tmp-999999999"  # a build killed by SIGKILL: no process, temp folder left
    (stale / "tantivy").mkdir(parents=True)
    out = tmp_path / "idx"
    with pytest.raises(IndexCorruptError):
        make_retriever(f"bm25:{stale}")  # never loads
    build_index(str(small_corpus), kind="bm25", out=str(out), progress=False)
    assert not stale.exists() and make_retriever(f"bm25:{out}").invoke("everest")
