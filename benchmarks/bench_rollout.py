"""Throughput of the GRPO rollout_func vs the raw batched ``generate`` ceiling.

8 questions x 4 generations = 32 student-graph rollouts with the embedded model (SmolLM2-135M)
and the real BM25 retriever over the shared corpus, through ``make_rollout_func`` exactly as
``GRPOTrainer`` calls it.  The ceiling is one left-padded batched ``generate`` over the same 32
first-turn prompts producing the same number of model tokens per sequence (no stops).  Then a real
``GRPOTrainer`` step with the same rollout_func splits a step's time into rollout vs optimisation.

    .venv/bin/python benchmarks/bench_rollout.py [--questions 8 --generations 4 --max-new-tokens 64]

Last line: JSON with ``rollout_tps``, ``ceiling_tps``, ``ratio`` and the step-time split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bm25_retriever(cache: Path):
    from masksearch.paths import shared_corpus
    from masksearch.retrieval import build_index, make_retriever

    idx = cache / "bm25-shared"
    if not idx.exists():
        build_index(str(shared_corpus()), kind="bm25", out=str(idx))
    return make_retriever(f"bm25:{idx}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="per policy turn")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=384)
    ap.add_argument("--grpo-steps", type=int, default=1, help="GRPOTrainer steps for the step-time split (0: skip)")
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from masksearch.data.qa import load_qa
    from masksearch.paths import home, shared_bench
    from masksearch.protocol import ensure_student_template
    from masksearch.training.grpo import RolloutSettings, example_row, make_rollout_func, resolve_model_path

    torch.manual_seed(0)
    path = resolve_model_path(args.model)
    tok = ensure_student_template(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    retriever = bm25_retriever(home())
    examples = load_qa(shared_bench("hotpotqa"), limit=args.questions)
    prompts = [ex.question for ex in examples for _ in range(args.generations)]
    settings = RolloutSettings(k=3, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, info_max_tokens=128)
    trainer = SimpleNamespace(model=model, processing_class=tok,
                              args=SimpleNamespace(max_completion_length=args.max_completion_length,
                                                   temperature=1.0, top_p=1.0))
    rollout = make_rollout_func(retriever, settings, examples=examples)
    print(f"warm-up: {args.generations} rollouts", flush=True)
    rollout(prompts[: args.generations], trainer)  # warm-up (thread start, first-call overheads)
    rollout.history.clear()
    print(f"timed: {len(prompts)} rollouts", flush=True)

    t0 = time.perf_counter()
    out = rollout(prompts, trainer)
    rollout_s = time.perf_counter() - t0
    model_tokens = sum(out["num_model_tokens"])
    env_tokens = sum(len(c) for c in out["completion_ids"]) - model_tokens
    turns = [len(t["steps"]) + (1 if t["final_raw"] else 0) for t in out["trajectory"]]
    status = {s: out["status"].count(s) for s in sorted(set(out["status"]))}
    rollout_tps = model_tokens / rollout_s

    # ceiling: one batched generate, same sequences, same tokens per sequence, no stopping
    per_seq = max(1, math.ceil(model_tokens / len(prompts)))
    first = out["prompt_ids"]
    width = max(len(p) for p in first)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(first), width), pad)
    att = torch.zeros((len(first), width), dtype=torch.long)
    for i, p in enumerate(first):
        ids[i, width - len(p):] = torch.tensor(p)
        att[i, width - len(p):] = 1
    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        g = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=per_seq, min_new_tokens=per_seq,
                           do_sample=True, temperature=1.0, top_p=1.0, pad_token_id=pad)
        ceil_s = time.perf_counter() - t0
    ceiling_tps = (g.shape[1] - width) * len(first) / ceil_s

    result = {
        "rollouts": len(prompts), "model_tokens": model_tokens, "env_tokens": env_tokens,
        "mean_turns": round(sum(turns) / len(turns), 2), "status": status,
        "mean_searches": round(sum(out["num_searches"]) / len(prompts), 2),
        "rollout_s": round(rollout_s, 2), "ceiling_s": round(ceil_s, 2),
        "rollout_tps": round(rollout_tps, 1), "ceiling_tps": round(ceiling_tps, 1),
        "ratio": round(rollout_tps / ceiling_tps, 3),
    }
    print(f"rollout: {len(prompts)} rollouts, {model_tokens} model + {env_tokens} env tokens in {rollout_s:.1f}s "
          f"({rollout_tps:.0f} tok/s), status {status}, mean turns {result['mean_turns']}", flush=True)
    print(f"ceiling: {len(first)} x {per_seq} tokens batched in {ceil_s:.1f}s ({ceiling_tps:.0f} tok/s)", flush=True)

    if args.grpo_steps > 0:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from masksearch.training.config import adapt_to_device
        from masksearch.training.rewards import format_reward, recall_reward

        ds = Dataset.from_list([example_row(ex) for ex in examples] * max(1, args.grpo_steps))
        with tempfile.TemporaryDirectory() as d:
            cfg = GRPOConfig(output_dir=d, max_steps=args.grpo_steps, per_device_train_batch_size=len(prompts),
                             num_generations=args.generations, max_completion_length=args.max_completion_length,
                             learning_rate=1e-6, logging_steps=1, report_to="none", save_strategy="no",
                             use_cpu=True, shuffle_dataset=False, reward_weights=[0.5, 1.0], bf16=False)
            adapt_to_device(cfg)  # as run_grpo does: no gradient checkpointing / bf16 without a GPU
            step_rollout = make_rollout_func(retriever, settings, examples=examples)
            trainer = GRPOTrainer(model=model, reward_funcs=[format_reward, recall_reward], args=cfg, train_dataset=ds,
                                  processing_class=tok, rollout_func=step_rollout)
            t0 = time.perf_counter()
            trainer.train()
            step_s = (time.perf_counter() - t0) / args.grpo_steps
        r_s = sum(h.seconds for h in step_rollout.history) / args.grpo_steps
        result.update(step_s=round(step_s, 2), step_rollout_s=round(r_s, 2), step_optim_s=round(step_s - r_s, 2),
                      rollout_share=round(r_s / step_s, 3))
        print(f"GRPO step: {step_s:.1f}s = rollout {r_s:.1f}s + optimisation (logprobs, loss, backward) "
              f"{step_s - r_s:.1f}s", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
