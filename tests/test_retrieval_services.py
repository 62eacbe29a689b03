"""Dense + hybrid retrieval, the retrieval server with the remote client, the web retriever against a
local DuckDuckGo stand-in, and the CLI.  Everything on 127.0.0.1; nothing reaches the network."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from langchain_core.documents import Document

from masksearch.errors import EndpointError
from masksearch.utils.net import free_port
from masksearch.retrieval import SearchError, build_index, make_retriever
from masksearch.retrieval.hybrid import HybridRetriever, rrf_fuse
from masksearch.retrieval.server import serve_in_thread
from masksearch.retrieval.tool import search_with_retry

from tests.test_retrieval import PASSAGES  # the same four passages


def doc(pid: str) -> Document:
    return Document(page_content=f"text {pid}", metadata={"id": pid, "title": pid, "score": 1.0})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PASSAGES))
    return p


@pytest.fixture(scope="module")
def bm25(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bm25"
    build_index(str(corpus), kind="bm25", out=str(out), progress=False)
    return out


# ---------------------------------------------------------------------------- hybrid

def test_rrf_order():
    a = [doc("x"), doc("y"), doc("z")]
    b = [doc("y"), doc("w"), doc("x")]
    fused = rrf_fuse([a, b], k=4, rrf_k=60)
    # y: 1/62 + 1/61 > x: 1/61 + 1/63 > w: 1/62 > z: 1/63
    assert [d.metadata["id"] for d in fused] == ["y", "x", "w", "z"]
    assert fused[0].metadata["score"] == pytest.approx(1 / 62 + 1 / 61)
    # weights change the order
    fused = rrf_fuse([a, b], k=2, rrf_k=60, weights=[1.0, 0.1])
    assert [d.metadata["id"] for d in fused] == ["x", "y"]
    # a document repeated inside one ranking counts once
    assert rrf_fuse([[doc("x"), doc("x")]], k=5)[0].metadata["score"] == pytest.approx(1 / 61)


def test_hybrid_over_two_retrievers(bm25):
    class Fixed(HybridRetriever.__mro__[1]):  # a SearchRetriever returning a fixed ranking
        def search_many(self, queries, k=None):
            return [[doc("p3"), doc("p2")][:k] for _ in queries]

    h = make_retriever(f"hybrid:bm25:{bm25}+bm25:{bm25}", k=2)
    assert isinstance(h, HybridRetriever) and len(h.retrievers) == 2
    assert h.invoke("everest")[0].metadata["id"] == "p4"
    h2 = HybridRetriever(retrievers=[make_retriever(f"bm25:{bm25}"), Fixed()], k=3)
    got = [d.metadata["id"] for d in h2.invoke("Shirley Temple film")]
    # p2 is ranked by both (bm25 top, fixed 2nd) -> first; p3 only by Fixed at rank 1
    assert got[0] == "p2" and "p3" in got and len(got) == 3


# ---------------------------------------------------------------------------- dense

@pytest.mark.slow
def test_chroma_round_trip_and_hybrid(corpus, bm25, tmp_path):
    out = tmp_path / "dense"
    m = build_index(str(corpus), kind="chroma", out=str(out), progress=False)
    assert m["count"] == 4 and m["model"] == "all-MiniLM-L6-v2"
    r = make_retriever(f"chroma:{out}", k=2)
    docs = r.invoke("Which plant process turns sunlight into chemical energy?")
    assert docs[0].metadata["id"] == "p3" and docs[0].metadata["title"] == "Photosynthesis"
    assert 0 < docs[0].metadata["score"] <= 1 and docs[0].metadata["score"] > docs[1].metadata["score"]
    batched = r.search_many(["tallest peak in the world", "", "movie actress"], 1)
    assert batched[0][0].metadata["id"] == "p4" and batched[1] == []
    assert batched[2][0].metadata["id"] in {"p1", "p2"}
    # Chroma never embedded anything itself: the collection has no embedding function of its own
    h = make_retriever(f"hybrid:bm25:{bm25}+chroma:{out}", k=3)
    assert h.invoke("highest mountain Nepal")[0].metadata["id"] == "p4"
    with pytest.raises(Exception, match="not 'chroma'|holds a 'bm25' index"):
        make_retriever(f"chroma:{bm25}")


# ---------------------------------------------------------------------------- server + remote

@pytest.fixture(scope="module")
def server(bm25):
    with serve_in_thread(make_retriever(f"bm25:{bm25}"), max_queries=8) as url:
        yield url


def test_server_shape_and_errors(server):
    r = httpx.post(f"{server}/retrieve", json={"queries": ["everest", "ghana"], "topk": 2,
                                                "return_scores": True})
    assert r.status_code == 200
    res = r.json()["result"]
    assert len(res) == 2 and len(res[0]) <= 2
    hit = res[0][0]
    assert set(hit) == {"document", "score"} and hit["document"]["id"] == "p4"
    assert hit["document"]["contents"].startswith("Mount Everest\nMount Everest is")
    bare = httpx.post(f"{server}/retrieve", json={"queries": ["ghana"], "topk": 1, "return_scores": False})
    assert bare.json()["result"][0][0]["id"] == "p1"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    too_many = httpx.post(f"{server}/retrieve", json={"queries": ["q"] * 9, "topk": 1})
    assert too_many.status_code == 413 and "at most 8" in too_many.json()["detail"]
    assert httpx.post(f"{server}/retrieve", json={"queries": "notalist"}).status_code == 422
    assert httpx.post(f"{server}/retrieve", json={"topk": 3}).status_code == 422
    bad_k = httpx.post(f"{server}/retrieve", json={"queries": ["q"], "topk": -1})
    assert bad_k.status_code == 422 and "topk" in bad_k.json()["detail"]
    assert httpx.post(f"{server}/retrieve", json={"queries": ["q"], "topk": 0}).status_code == 200  # default


def test_remote_retriever_round_trip(server, bm25):
    remote = make_retriever(server, k=2)
    local = make_retriever(f"bm25:{bm25}", k=2)
    qs = ["everest", "Shirley Temple film", "photosynthesis energy"]
    got = remote.search_many(qs, 2)
    want = local.search_many(qs, 2)
    assert [[(d.metadata["id"], d.metadata["title"], d.page_content) for d in g] for g in got] == \
           [[(d.metadata["id"], d.metadata["title"], d.page_content) for d in w] for w in want]
    assert got[0][0].metadata["score"] == pytest.approx(want[0][0].metadata["score"])
    assert remote.invoke("ghana")[0].metadata["id"] == "p1"
    # a batch larger than the server's limit is split by the client
    remote.batch_size = 8
    assert len(remote.search_many(["everest"] * 20, 1)) == 20
    remote.batch_size = 256
    with pytest.raises(SearchError, match="refused the request .*HTTP 413"):
        remote.search_many(["q"] * 9, 1)


async def test_remote_async(server):
    remote = make_retriever(server, k=1)
    docs = await remote.ainvoke("everest")
    assert docs[0].metadata["id"] == "p4"


def test_remote_unreachable_is_clear():
    r = make_retriever(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0)
    with pytest.raises(EndpointError, match="cannot reach the retrieval server .*serve-retriever"):
        r.invoke("x")
    with pytest.raises(SearchError, match="search failed after 2 attempts: cannot reach"):
        search_with_retry(r, ["x"], k=1, retries=1, backoff=0)


# ---------------------------------------------------------------------------- web (DuckDuckGo stand-in)

RESULT_HTML = """<html><body><div class="serp__results">
<div class="result results_links results_links_deep web-result"><div class="links_main links_deep result__body">
<h2 class="result__title"><a rel="nofollow" class="result__a" href="https://en.wikipedia.org/wiki/{q}">{q} - Wikipedia</a></h2>
<a class="result__snippet" href="https://en.wikipedia.org/wiki/{q}">About <b>{q}</b>: the first snippet.</a>
</div></div>
<div class="result results_links results_links_deep web-result"><div class="links_main links_deep result__body">
<h2 class="result__title"><a rel="nofollow" class="result__a" href="https://example.org/{q}">Second {q}</a></h2>
<a class="result__snippet" href="https://example.org/{q}">Another snippet on {q}.</a>
</div></div>
</div></body></html>"""


class StandIn:
    """A fake html.duckduckgo.com: POST /html/ answers statuses from a script, then results."""

    def __init__(self):
        self.script: list[int | str] = []  # per request: a status code, or "slow"
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                outer.requests.append({"path": self.path, "form": form})
                action = outer.script.pop(0) if outer.script else 200
                if action == "slow":
                    time.sleep(2.5)
                    action = 200
                if action != 200:
                    self.send_response(action)
                    self.end_headers()
                    self.wfile.write(b"")
                    return
                page = RESULT_HTML.format(q=form.get("q", "").replace(" ", "_")).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first, as the timeout test intends

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def ddg():
    s = StandIn()
    yield s
    s.httpd.shutdown()


def test_web_results_parsed(ddg):
    r = make_retriever("ddg", k=1, base_url=ddg.url, backoff=0)
    docs = r.invoke("Mount Everest")
    assert len(docs) == 1
    d = docs[0]
    assert d.metadata["title"] == "Mount_Everest - Wikipedia"
    assert d.metadata["url"] == "https://en.wikipedia.org/wiki/Mount_Everest"
    assert d.page_content == "About Mount_Everest: the first snippet."
    assert d.metadata["id"].startswith("web-")
    assert ddg.requests[0]["path"] == "/html/" and ddg.requests[0]["form"]["q"] == "Mount Everest"
    two = r.search_many(["a", "b", "c"], 2)
    assert [len(x) for x in two] == [2, 2, 2] and two[2][1].metadata["title"] == "Second c"


def test_web_retries_rate_limits_then_succeeds(ddg):
    ddg.script = [202, 429]
    r = make_retriever("ddg", k=2, base_url=ddg.url, backoff=0.01, retries=3)
    docs = r.invoke("Nepal")
    assert docs[0].metadata["title"] == "Nepal - Wikipedia" and len(ddg.requests) == 3


def test_web_gives_up_with_a_readable_error(ddg, monkeypatch):
    ddg.script = [429] * 10
    r = make_retriever("ddg", k=2, base_url=ddg.url, backoff=0.01, retries=2)
    with pytest.raises(SearchError, match=r"failed after 3 attempt\(s\): rate limited by DuckDuckGo \(HTTP 429\)"):
        r.invoke("Nepal")
    assert len(ddg.requests) == 3
    monkeypatch.setenv("MASKSEARCH_DDG_URL", ddg.url)  # the env var redirects it too
    ddg.script = []
    assert make_retriever("ddg", k=1).invoke("x")[0].metadata["title"] == "x - Wikipedia"


def test_web_timeout(ddg):
    ddg.script = ["slow", "slow"]
    r = make_retriever("ddg", k=1, base_url=ddg.url, timeout=1, backoff=0.01, retries=1)
    t0 = time.time()
    with pytest.raises(SearchError, match="timed out after 1s"):
        r.invoke("slow query")
    assert time.time() - t0 < 6
    ddg.script = ["slow"]
    r = make_retriever("ddg", k=1, base_url=ddg.url, timeout=1, backoff=0.01, retries=1)
    assert r.invoke("recovers")[0].metadata["title"] == "recovers - Wikipedia"


# ---------------------------------------------------------------------------- CLI

def test_cli_index_and_search(corpus, tmp_path, capsys):
    from masksearch.cli import main

    out = tmp_path / "cli-idx"
    assert main(["index", "--corpus", str(corpus), "--kind", "bm25", "--out", str(out), "--no-progress"]) == 0
    assert "indexed 4 passages" in capsys.readouterr().out
    assert main(["search", "--retriever", f"bm25:{out}", "-k", "1", "highest mountain"]) == 0
    assert capsys.readouterr().out.startswith("Doc 1 (Title: Mount Everest) Mount Everest is")
    assert main(["search", "--retriever", f"bm25:{out}", "--json", "-k", "1", "ghana", "film"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["documents"][0]["id"] == "p1" and lines[1]["query"] == "film"


def test_cli_errors_are_one_line(tmp_path, capsys):
    from masksearch.cli import main

    assert main(["search", "--retriever", "nope:x", "q"]) == 2
    err = capsys.readouterr().err
    assert "unknown retriever spec 'nope:x'" in err and "bm25:DIR" in err and "Traceback" not in err
    assert main(["search", "--retriever", f"bm25:{tmp_path / 'missing'}", "q"]) == 2
    assert "masksearch index --corpus PATH --kind bm25 --out" in capsys.readouterr().err
    assert main(["index", "--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus not found" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    (half / "tantivy").mkdir()
    assert main(["search", "--retriever", f"bm25:{half}", "q"]) == 2
    assert "rebuild it with: masksearch index" in capsys.readouterr().err
