"""``serve-retriever`` limits and Search-R1 compatibility, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from masksearch.retrieval import build_index, make_retriever
from masksearch.retrieval.server import serve_in_thread


class SlowWhenAsked:
    """Wraps a retriever; a query containing 'slowpoke' makes the batch take 2 s."""

    def __init__(self, inner):
        self.inner = inner

    def search_many(self, queries, k):
        if any("slowpoke" in q for q in queries):
            time.sleep(2)
        return self.inner.search_many(queries, k)


@pytest.fixture(scope="module")
def server(tmp_path_factory, corpus_path):
    d = tmp_path_factory.mktemp("srv")
    c = d / "c.jsonl"
    with open(corpus_path, encoding="utf-8") as f:
        c.write_text("".join(next(f) for _ in range(300)), encoding="utf-8")
    idx = build_index(str(c), out=d / "idx", progress=False)["path"]
    with serve_in_thread(SlowWhenAsked(make_retriever(f"bm25:{idx}")), default_topk=5, idle_timeout_s=1.0,
                         max_body_bytes=1 << 20) as url:
        yield url, int(url.rsplit(":", 1)[1])


# --- a Search-R1-style client, written from its documented request/response handling ---------
def search_r1_batch_search(url: str, queries: list[str], topk: int | None) -> list[str]:
    """POST {"queries", "topk", "return_scores": True}, read ["result"], format each hit list as
    'Doc i(Title: <first line of contents>) <rest of contents>' lines."""
    payload = {"queries": queries, "topk": topk, "return_scores": True}
    results = httpx.post(f"{url}/retrieve", json=payload, timeout=120).json()["result"]
    out = []
    for hits in results:
        lines = []
        for i, hit in enumerate(hits, 1):
            first, _, rest = hit["document"]["contents"].partition("\n")
            lines.append(f"Doc {i}(Title: {first}) {rest}\n")
        out.append("".join(lines))
    return out


def test_search_r1_default_batch_of_2560_queries(server):
    url, _ = server
    words = ["river", "film", "war", "king", "city", "music", "island", "church"]
    queries = [f"{words[i % 8]} {words[(i // 8) % 8]} {i}" for i in range(2560)]
    t0 = time.perf_counter()
    blocks = search_r1_batch_search(url, queries, 3)
    assert len(blocks) == 2560 and time.perf_counter() - t0 < 60
    assert all(b.startswith("Doc 1(Title: ") for b in blocks if b)
    assert sum(b.count("\nDoc ") + 1 for b in blocks if b) > 2560  # several documents per query


def test_topk_null_zero_or_absent_means_the_server_default(server):
    url, _ = server
    for body in ({"queries": ["river"], "topk": None}, {"queries": ["river"], "topk": 0}, {"queries": ["river"]}):
        r = httpx.post(f"{url}/retrieve", json=body)
        assert r.status_code == 200 and len(r.json()["result"][0]) == 5, body
    assert len(search_r1_batch_search(url, ["river"], None)[0].split("Doc ")) - 1 == 5
    assert httpx.get(f"{url}/health").json()["default_topk"] == 5


@pytest.mark.parametrize("raw,status", [
    (b'{"queries": ["river"], "topk": NaN}', 400),
    (b'{"queries": ["river"], "topk": Infinity}', 400),
    (b'{"queries": ["river"], "topk": -1}', 422),
    (b'{"queries": ["river"], "topk": 2.5}', 422),
    (b'{"queries": ["river"], "topk": "3"}', 422),
    (b'{"queries": ["river"], "return_scores": "yes"}', 422),
    (b'{"queries": "river"}', 422),
    (b'[1, 2]', 422),
    (b'{not json', 400),
    (b'\xff\xfe', 400),
])
def test_bad_values_answer_4xx_with_a_reason(server, raw, status):
    url, _ = server
    r = httpx.post(f"{url}/retrieve", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["detail"]


def test_body_and_response_are_bounded(server):
    url, _ = server
    big = {"queries": ["x" * 4000] * 300}  # 1.2 MB > the 1 MB limit of this server
    r = httpx.post(f"{url}/retrieve", json=big)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = httpx.post(f"{url}/retrieve", json={"queries": ["river"] * 2560, "topk": 100})  # 256,000 documents
    assert r.status_code == 413 and "documents" in r.json()["detail"]
    r = httpx.post(f"{url}/retrieve", json={"queries": ["q"] * 2561})
    assert r.status_code == 413 and "at most 2560" in r.json()["detail"]


def test_lone_surrogate_query_is_answered(server):
    url, _ = server
    r = httpx.post(f"{url}/retrieve", content=b'{"queries": ["river \\ud800"], "topk": 2}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["result"]) == 1


def _closed_within(port: int, payload: bytes, seconds: float) -> bool:
    with socket.create_connection(("127.0.0.1", port)) as s:
        if payload:
            s.sendall(payload)
        s.settimeout(seconds)
        try:
            return s.recv(1024) == b""
        except socket.timeout:
            return False


@pytest.mark.parametrize("payload", [
    b"",  # connects and says nothing
    b"POST /retrieve HTTP/1.1\r\nHost: x\r\n",  # stalls inside the headers
    b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"queries\"",  # stalls in the body
])
def test_idle_and_half_open_connections_are_dropped(server, payload):
    _, port = server
    assert _closed_within(port, payload, 4.0)


def test_a_slow_search_is_not_cut_by_the_idle_guard(server):
    url, _ = server
    r = httpx.post(f"{url}/retrieve", json={"queries": ["slowpoke river"], "topk": 1}, timeout=30)
    assert r.status_code == 200 and len(r.json()["result"]) == 1
