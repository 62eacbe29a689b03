"""Does the local model's dynamic batcher pay? Tokens/s of the embedded SmolLM2-135M for

(a) 32 sequential calls through our ``LocalChatModel`` (one at a time),
(b) the same 32 calls made concurrently through it (``asyncio.gather`` of ``ainvoke``),
(c) one direct, hand-written, left-padded ``model.generate`` of the same 32 prompts.

All greedy, ``max_new_tokens=64``. Tokens counted are the tokens actually generated per prompt
(up to and including end-of-turn), the same way in all three. Targets (issue 2):
``concurrent_over_direct >= 0.8`` and ``concurrent_over_sequential >= 5``.

    .venv/bin/python benchmarks/bench_batching.py [--n 32] [--new-tokens 64]

The last printed line is one JSON object with ``sequential_tps``, ``concurrent_tps``,
``direct_batched_tps``, ``concurrent_over_direct``, ``concurrent_over_sequential``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = [
    "photosynthesis", "the French Revolution", "black holes", "the water cycle", "how vaccines work",
    "the Roman Empire", "plate tectonics", "machine learning", "the Great Wall of China", "volcanoes",
    "the human heart", "electricity", "the Moon landing", "climate change", "DNA", "the Internet",
    "the Renaissance", "honey bees", "rainbows", "the Olympic Games", "earthquakes", "the printing press",
    "coral reefs", "the solar system", "antibiotics", "the Industrial Revolution", "gravity",
    "the Amazon rainforest", "jazz music", "the immune system", "glaciers", "the stock market",
]


def prompts(n: int) -> list[str]:
    styles = ["Explain {} in detail.", "Write a short paragraph about {}.", "Tell me three facts about {}.",
              "Describe {} to a ten-year-old."]
    return [styles[i % len(styles)].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="number of prompts (32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="max new tokens per prompt (64)")
    ap.add_argument("--sequential-n", type=int, default=None,
                    help="time only the first K sequential calls (tokens/s is a rate; for a busy machine)")
    args = ap.parse_args()

    import torch
    from langchain_core.messages import HumanMessage

    from masksearch.models import make_chat_model

    t0 = time.perf_counter()
    model = make_chat_model("smollm2", temperature=0.0, max_new_tokens=args.new_tokens,
                            max_batch_size=max(32, args.n))
    print(f"load: {time.perf_counter() - t0:.2f}s; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    qs = prompts(args.n)
    msgs = [[HumanMessage(q)] for q in qs]
    model.invoke(msgs[0], max_new_tokens=4)  # warm-up

    # (a) sequential
    t = time.perf_counter()
    k = min(args.sequential_n or args.n, args.n)
    seq = [model.invoke(m) for m in msgs[:k]]
    seq_s = time.perf_counter() - t
    seq_tokens = sum(len(r.response_metadata["token_ids"]) for r in seq)
    print(f"(a) sequential : {k} calls, {seq_tokens} tokens in {seq_s:.1f}s = {seq_tokens / seq_s:.1f} tok/s",
          flush=True)

    # (b) concurrent through our model
    async def together():
        return await asyncio.gather(*[model.ainvoke(m) for m in msgs])

    before = model.batch_stats["batches"]
    n_sizes = len(model.batch_stats["sizes"])
    t = time.perf_counter()
    con = asyncio.run(together())
    con_s = time.perf_counter() - t
    con_tokens = sum(len(r.response_metadata["token_ids"]) for r in con)
    sizes = model.batch_stats["sizes"][n_sizes:]
    print(f"(b) concurrent : {con_tokens} tokens in {con_s:.1f}s = {con_tokens / con_s:.1f} tok/s "
          f"(generate calls: {model.batch_stats['batches'] - before}, sizes {sizes})", flush=True)
    same = sum(a.response_metadata["token_ids"] == b.response_metadata["token_ids"] for a, b in zip(seq, con))
    print(f"    greedy outputs identical to sequential: {same}/{len(seq)}", flush=True)
    print(f"load average now: {os.getloadavg()[0]:.1f}", flush=True)

    # (c) one direct left-padded generate of the same prompts
    tok, lm = model.tokenizer, model.model
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in qs]
    side = tok.padding_side
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    eos = tok.eos_token_id
    t = time.perf_counter()
    with torch.inference_mode():
        out = lm.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                          eos_token_id=eos)
    dir_s = time.perf_counter() - t
    dir_tokens = 0
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        dir_tokens += (row.index(eos) + 1) if eos in row else len(row)
    print(f"(c) direct     : {dir_tokens} tokens in {dir_s:.1f}s = {dir_tokens / dir_s:.1f} tok/s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)

    seq_tps, con_tps, dir_tps = seq_tokens / seq_s, con_tokens / con_s, dir_tokens / dir_s
    print(json.dumps({
        "sequential_tps": round(seq_tps, 2),
        "concurrent_tps": round(con_tps, 2),
        "direct_batched_tps": round(dir_tps, 2),
        "concurrent_over_direct": round(con_tps / dir_tps, 3),
        "concurrent_over_sequential": round(con_tps / seq_tps, 3),
    }))


if __name__ == "__main__":
    main()
