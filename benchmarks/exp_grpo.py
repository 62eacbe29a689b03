"""Experiment: GRPO on 1-mask RAMP questions with the embedded model (or an SFT checkpoint).

1. RAMP questions with one mask from the shared corpus (``generate_ramp``, rules strategy),
   split into training and held-out questions;
2. before: the student graph (greedy) on the held-out split -> format-valid rate, answer token
   recall, mean searches;
3. GRPO with TRL (``run_grpo``: student-graph rollouts, format + recall rewards) for a fixed
   budget of steps; mean reward per step is plotted;
4. after: the same evaluation with the trained policy.

    .venv/bin/python benchmarks/exp_grpo.py [--model hf:runs/sft] [--steps 12] [--heldout 24]
    .venv/bin/python benchmarks/exp_grpo.py --compare-dynamic-sampling [--steps 6 --heldout 0]

``--dynamic-sampling`` turns on DAPO's dynamic sampling (groups whose rewards are all equal are
replaced by groups of fresh prompts, at most ``--max-resample-rounds`` refills a step).
``--compare-dynamic-sampling`` trains twice from the same start, with the same seed, without and
with it, and plots reward and the share of zero-signal groups per step of both
(``docs/img/grpo_dynamic_sampling.png``).

Defaults keep it within ~15 minutes on 2 CPU cores.  ``--model`` defaults to the SFT checkpoint at
``runs/sft`` when one is there, else the embedded SmolLM2-135M-Instruct.  Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate(model, tok, retriever, examples, settings) -> dict:
    """Greedy student-graph runs on ``examples`` through the same rollout function GRPO uses."""
    from masksearch.training.grpo import make_rollout_func
    from masksearch.training.rewards import format_reward, recall_reward

    rollout = make_rollout_func(retriever, settings, examples=examples)
    trainer = SimpleNamespace(model=model, processing_class=tok,
                              args=SimpleNamespace(max_completion_length=settings.max_completion_tokens,
                                                   temperature=0.0, top_p=1.0))
    prompts = [e.question for e in examples]
    t0 = time.perf_counter()
    out = rollout(prompts, trainer)
    extra = {k: v for k, v in out.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
    fmt = format_reward(prompts, [""] * len(prompts), **extra)
    rec = recall_reward(prompts, [""] * len(prompts), **extra)
    n = len(prompts)
    return {
        "format_valid": round(sum(fmt) / n, 3),
        "answer_recall": round(sum(rec) / n, 3),
        "answered": round(out["status"].count("answered") / n, 3),
        "mean_searches": round(sum(out["num_searches"]) / n, 2),
        "mean_model_tokens": round(sum(out["num_model_tokens"]) / n, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def plot_comparison(runs: dict, path: str) -> None:
    """Reward and share of zero-signal groups per step, without vs with dynamic sampling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        label = "dynamic sampling" if name == "dynamic" else "without"
        ax1.plot(range(1, len(r["reward_per_step"]) + 1), r["reward_per_step"], marker="o", label=label)
        ax2.plot(range(1, len(r["frac_zero_std_per_step"]) + 1), r["frac_zero_std_per_step"], marker="o", label=label)
    ax1.set_xlabel("step"), ax1.set_ylabel("mean reward of the trained batch"), ax1.set_title("GRPO reward per step")
    ax2.set_xlabel("step"), ax2.set_ylabel("share of groups with all-equal rewards")
    ax2.set_title("groups that teach nothing (TRL frac_reward_zero_std)")
    ax1.legend(), ax2.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="smollm2 | hf:PATH (default: runs/sft if present)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--train", type=int, default=64, help="training questions")
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--loss-type", default="dapo")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="completions per step")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=320)
    ap.add_argument("--out", default=str(ROOT / "runs" / "exp_grpo"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "img" / "grpo_reward.png"))
    ap.add_argument("--dynamic-sampling", action="store_true", help="DAPO dynamic sampling")
    ap.add_argument("--max-resample-rounds", type=int, default=2)
    ap.add_argument("--compare-dynamic-sampling", action="store_true",
                    help="train without and with dynamic sampling from the same start; plot both")
    ap.add_argument("--compare-figure", default=str(ROOT / "docs" / "img" / "grpo_dynamic_sampling.png"))
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from masksearch.data.qa import load_qa
    from masksearch.data.ramp import generate_ramp
    from masksearch.paths import home, shared_corpus
    from masksearch.protocol import ensure_student_template
    from masksearch.retrieval import build_index, make_retriever
    from masksearch.training.grpo import RolloutSettings, parse_args, resolve_model_path, run_grpo

    t_start = time.perf_counter()
    torch.manual_seed(0)
    spec = args.model or ("hf:" + str(ROOT / "runs" / "sft") if (ROOT / "runs" / "sft" / "config.json").exists() else "smollm2")
    path = resolve_model_path(spec)
    cache = home() / "exp_grpo"
    cache.mkdir(parents=True, exist_ok=True)
    idx = home() / "bm25-shared"
    if not idx.exists():
        build_index(str(shared_corpus()), kind="bm25", out=str(idx))
    retriever = make_retriever(f"bm25:{idx}")
    ramp = cache / "ramp_1mask.jsonl"
    n_total = args.train + args.heldout
    generate_ramp(str(shared_corpus()), ramp, n=n_total, strategy="rules", max_masks=1, seed=7, progress=False)
    examples = load_qa(ramp, limit=n_total)
    train_qs, held = examples[: args.train], examples[args.train:]
    print(f"RAMP: {len(train_qs)} training / {len(held)} held-out 1-mask questions; model {spec}", flush=True)

    settings = RolloutSettings(k=3, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, info_max_tokens=160,
                               max_completion_tokens=args.max_completion_length)
    tok = ensure_student_template(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    before = evaluate(model, tok, retriever, held, settings) if held and not args.compare_dynamic_sampling else None
    print("before:", json.dumps(before), flush=True)

    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def train(dynamic: bool, out_dir: Path) -> dict:
        shutil.rmtree(out_dir, ignore_errors=True)
        model.load_state_dict(init_state)
        torch.manual_seed(0)
        script, targs, margs = parse_args([
            "--config", str(ROOT / "configs" / "grpo.yaml"), "--model_name_or_path", path, "--output_dir", str(out_dir),
            "--retriever", f"bm25:{idx}", "--max_steps", str(args.steps), "--learning_rate", str(args.lr),
            "--per_device_train_batch_size", str(args.batch), "--num_generations", str(args.num_generations),
            "--max_completion_length", str(args.max_completion_length), "--max_new_tokens", str(args.max_new_tokens),
            "--max_turns", str(args.max_turns), "--info_max_tokens", "160", "--loss_type", args.loss_type,
            "--curriculum", "none", "--warmup_steps", "0", "--seed", "0",
            "--dynamic_sampling", str(dynamic).lower(), "--max_resample_rounds", str(args.max_resample_rounds),
        ])
        t0 = time.perf_counter()
        summary = run_grpo(script, targs, margs, retriever=retriever, examples=train_qs, model=model, tokenizer=tok)
        summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
        summary["rows"] = [json.loads(line) for line in open(summary["log"])]
        return summary

    def per_step(rows: list[dict], key: str) -> list[float]:
        return [round(r[key], 4) for r in rows if "reward" in r and key in r]

    if args.compare_dynamic_sampling:
        runs = {}
        for dynamic in (False, True):
            name = "dynamic" if dynamic else "plain"
            s_ = train(dynamic, Path(args.out) / name)
            runs[name] = {"reward_per_step": per_step(s_["rows"], "reward"),
                          "frac_zero_std_per_step": per_step(s_["rows"], "frac_reward_zero_std"),
                          "groups_dropped_per_step": per_step(s_["rows"], "dynamic_sampling/groups_dropped"),
                          "extra_rollouts_per_step": per_step(s_["rows"], "dynamic_sampling/extra_rollouts"),
                          "rollouts": s_["rollouts"], "rollout_seconds": s_["rollout_seconds"],
                          "train_seconds": s_["wall_seconds"]}
            print(name, json.dumps(runs[name]), flush=True)
        plot_comparison(runs, args.compare_figure)
        for r in runs.values():
            rw = r["reward_per_step"]
            r["mean_reward"] = round(sum(rw) / max(1, len(rw)), 4)
            z = r["frac_zero_std_per_step"]
            r["mean_frac_zero_std"] = round(sum(z) / max(1, len(z)), 4)
        print(json.dumps({"model": spec, "steps": args.steps, "completions_per_step": args.batch,
                          "num_generations": args.num_generations, "max_resample_rounds": args.max_resample_rounds,
                          "plain": runs["plain"], "dynamic": runs["dynamic"], "plot": args.compare_figure,
                          "total_seconds": round(time.perf_counter() - t_start, 1)}))
        return 0

    out_dir = Path(args.out)
    t0 = time.perf_counter()
    summary = train(args.dynamic_sampling, out_dir)
    train_s = time.perf_counter() - t0
    rows = summary["rows"]
    rewards = [round(r["reward"], 4) for r in rows if "reward" in r]
    if summary.get("plot"):
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(summary["plot"], args.figure)

    trained = summary["trainer"].model
    after = evaluate(trained, tok, retriever, held, settings) if held else None
    print("after:", json.dumps(after), flush=True)
    result = {
        "model": spec, "steps": summary["steps"], "train_questions": len(train_qs), "heldout": len(held),
        "completions_per_step": args.batch, "num_generations": args.num_generations, "loss_type": args.loss_type,
        "lr": args.lr, "train_seconds": round(train_s, 1), "rollout_seconds": summary["rollout_seconds"],
        "dynamic_sampling": args.dynamic_sampling,
        "reward_per_step": rewards,
        "reward_first3": round(sum(rewards[:3]) / max(1, len(rewards[:3])), 3),
        "reward_last3": round(sum(rewards[-3:]) / max(1, len(rewards[-3:])), 3),
        "before": before, "after": after, "plot": args.figure if summary.get("plot") else None,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
