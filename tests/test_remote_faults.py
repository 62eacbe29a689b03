"""The OpenAI-compatible client against a misbehaving server on 127.0.0.1 (faults a real server
cannot produce on demand): one clear line for every failure, no key written, no crash on a bad reply."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from masksearch.errors import EndpointError, EndpointTimeoutError, UnknownSpecError
from masksearch.models import make_chat_model

KEY = "sk-test-SECRETSECRETSECRET-1234"


class _Handler(BaseHTTPRequestHandler):
    calls: dict[str, int] = {}
    down = False  # model "flaky" fails with an echo of the key while this is set

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout tests)
            pass

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", 0))
        req = json.loads(self.rfile.read(n))
        model = req.get("model", "")
        self.calls[model] = self.calls.get(model, 0) + 1
        ok = {"id": "x", "object": "chat.completion", "created": 0, "model": model,
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "<answer> Paris </answer>"}}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if model == "fail500":
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if model == "rate429":
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
        if model == "rate_then_ok" and self.calls[model] == 1:
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
        if model == "hang":
            time.sleep(5)
            return self._send(200, json.dumps(ok).encode())
        if model == "badjson":
            return self._send(200, b"{not json at all")
        if model == "nochoices":
            return self._send(200, json.dumps({**ok, "choices": []}).encode())
        if model == "surrogate":
            body = json.dumps(ok).replace("Paris", "Paris \\ud800")
            return self._send(200, body.encode())
        if model == "echokey" or (model == "flaky" and self.down):
            auth = self.headers.get("Authorization", "")
            return self._send(500, json.dumps({"error": {"message": f"bad request with header {auth}"}}).encode())
        return self._send(200, json.dumps(ok).encode())


@pytest.fixture(scope="module")
def fault_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _model(url: str, name: str, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 10)
    return make_chat_model(f"vllm:{name}@{url}", api_key=KEY, **kw)


def _one_line(e: BaseException) -> str:
    s = str(e)
    assert "\n" not in s and KEY not in s and "SECRETSECRET" not in s
    return s


def test_ok_and_surrogate_reply_is_made_safe(fault_server):
    assert "Paris" in _model(fault_server, "ok").invoke("q").content
    content = _model(fault_server, "surrogate").invoke("q").content
    content.encode("utf-8")
    assert "\ufffd" in content


def test_5xx_after_retries_is_one_line(fault_server):
    with pytest.raises(EndpointError) as ei:
        _model(fault_server, "fail500", max_retries=1).invoke("q")
    s = _one_line(ei.value)
    assert "HTTP 503" in s and "1 retries" in s and "overloaded" in s


def test_429_honours_retry_after_then_succeeds_or_says_rate_limited(fault_server):
    t0 = time.perf_counter()
    assert "Paris" in _model(fault_server, "rate_then_ok", max_retries=1).invoke("q").content
    assert time.perf_counter() - t0 >= 0.9  # waited the server's Retry-After: 1
    with pytest.raises(EndpointError) as ei:
        _model(fault_server, "rate429", max_retries=1).invoke("q")
    assert "429" in _one_line(ei.value) and "rate-limiting" in str(ei.value)


def test_hung_endpoint_says_timeout_not_unreachable(fault_server):
    t0 = time.perf_counter()
    with pytest.raises(EndpointTimeoutError) as ei:
        _model(fault_server, "hang", timeout=1).invoke("q")
    assert time.perf_counter() - t0 < 4
    s = _one_line(ei.value)
    assert "timed out" in s and "cannot reach" not in s and "--request-timeout" in s


def test_invalid_json_and_empty_choices_are_one_line(fault_server):
    for name in ("badjson", "nochoices"):
        with pytest.raises(EndpointError) as ei:
            _model(fault_server, name).invoke("q")
        assert "not a chat completion" in _one_line(ei.value)


def test_refused_connection_says_cannot_reach():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError) as ei:
        _model(f"http://127.0.0.1:{port}/v1", "ok").invoke("q")
    assert "cannot reach" in _one_line(ei.value)


def test_echoed_key_is_scrubbed_from_the_error(fault_server):
    with pytest.raises(EndpointError) as ei:
        _model(fault_server, "echokey").invoke("q")
    s = _one_line(ei.value)
    assert "Bearer ***" in s


@pytest.mark.asyncio
async def test_async_path_translates_too(fault_server):
    with pytest.raises(EndpointTimeoutError):
        await _model(fault_server, "hang", timeout=1).ainvoke("q")


def test_every_provider_takes_a_base_url_in_the_spec(fault_server, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for prov in ("dashscope", "openai", "vllm"):
        m = make_chat_model(f"{prov}:ok@{fault_server}", max_retries=0)
        assert str(m.openai_api_base).startswith(fault_server)
        assert "Paris" in m.invoke("q").content
    m = make_chat_model("vllm:ok@http://user:pw@127.0.0.1:1/v1")  # credentials in the URL still parse
    assert m.model_name == "ok" and "user:pw@127.0.0.1" in str(m.openai_api_base)
    with pytest.raises(UnknownSpecError):
        make_chat_model("vllm:justamodel")


def test_timeout_and_retries_defaults_are_settings(monkeypatch):
    from masksearch.models import remote

    monkeypatch.setenv(remote.TIMEOUT_ENV, "")  # restored after the test
    monkeypatch.setenv(remote.RETRIES_ENV, "")
    m = make_chat_model("vllm:m@http://127.0.0.1:1/v1")
    assert m.timeout_s == remote.DEFAULT_TIMEOUT_S >= 120 and m.max_retries == remote.DEFAULT_RETRIES
    remote.set_remote_defaults(timeout=900, retries=5)
    m = make_chat_model("vllm:m@http://127.0.0.1:1/v1")
    assert m.timeout_s == 900 and m.max_retries == 5
    with pytest.raises(ValueError):
        remote.set_remote_defaults(timeout=0)


# ------------------------------------------------------------------ end to end: eval and cot
def _qa(path, n=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is the capital of France {i}?",
                                        "golden_answers": ["Paris"]}) + "\n" for i in range(n)))
    return path


@pytest.fixture()
def tiny_index(tmp_path):
    from masksearch.retrieval import build_index

    c = tmp_path / "corpus.jsonl"
    c.write_text("".join(json.dumps({"id": f"d{i}", "title": "Paris", "text": f"Paris is the capital of France {i}."})
                         + "\n" for i in range(5)))
    return build_index(str(c), out=tmp_path / "idx", progress=False)["path"]


def _no_key_anywhere(root, *texts):
    for t in texts:
        assert KEY not in t
    for f in root.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_eval_scrubs_the_key_and_exits_nonzero_when_all_failed(fault_server, tiny_index, tmp_path, monkeypatch,
                                                               capsys):
    from masksearch.cli import main

    monkeypatch.setenv("VLLM_API_KEY", KEY)
    monkeypatch.setenv("MASKSEARCH_REQUEST_RETRIES", "0")
    data = _qa(tmp_path / "a" / "q.jsonl")
    out = tmp_path / "ev"
    rc = main(["eval", "--method", "rag-pe", "--model", f"vllm:echokey@{fault_server}", "--retriever",
               f"bm25:{tiny_index}", "--data", str(data), "--out", str(out), "--no-progress", "--retries", "0"])
    cap = capsys.readouterr()
    assert rc == 1 and "n=0" in cap.out and "token_recall=  0.0" not in cap.out.split("avg")[0]
    res = json.loads((out / "results.json").read_text())
    assert res["benchmarks"]["q"]["failed"] == 3 and "Bearer ***" in json.dumps(res)
    _no_key_anywhere(out, cap.out, cap.err)


def test_eval_same_file_names_get_separate_buckets(fault_server, tiny_index, tmp_path):
    from masksearch.eval.runner import run_eval

    a, b = _qa(tmp_path / "a" / "q.jsonl", 2), _qa(tmp_path / "b" / "q.jsonl", 3)
    res = run_eval("rag-pe", model=f"vllm:ok@{fault_server}", retriever=f"bm25:{tiny_index}", data=[str(a), str(b)],
                   out_dir=tmp_path / "ev", progress=False)
    assert {k: v["n"] for k, v in res["benchmarks"].items()} == {"q": 2, "q-2": 3}


def test_cot_error_runs_are_not_final_and_the_key_is_never_written(fault_server, tiny_index, tmp_path,
                                                                    monkeypatch, capsys):
    from masksearch.cli import main

    monkeypatch.setenv("VLLM_API_KEY", KEY)
    data = _qa(tmp_path / "q.jsonl", 2)
    out = tmp_path / "cot"
    args = ["cot", "--input", str(data), "--out", str(out), "--teacher", f"vllm:flaky@{fault_server}",
            "--retriever", f"bm25:{tiny_index}", "--checkpoint-db", str(tmp_path / "ck.sqlite"),
            "--no-progress", "--retries", "0", "--concurrency", "2"]
    _Handler.down = True
    try:
        assert main(args) == 1
    finally:
        _Handler.down = False
    cap = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 2 and (out / "trajectories.jsonl").read_text() == ""
    _no_key_anywhere(tmp_path, cap.out, cap.err)
    assert main(args) == 0  # the endpoint is back: the failed runs are retried, not skipped
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 2


def test_a_surrogate_reply_does_not_fail_eval_questions(fault_server, tiny_index, tmp_path):
    from masksearch.eval.runner import run_eval

    res = run_eval("rag-pe", model=f"vllm:surrogate@{fault_server}", retriever=f"bm25:{tiny_index}",
                   data=[str(_qa(tmp_path / "q.jsonl", 3))], out_dir=tmp_path / "ev", progress=False)
    b = res["benchmarks"]["q"]
    assert b["n"] == 3 and b["failed"] == 0
    preds = (tmp_path / "ev" / "q" / "predictions.jsonl").read_text(encoding="utf-8")
    assert "\ufffd" in preds
