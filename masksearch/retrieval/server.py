"""The retrieval server: any retriever behind ``POST /retrieve`` (Search-R1's shape) + ``GET /health``.

Request ``{"queries": [...], "topk": k, "return_scores": bool}``; answer
``{"result": [[{"document": {"id", "contents", "title", "text"}, "score"}, ...], ...]}`` (with
``return_scores: false`` each hit is the bare document, as in Search-R1).

Compatible with Search-R1's client by default: a request of up to :data:`MAX_QUERIES` (2,560:
Search-R1's GRPO batch of 512 prompts x 5 samples) is accepted and run through the retriever's
``search_many`` in chunks of :data:`CHUNK_QUERIES`; ``topk`` absent, ``null`` or ``0`` means the
server's default (``serve-retriever -k``).

Limits, each answered with a 4xx and a one-line ``detail``, never a 500:

* the body: at most ``max_body_bytes`` (413), read in chunks so a lying ``Content-Length`` cannot
  get past it; not JSON, or JSON with ``NaN``/``Infinity`` (400); wrong field types (422);
* the batch: at most ``max_queries`` queries (413), each at most ``max_query_chars`` (422);
* the response: ``queries x topk`` at most ``max_hits`` (413, checked before searching), and the
  encoded answer at most ``max_response_bytes`` (413);
* concurrency: at most ``max_in_flight`` (4) batches are searched and encoded at once;
* connections: one that sends nothing, or stalls in its headers or body, for ``idle_timeout_s``
  is closed (uvicorn alone keeps such half-open connections forever).

Queries are made safe where they enter (a lone surrogate becomes U+FFFD instead of a 500).
"""


import contextlib
import json
import math
from typing import Any, Iterator

from masksearch.errors import EndpointError
from masksearch.retrieval.base import SearchError
from masksearch.utils.scrub import safe_text

MAX_QUERIES = 2560
CHUNK_QUERIES = 256
MAX_TOPK = 100
MAX_HITS = 2560 * 8
MAX_BODY_BYTES = 8 << 20
MAX_RESPONSE_BYTES = 96 << 20
MAX_QUERY_CHARS = 4096
IDLE_TIMEOUT_S = 30.0
MAX_IN_FLIGHT = 4


def _hit(doc: Any, return_scores: bool) -> dict[str, Any]:
    meta = doc.metadata or {}
    title, text = str(meta.get("title", "") or ""), doc.page_content
    d = {"id": str(meta.get("id", "") or ""), "contents": f"{title}\n{text}" if title else text,
         "title": title, "text": text}
    if meta.get("url"):
        d["url"] = meta["url"]
    score = meta.get("score")
    if isinstance(score, float) and not math.isfinite(score):
        score = None
    return {"document": d, "score": score} if return_scores else d


class RequestProblem(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _reject_constant(name: str) -> Any:
    raise RequestProblem(400, f"the body holds {name}, which is not valid JSON")


def parse_request(body: bytes, *, default_topk: int, max_queries: int, max_topk: int, max_hits: int,
                  max_query_chars: int = MAX_QUERY_CHARS) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body; returns (queries, topk, return_scores) or raises
    :class:`RequestProblem` with the status and a one-line reason."""
    try:
        req = json.loads(body, parse_constant=_reject_constant)
    except RequestProblem:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestProblem(400, f"the body is not JSON ({type(e).__name__})") from None
    if not isinstance(req, dict):
        raise RequestProblem(422, "the body must be a JSON object {\"queries\": [...], \"topk\": k}")
    queries = req.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestProblem(422, "'queries' must be a list of strings")
    if len(queries) > max_queries:
        raise RequestProblem(413, f"{len(queries)} queries in one request; this server takes at most "
                                  f"{max_queries} (split the batch, or start it with --max-queries)")
    long = next((i for i, q in enumerate(queries) if len(q) > max_query_chars), None)
    if long is not None:
        raise RequestProblem(422, f"query {long} is {len(queries[long])} characters; at most {max_query_chars}")
    topk = req.get("topk")
    if topk is None or (isinstance(topk, (int, float)) and not isinstance(topk, bool) and topk == 0):
        topk = default_topk  # Search-R1's server: no topk means the configured default
    if isinstance(topk, float) and topk.is_integer():
        topk = int(topk)
    if not isinstance(topk, int) or isinstance(topk, bool):
        raise RequestProblem(422, f"topk must be a whole number between 1 and {max_topk}, got {topk!r}")
    if not 1 <= topk <= max_topk:
        raise RequestProblem(422, f"topk must be between 1 and {max_topk}, got {topk}")
    if len(queries) * topk > max_hits:
        raise RequestProblem(413, f"{len(queries)} queries x topk {topk} = {len(queries) * topk} documents; "
                                  f"this server answers at most {max_hits} per request (split the batch)")
    rs = req.get("return_scores", True)
    if not isinstance(rs, bool):
        raise RequestProblem(422, f"return_scores must be true or false, got {rs!r}")
    return [safe_text(q) for q in queries], topk, rs


def create_app(retriever: Any, max_queries: int = MAX_QUERIES, max_topk: int = MAX_TOPK,
               name: str | None = None, *, default_topk: int = 3, max_hits: int = MAX_HITS,
               max_body_bytes: int = MAX_BODY_BYTES, max_response_bytes: int = MAX_RESPONSE_BYTES,
               chunk_queries: int = CHUNK_QUERIES, max_in_flight: int = MAX_IN_FLIGHT):
    """A FastAPI app serving ``retriever`` (a spec string or a retriever object).  At most
    ``max_in_flight`` batches are searched and encoded at once (others wait), which bounds the
    memory that concurrent large answers take."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from masksearch.retrieval.factory import make_retriever

    retriever = make_retriever(retriever) if isinstance(retriever, str) else retriever
    label = name or type(retriever).__name__
    if not 1 <= default_topk <= max_topk:
        raise ValueError(f"the default topk must be between 1 and {max_topk}, got {default_topk}")

    app = FastAPI(title="masksearch retrieval server")
    gate: list[Any] = []  # the asyncio.Semaphore, made on the server's event loop

    def in_flight() -> Any:
        if not gate:
            import asyncio

            gate.append(asyncio.Semaphore(max(1, max_in_flight)))
        return gate[0]

    def problem(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "retriever": label, "max_queries": max_queries, "max_topk": max_topk,
                "default_topk": default_topk, "max_hits": max_hits, "max_body_bytes": max_body_bytes}

    def search(queries: list[str], topk: int) -> list[list[Any]]:
        out: list[list[Any]] = []
        for i in range(0, len(queries), max(1, chunk_queries)):  # bounded work per retriever call
            chunk = queries[i:i + chunk_queries]
            if hasattr(retriever, "search_many"):
                out.extend(retriever.search_many(chunk, topk))
            else:
                out.extend(list(d)[:topk] for d in retriever.batch(chunk))
        return out

    def encode(results: list[list[Any]], return_scores: bool) -> bytes:
        body = json.dumps({"result": [[_hit(d, return_scores) for d in docs] for docs in results]},
                          ensure_ascii=False, allow_nan=False)
        return safe_text(body).encode("utf-8")

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return problem(413, f"the body is {int(declared)} bytes; this server takes at most {max_body_bytes}")
        buf = bytearray()
        async for part in request.stream():
            buf += part
            if len(buf) > max_body_bytes:
                return problem(413, f"the body is over {max_body_bytes} bytes; split the batch")
        try:
            queries, topk, return_scores = parse_request(bytes(buf), default_topk=default_topk,
                                                         max_queries=max_queries, max_topk=max_topk,
                                                         max_hits=max_hits)
        except RequestProblem as e:
            return problem(e.status, e.detail)
        if not queries:
            return JSONResponse({"result": []})
        async with in_flight():
            try:
                results = await run_in_threadpool(search, queries, topk)
            except SearchError as e:
                return problem(502, str(e))
            data = await run_in_threadpool(encode, results, return_scores)
            del results
        if len(data) > max_response_bytes:
            return problem(413, f"the answer would be {len(data)} bytes (over {max_response_bytes}); "
                                f"ask fewer queries or a smaller topk")
        return Response(data, media_type="application/json")

    app.state.retriever = retriever
    return app


def guarded_http_protocol(idle_timeout_s: float = IDLE_TIMEOUT_S):
    """uvicorn's HTTP protocol (httptools when installed, else h11), plus a deadline while the
    server waits for the client: a connection that sends nothing, or stalls inside its headers or
    body, for ``idle_timeout_s`` is closed.  A request being computed is never cut."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools not installed
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class GuardedHTTPProtocol(Base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._guard = None
            self._arm()

        def _arm(self) -> None:
            if getattr(self, "_guard", None) is not None:
                self._guard.cancel()
            self._guard = self.loop.call_later(idle_timeout_s, self._on_idle)

        def data_received(self, data: bytes) -> None:
            self._arm()
            super().data_received(data)

        def _on_idle(self) -> None:
            self._guard = None
            if self.transport.is_closing():
                return
            cycle = getattr(self, "cycle", None)
            waiting_for_client = cycle is None or cycle.response_complete or cycle.more_body
            if waiting_for_client:
                self.transport.close()
            else:  # the app is computing an answer
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if getattr(self, "_guard", None) is not None:
                self._guard.cancel()
                self._guard = None
            super().connection_lost(exc)

    return GuardedHTTPProtocol


def make_server(retriever: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
                idle_timeout_s: float = IDLE_TIMEOUT_S, **app_options: Any):
    """A ``uvicorn.Server`` for :func:`create_app` with the idle-connection guard (run it with
    ``.run()``, or in a thread)."""
    import uvicorn

    app = create_app(retriever, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            http=guarded_http_protocol(idle_timeout_s),
                            timeout_keep_alive=max(1, int(min(5, idle_timeout_s))))
    return uvicorn.Server(config)


@contextlib.contextmanager
def serve_in_thread(retriever: Any, host: str = "127.0.0.1", port: int | None = None, *,
                    log_level: str = "warning", start_timeout_s: float = 30.0, **options: Any) -> Iterator[str]:
    """The retrieval server in a background thread of this process (a notebook, a test, a driver
    script): yields its base URL once it accepts connections, stops it on exit.  ``port=None``
    picks a free one; ``options`` go to :func:`make_server` / :func:`create_app`."""
    import threading
    import time

    from masksearch.utils.net import free_port

    if port is None:
        port = free_port(host)
    srv = make_server(retriever, host=host, port=port, log_level=log_level, **options)
    thread = threading.Thread(target=srv.run, name=f"retrieval-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            srv.should_exit = True
            raise EndpointError(f"the retrieval server on {host}:{port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def serve(retriever: Any, host: str = "127.0.0.1", port: int = 8000, max_queries: int = MAX_QUERIES,
          log_level: str = "info", **options: Any) -> None:
    """Run the server in the foreground (``masksearch serve-retriever``)."""
    make_server(retriever, host=host, port=port, log_level=log_level, max_queries=max_queries, **options).run()
