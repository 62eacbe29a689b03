"""The continuous-batching engine of LocalChatModel computes what the generate engine computes,
admits requests mid-flight, answers finished rows early, and survives a failed forward pass."""

from __future__ import annotations

import asyncio
import random

import pytest

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain and the sea in spring.",
    "2+2?",
    "Who wrote Hamlet? Answer in one word.",
    "Tell me about Paris.",
]


@pytest.fixture(scope="module")
def pair(embedded_model):
    """Two wrappers of the same embedded weights, one per engine."""
    from masksearch.models.local import LocalChatModel

    m, tok = embedded_model.model, embedded_model.tokenizer
    cont = LocalChatModel.from_model(m, tok, engine="continuous", max_new_tokens=24, batch_wait_ms=200)
    gen = LocalChatModel.from_model(m, tok, engine="generate", max_new_tokens=24, batch_wait_ms=200)
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       tokenize=False), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return cont, gen, ids


def test_same_tokens_and_logprobs_as_the_generate_engine(pair):
    cont, gen, ids = pair
    limits = [24, 5, 24, 9, 24, 17]
    stops = [["."], [], ["\n"], ["."], [], [","]]

    async def run(model):
        return await asyncio.gather(*[model.agenerate_ids(p, max_new_tokens=n, stop=s)
                                      for p, n, s in zip(ids, limits, stops)])

    a = asyncio.run(run(cont))
    b = asyncio.run(run(gen))
    assert cont.batch_stats["engine"] == "continuous" and gen.batch_stats["engine"] == "generate"
    for x, y, n in zip(a, b, limits):
        assert x.token_ids == y.token_ids
        assert x.text == y.text and x.finish_reason == y.finish_reason and x.stop_string == y.stop_string
        assert x.logprobs == pytest.approx(y.logprobs, abs=2e-3)
        assert len(x.token_ids) <= n
    assert {x.finish_reason for x in a} >= {"stop", "length"}
    # a row that ended left the computation: fewer row-steps than rows x longest row
    st = cont.batch_stats
    assert st["useful_row_steps"] <= st["row_steps"]


def test_late_requests_join_the_running_batch_and_compute_what_they_would_alone(pair):
    cont, gen, ids = pair
    before = dict(cont.batch_stats)

    async def staggered():
        async def one(i):
            await asyncio.sleep(0.25 * i)
            return await cont.agenerate_ids(ids[i], max_new_tokens=20)
        return await asyncio.gather(*(one(i) for i in range(len(ids))))

    together = asyncio.run(staggered())
    st = cont.batch_stats
    admissions = st["batches"] - before["batches"]
    steps = st["steps"] - before["steps"]
    assert admissions >= 2  # the late ones were admitted in later passes ...
    assert st["max_running"] >= 2  # ... while others were running
    assert steps < sum(len(g.token_ids) for g in together)  # decode steps were shared
    alone = [gen.generate_ids([p], max_new_tokens=20)[0] for p in ids]
    for x, y in zip(together, alone):
        assert x.token_ids == y.token_ids
        assert x.logprobs == pytest.approx(y.logprobs, abs=2e-3)


def test_a_short_request_is_answered_before_the_long_one_ends(pair):
    cont, _, ids = pair

    async def race():
        short = asyncio.ensure_future(cont.agenerate_ids(ids[0], max_new_tokens=2))
        long = asyncio.ensure_future(cont.agenerate_ids(ids[2], max_new_tokens=40))
        done, pending = await asyncio.wait({short, long}, return_when=asyncio.FIRST_COMPLETED)
        first_done_alone = short in done and long in pending
        await long
        return first_done_alone, short.result(), long.result()

    first_done_alone, s, l_ = asyncio.run(race())
    assert first_done_alone
    assert len(s.token_ids) == 2 and s.finish_reason == "length"
    assert len(l_.token_ids) > 2


def test_sampled_rows_are_seeded_per_request(pair):
    cont, _, ids = pair

    async def both(seed_a, seed_b):
        return await asyncio.gather(cont.agenerate_ids(ids[5], max_new_tokens=12, temperature=1.0, seed=seed_a),
                                    cont.agenerate_ids(ids[5], max_new_tokens=12, temperature=1.0, seed=seed_b))

    a1, b1 = asyncio.run(both(11, 12))
    a2, b2 = asyncio.run(both(11, 13))
    assert a1.token_ids == a2.token_ids  # same seed, same sample, whatever shares the batch
    greedy = cont.generate_ids([ids[5]], max_new_tokens=12)[0]
    assert len({tuple(a1.token_ids), tuple(b1.token_ids), tuple(b2.token_ids), tuple(greedy.token_ids)}) > 1


@pytest.mark.parametrize("fail_at", [1, 3])  # the prefill, a decode step
def test_a_failed_forward_pass_is_reported_and_the_engine_recovers(pair, monkeypatch, fail_at):
    from masksearch.models.engine import ContinuousBatcher

    cont, _, ids = pair
    real = ContinuousBatcher._forward
    calls = {"n": 0}

    def flaky(self, **kw):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("device fell over")
        return real(self, **kw)

    monkeypatch.setattr(ContinuousBatcher, "_forward", flaky)
    with pytest.raises(RuntimeError, match="device fell over"):
        cont.generate_ids(ids[:2], max_new_tokens=10)
    monkeypatch.setattr(ContinuousBatcher, "_forward", real)
    again = cont.generate_ids([ids[0]], max_new_tokens=5)[0]
    assert len(again.token_ids) == 5 or again.finish_reason in ("eos", "stop")


def test_unknown_engine_is_a_clear_error(embedded_model):
    from masksearch.models.local import LocalChatModel

    m = LocalChatModel.from_model(embedded_model.model, embedded_model.tokenizer, engine="warp")
    with pytest.raises(ValueError, match="continuous"):
        m.generate_ids([[1, 2, 3]], max_new_tokens=1)


def test_grow_layer_keeps_its_contents_across_reallocation():
    import torch

    from masksearch.models.engine import _grow_layer_class

    layer = _grow_layer_class()()
    rng = random.Random(0)
    ref_k = torch.zeros(2, 3, 0, 4)
    for _ in range(12):
        n = rng.randint(1, 40)
        k = torch.randn(2, 3, n, 4)
        keys, values = layer.update(k, -k)
        ref_k = torch.cat([ref_k, k], dim=2)
        assert torch.equal(keys, ref_k) and torch.equal(values, -ref_k)
        assert layer.get_seq_length() == ref_k.shape[2]


def _multi_turn(model, tok, question, turns=3, n=12):
    """A conversation whose every prompt extends the previous prompt + reply (as the agent's)."""
    ids = tok(tok.apply_chat_template([{"role": "system", "content": "You answer briefly and accurately."},
                                       {"role": "user", "content": question}], add_generation_prompt=True,
                                      tokenize=False), add_special_tokens=False)["input_ids"]
    more = tok("\n<information>Paris is the capital of France.</information>\n", add_special_tokens=False)["input_ids"]

    async def run():
        nonlocal ids
        outs = []
        for _ in range(turns):
            g = await model.agenerate_ids(ids, max_new_tokens=n)
            outs.append(g)
            ids = ids + g.token_ids + more
        return outs
    return run


def test_prefix_cache_reuses_earlier_turns_and_changes_nothing(pair):
    cont, gen, _ = pair
    tok = cont.tokenizer
    qs = ["What is the capital of France?", "Who wrote Hamlet?", "Name a river."]

    async def all_of(model):
        return await asyncio.gather(*(_multi_turn(model, tok, q)() for q in qs))

    before = dict(cont.batch_stats)
    a = asyncio.run(all_of(cont))
    st = cont.batch_stats
    assert st["prefix_hits"] - before["prefix_hits"] >= len(qs) * 2  # turns 2 and 3 of every conversation
    assert st["prefix_reused_tokens"] > before["prefix_reused_tokens"]
    b = asyncio.run(all_of(gen))
    for x, y in zip(a, b):
        for g, h in zip(x, y):
            assert g.token_ids == h.token_ids
            assert g.logprobs == pytest.approx(h.logprobs, abs=2e-3)


def test_prefix_cache_is_dropped_when_the_weights_change(tiny_model_path):
    import torch

    from masksearch.models.local import LocalChatModel

    cont = LocalChatModel.from_spec(f"hf:{tiny_model_path}", max_new_tokens=8, batch_wait_ms=50)
    ref = LocalChatModel.from_model(cont.model, cont.tokenizer, engine="generate", max_new_tokens=8)
    prompt = list(range(100, 160))
    cont.generate_ids([prompt], max_new_tokens=8)
    cont.generate_ids([prompt + [7, 8, 9]], max_new_tokens=8)
    hits = cont.batch_stats["prefix_hits"]
    assert hits >= 1  # the same prefix, same weights: reused
    with torch.no_grad():  # an "optimiser step"
        for p in cont.model.parameters():
            p.mul_(1.5)
    after = cont.generate_ids([prompt + [7, 8, 9, 10]], max_new_tokens=8)[0]
    assert cont.batch_stats["prefix_hits"] == hits  # nothing stale was reused
    assert after.token_ids == ref.generate_ids([prompt + [7, 8, 9, 10]], max_new_tokens=8)[0].token_ids


@pytest.mark.parametrize("engine", ["continuous", "generate"])
def test_stop_ends_the_worker_and_a_later_call_starts_a_new_one(embedded_model, engine):
    from masksearch.models.local import LocalChatModel

    m = LocalChatModel.from_model(embedded_model.model, embedded_model.tokenizer, engine=engine, max_new_tokens=3)
    first = m.generate_ids([[1, 4093, 198]])[0]
    worker = m._batcher.thread
    assert worker is not None and worker.is_alive()
    m._batcher.stop(timeout=30)
    assert not worker.is_alive()  # what the atexit hook does for every live model
    again = m.generate_ids([[1, 4093, 198]])[0]
    assert again.token_ids == first.token_ids
