"""Training throughput: SFT and GRPO tokens/s, today's configuration vs the adopted one, in one run.

Both use the embedded SmolLM2-135M and TRL's real trainers.

* **SFT**: rows of the provenance teacher (RAMP questions from the shared corpus, real BM25
  searches, ``info_max_tokens=300`` as ``exp_sft`` makes them): ~850 tokens, of which ~130 carry
  loss.  *Before*: 4 padded rows per step, TRL's fused LM head on every position (what a CPU gets
  by default).  *After*: ``fast_lm_head`` (the head only on loss positions) and each row its own
  micro-batch (``padding_free_accumulation``: no padding, same rows per optimizer step).
* **GRPO**: the optimisation of real student-graph rollouts.  The rollouts are made once with the
  embedded model and the BM25 retriever, then *replayed* to every trainer, so all optimise exactly
  the same completions and the loss can be compared step by step.  *Before*: one forward/backward
  over the padded generation batch, head on every position.  *Unpadded* (the previously adopted
  path): ``fast_lm_head`` and micro-batches of ``--grpo-micro-batch`` completions
  (``steps_per_generation`` = ``gradient_accumulation_steps``, so there is still one optimizer step
  per generation batch and TRL needs no second forward pass for old log-probs).  *After*:
  ``share_prompt_prefix`` (:mod:`masksearch.training.prefix_sharing`): the generation batch is one
  micro-batch, each group's prompt runs once, each completion on the prompt's cached keys/values
  without padding, the head on the model's own tokens only.

On a CPU with native bf16 (``avx512_bf16`` / AMX: ``masksearch.training.config.cpu_bf16_native``)
the adopted configuration is also measured under bf16 autocast (``*_bf16``; ``--bf16 true
--use_cpu true`` of ``masksearch train``, opt-in because it does not keep the loss); ``--equal-loss-steps N`` trains
N SFT steps both ways on the same rows and prints the two loss curves; ``--no-bf16`` skips it.

Tokens/s counts the real (unpadded) tokens a step trains on: the rows for SFT, prompt + completion
for GRPO, divided by the **CPU time** of the optimizer steps (all threads of the process), which is
what stays comparable on a shared machine; wall-clock tokens/s are printed too (``*_wall``).  The loss of each step is printed for both
configurations ("equal loss").

    .venv/bin/python benchmarks/bench_train.py [--sft-steps 2 --completions 8 --generations 4]

Last line: JSON with ``sft_tok_s_before/after``, ``sft_speedup``, ``grpo_tok_s_before/after``,
``grpo_speedup`` and the losses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and CPU time (all threads of this process) of every optimizer step.  On a shared
        machine the CPU time is the stable measure of the work: wall time also counts the time other
        jobs held the cores."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.seconds.append(time.perf_counter() - self.t0)
            self.cpu_seconds.append(time.process_time() - self.c0)

    return StepTimer()


def losses(trainer) -> list[float]:
    return [round(float(h["loss"]), 5) for h in trainer.state.log_history if "loss" in h and "step" in h]


# ----------------------------------------------------------------------------- data
def sft_rows(cache: Path, retriever, n: int) -> list[dict]:
    from masksearch.data.qa import load_qa
    from masksearch.data.ramp import generate_ramp
    from masksearch.paths import shared_corpus
    from masksearch.training.export import trajectory_to_sft_row
    from masksearch.training.provenance import run_provenance

    ramp = cache / "ramp.jsonl"
    generate_ramp(str(shared_corpus()), ramp, n=max(n * 2, 16), seed=0, progress=False)
    rows = []
    for ex in load_qa(ramp):
        traj = run_provenance(ex, retriever, k=3, info_max_tokens=300)
        if traj.status != "answered" or traj.metadata.get("accepted") is False:
            continue
        try:
            rows.append({"id": traj.id, "messages": trajectory_to_sft_row(traj)["messages"], "teacher": "provenance",
                         "mask_count": traj.metadata.get("mask_count"), "kind": "ramp"})
        except ValueError:
            continue
        if len(rows) == n:
            break
    return rows


# ----------------------------------------------------------------------------- SFT
def run_sft_config(name: str, rows: list[dict], steps: int, batch: int, fast: bool, split: bool, workdir: Path,
                   spec: str = "smollm2", bf16: bool = False) -> dict:
    import torch
    from trl import SFTConfig

    from masksearch.training.config import SFTScriptArguments
    from masksearch.training.sft import build_sft_trainer, load_student, prepare_config, tokenize_row
    from masksearch.training.speed import fast_lm_head

    torch.manual_seed(0)
    model, tok = load_student(spec)
    script = SFTScriptArguments(model=spec, curriculum="none", fast_lm_head=fast, padding_free_accumulation=split,
                                plot=False)
    cfg = SFTConfig(output_dir=str(workdir / name), max_steps=steps, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=1, learning_rate=5e-5, lr_scheduler_type="constant", logging_steps=1,
                    save_strategy="no", report_to="none", bf16=bf16, gradient_checkpointing=False, max_length=1024,
                    seed=42, train_sampling_strategy="sequential", use_cpu=True)
    cfg = prepare_config(script, cfg)
    timer = step_timer()
    trainer = build_sft_trainer(script, cfg, rows, model=model, tokenizer=tok)
    trainer.add_callback(timer)
    with fast_lm_head(fast):
        trainer.train()
    used = rows[: steps * batch]
    toks = [len(tokenize_row(tok, r["messages"])["input_ids"]) for r in used]
    seconds, cpu = sum(timer.seconds), sum(timer.cpu_seconds)
    return {"name": name, "steps": steps, "rows_per_step": batch,
            "micro_batch": cfg.per_device_train_batch_size, "accumulation": cfg.gradient_accumulation_steps,
            "fast_lm_head": fast, "bf16": bool(cfg.bf16), "tokens": sum(toks), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "step_seconds": [round(s, 2) for s in timer.seconds], "tok_s": round(sum(toks) / cpu, 1),
            "tok_s_wall": round(sum(toks) / seconds, 1), "loss": losses(trainer)}


def bf16_probe(rows: list[dict], spec: str, repeats: int = 1, tokens: int = 384) -> dict:
    """Forward + backward of one row (its first ``tokens``) in float32 and under CPU bf16 autocast."""
    import torch

    from masksearch.training.sft import load_student, tokenize_row

    model, tok = load_student(spec)
    ids = torch.tensor([tokenize_row(tok, rows[0]["messages"])["input_ids"][:tokens]])
    times = {}
    for name, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        best = float("inf")
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            t0 = time.process_time()
            with ctx:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            best = min(best, time.process_time() - t0)
        times[name] = round(best, 2)
    from masksearch.training.config import cpu_bf16_native

    return {"fp32_s": times["fp32"], "bf16_s": times["bf16"], "bf16_speedup": round(times["fp32"] / times["bf16"], 2),
            "cpu_bf16_native": cpu_bf16_native(), "tokens": int(ids.shape[1])}


# ----------------------------------------------------------------------------- GRPO
class Replay:
    """A rollout_func that hands back recorded rollout batches, in order (same completions for both
    configurations); ``pop_metrics`` for the trainer's log like the real rollout."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches
        self.calls = 0

    def __call__(self, prompts, trainer):  # noqa: ANN001
        out = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        return {k: list(v) for k, v in out.items()}

    def pop_metrics(self, mode: str = "train") -> dict:
        return {}


def record_rollouts(retriever, examples, steps: int, completions: int, generations: int, max_completion: int,
                    max_new_tokens: int, max_turns: int, spec: str = "smollm2") -> tuple[list[dict], list[list], float]:
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from masksearch.protocol import ensure_student_template
    from masksearch.training.grpo import RolloutSettings, make_rollout_func, resolve_model_path

    torch.manual_seed(0)
    path = resolve_model_path(spec)
    tok = ensure_student_template(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    settings = RolloutSettings(k=3, max_turns=max_turns, max_new_tokens=max_new_tokens, info_max_tokens=160)
    trainer = SimpleNamespace(model=model, processing_class=tok,
                              args=SimpleNamespace(max_completion_length=max_completion, temperature=1.0, top_p=1.0))
    rollout = make_rollout_func(retriever, settings, examples=examples)
    per_step = completions // generations
    batches, prompts = [], []
    c0 = time.process_time()
    for s in range(steps):
        qs = [e.question for e in examples[s * per_step:(s + 1) * per_step] for _ in range(generations)]
        batches.append(rollout(qs, trainer))
        prompts.append(qs)
    return batches, prompts, time.process_time() - c0


def run_grpo_config(name: str, batches: list[dict], examples, steps: int, completions: int, generations: int,
                    max_completion: int, micro: int, fast: bool, workdir: Path, spec: str = "smollm2",
                    bf16: bool = False, share: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from masksearch.protocol import ensure_student_template
    from masksearch.training.config import adapt_to_device
    from masksearch.training.grpo import example_row, resolve_model_path, student_grpo_trainer_class
    from masksearch.training.rewards import format_reward, make_length_penalty, recall_reward
    from masksearch.training.speed import fast_lm_head

    torch.manual_seed(0)
    path = resolve_model_path(spec)
    tok = ensure_student_template(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    per_step = completions // generations
    ds = Dataset.from_list([example_row(e) for e in examples[: steps * per_step]])
    accum = completions // micro
    cfg = GRPOConfig(output_dir=str(workdir / name), max_steps=steps, per_device_train_batch_size=micro,
                     gradient_accumulation_steps=accum, steps_per_generation=accum, num_generations=generations,
                     max_completion_length=max_completion, learning_rate=1e-5, lr_scheduler_type="constant",
                     loss_type="dapo", beta=0.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                     shuffle_dataset=False, reward_weights=[0.5, 1.0, 1.0], seed=0, bf16=bf16)
    adapt_to_device(cfg)
    timer = step_timer()
    replay = Replay(batches)
    # the untrained model earns no format/recall reward; a length penalty gives every group a spread,
    # so the loss is not trivially 0 and "equal loss" means something
    rewards = [format_reward, recall_reward, make_length_penalty(soft=32, hard=160)]
    trainer = student_grpo_trainer_class()(model=model, reward_funcs=rewards, args=cfg,
                                           train_dataset=ds, processing_class=tok, rollout_func=replay,
                                           callbacks=[timer])
    trainer.share_prompt_prefix = share
    with fast_lm_head(fast):
        trainer.train()
    toks = sum(len(p) + len(c) for b in batches[:steps] for p, c in zip(b["prompt_ids"], b["completion_ids"]))
    seconds, cpu = sum(timer.seconds), sum(timer.cpu_seconds)
    return {"name": name, "steps": steps, "completions_per_step": completions, "micro_batch": micro,
            "accumulation": accum, "fast_lm_head": fast, "share_prompt_prefix": share, "bf16": bool(cfg.bf16), "tokens": toks, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2), "step_seconds": [round(s, 2) for s in timer.seconds],
            "tok_s": round(toks / cpu, 1), "tok_s_wall": round(toks / seconds, 1),
            "loss": losses(trainer), "replayed_batches": replay.calls}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-steps", type=int, default=1)
    ap.add_argument("--sft-batch", type=int, default=4, help="rows per SFT optimizer step")
    ap.add_argument("--grpo-steps", type=int, default=1)
    ap.add_argument("--completions", type=int, default=4, help="completions per GRPO step")
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--grpo-micro-batch", type=int, default=1, help="completions per forward/backward of the unpadded row")
    ap.add_argument("--max-completion-length", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--skip", choices=["sft", "grpo"], default=None)
    ap.add_argument("--model", default="smollm2", help="smollm2 (the embedded SmolLM2-135M) or a local model folder")
    ap.add_argument("--no-bf16-probe", action="store_true", help="skip the fp32 vs bf16-autocast probe")
    ap.add_argument("--equal-loss-steps", type=int, default=0,
                    help="with native bf16: also train the adopted SFT configuration this many steps in float32 and "
                         "in bf16 on the same rows and print both loss curves")
    ap.add_argument("--no-bf16", action="store_true", help="skip the opt-in bf16 measurement on a CPU with native bf16")
    args = ap.parse_args(argv)

    import torch

    from masksearch.data.qa import load_qa
    from masksearch.paths import home, shared_bench, shared_corpus
    from masksearch.retrieval import build_index, make_retriever
    from masksearch.training.config import cpu_bf16_native

    t_all = time.perf_counter()
    cache = home() / "bench_train"
    cache.mkdir(parents=True, exist_ok=True)
    idx = home() / "bm25-shared"
    if not idx.exists():
        build_index(str(shared_corpus()), kind="bm25", out=str(idx), progress=False)
    retriever = make_retriever(f"bm25:{idx}", k=3)
    # where the CPU runs bf16 natively, the adopted configuration is measured under bf16 autocast too
    # (opt-in: `--bf16 true --use_cpu true`), as a row of its own
    bf16 = cpu_bf16_native() and not args.no_bf16
    result: dict = {"torch_threads": torch.get_num_threads(), "load_avg_start": round(os.getloadavg()[0], 1),
                    "cpu_bf16_native": cpu_bf16_native()}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if args.skip != "sft":
            rows = sft_rows(cache, retriever, args.sft_steps * args.sft_batch)
            print(f"SFT: {len(rows)} provenance rows, {args.sft_steps} steps of {args.sft_batch}", flush=True)
            before = run_sft_config("sft_before", rows, args.sft_steps, args.sft_batch, fast=False, split=False, workdir=work, spec=args.model)
            print("SFT before:", json.dumps(before), flush=True)
            after = run_sft_config("sft_after", rows, args.sft_steps, args.sft_batch, fast=True, split=True, workdir=work,
                                   spec=args.model)
            print("SFT after: ", json.dumps(after), flush=True)
            if bf16:
                b = run_sft_config("sft_after_bf16", rows, args.sft_steps, args.sft_batch, fast=True, split=True,
                                   workdir=work, spec=args.model, bf16=True)
                print("SFT after + bf16 (opt-in):", json.dumps(b), flush=True)
                result.update(sft_tok_s_bf16=b["tok_s"], sft_loss_bf16=b["loss"],
                              sft_speedup_bf16=round(b["tok_s"] / before["tok_s"], 2))
            ratio = after["tok_s"] / before["tok_s"]
            print(f"SFT: {before['tok_s']:.0f} -> {after['tok_s']:.0f} tokens/s ({ratio:.2f}x); "
                  f"loss per step {before['loss']} vs {after['loss']}", flush=True)
            if bf16 and args.equal_loss_steps:
                n = args.equal_loss_steps
                long_rows = sft_rows(cache, retriever, n * args.sft_batch)
                curves = {}
                for prec in ("fp32", "bf16"):
                    r = run_sft_config(f"loss_{prec}", long_rows, n, args.sft_batch, fast=True, split=True, workdir=work,
                                       spec=args.model, bf16=prec == "bf16")
                    curves[prec] = r["loss"]
                    curves[f"{prec}_cpu_seconds"] = r["cpu_seconds"]
                half = n // 2
                gap = [abs(lo - fp) / fp for fp, lo in zip(curves["fp32"][half:], curves["bf16"][half:]) if fp]
                curves["mean_rel_gap_second_half"] = round(sum(gap) / len(gap), 4) if gap else None
                print(f"SFT {n} steps, float32 vs bf16 loss: {curves['fp32']} vs {curves['bf16']} "
                      f"(mean relative gap over the second half {curves['mean_rel_gap_second_half']})", flush=True)
                result["sft_equal_loss"] = curves
            if not args.no_bf16_probe:
                probe = bf16_probe(rows, args.model)
                print(f"bf16 autocast probe (1 row fwd+bwd): {json.dumps(probe)}", flush=True)
                result["bf16_probe"] = probe
            result.update(sft_tok_s_before=before["tok_s"], sft_tok_s_after=after["tok_s"], sft_speedup=round(ratio, 2),
                          sft_loss_before=before["loss"], sft_loss_after=after["loss"],
                          sft_tokens_per_row=round(before["tokens"] / len(rows[: args.sft_steps * args.sft_batch]), 1),
                          sft_cpu_s_before=before["cpu_seconds"], sft_cpu_s_after=after["cpu_seconds"],
                          sft_tok_s_wall_before=before["tok_s_wall"], sft_tok_s_wall_after=after["tok_s_wall"])
        if args.skip != "grpo":
            examples = load_qa(shared_bench("hotpotqa"), limit=args.grpo_steps * args.completions // args.generations)
            batches, _, rollout_s = record_rollouts(retriever, examples, args.grpo_steps, args.completions,
                                                    args.generations, args.max_completion_length, args.max_new_tokens,
                                                    args.max_turns, spec=args.model)
            print(f"GRPO: {args.grpo_steps} x {args.completions} rollouts recorded in {rollout_s:.1f} CPU-s", flush=True)
            common = dict(steps=args.grpo_steps, completions=args.completions, generations=args.generations,
                          max_completion=args.max_completion_length, workdir=work, spec=args.model)
            before = run_grpo_config("grpo_before", batches, examples, micro=args.completions, fast=False, **common)
            print("GRPO before:", json.dumps(before), flush=True)
            unpadded = run_grpo_config("grpo_unpadded", batches, examples, micro=args.grpo_micro_batch, fast=True,
                                       **common)
            print("GRPO unpadded micro-batches (the previous adopted path):", json.dumps(unpadded), flush=True)
            after = run_grpo_config("grpo_after", batches, examples, micro=args.completions, fast=True, share=True,
                                    **common)
            print("GRPO after (shared prompt prefix): ", json.dumps(after), flush=True)
            result.update(grpo_tok_s_unpadded=unpadded["tok_s"], grpo_loss_unpadded=unpadded["loss"],
                          grpo_speedup_unpadded=round(unpadded["tok_s"] / before["tok_s"], 2))
            if bf16:
                b = run_grpo_config("grpo_after_bf16", batches, examples, micro=args.completions, fast=True,
                                    bf16=True, share=True, **common)
                print("GRPO after + bf16 (opt-in):", json.dumps(b), flush=True)
                result.update(grpo_tok_s_bf16=b["tok_s"], grpo_loss_bf16=b["loss"],
                              grpo_speedup_bf16=round(b["tok_s"] / before["tok_s"], 2))
            ratio = after["tok_s"] / before["tok_s"]
            per_step_rollout = rollout_s / args.grpo_steps
            whole = ((per_step_rollout + before["cpu_seconds"] / args.grpo_steps)
                     / (per_step_rollout + after["cpu_seconds"] / args.grpo_steps))
            print(f"GRPO optimisation: {before['tok_s']:.0f} -> {after['tok_s']:.0f} tokens/s ({ratio:.2f}x); "
                  f"whole step with rollout {whole:.2f}x; loss per step {before['loss']} vs {after['loss']}", flush=True)
            result.update(grpo_tok_s_before=before["tok_s"], grpo_tok_s_after=after["tok_s"], grpo_speedup=round(ratio, 2),
                          grpo_loss_before=before["loss"], grpo_loss_after=after["loss"],
                          grpo_optim_cpu_s_before=before["cpu_seconds"], grpo_optim_cpu_s_after=after["cpu_seconds"],
                          grpo_tok_s_wall_before=before["tok_s_wall"], grpo_tok_s_wall_after=after["tok_s_wall"],
                          grpo_rollout_s_per_step=round(per_step_rollout, 2), grpo_whole_step_speedup=round(whole, 2),
                          grpo_micro_batch=args.grpo_micro_batch)
    result["load_avg_end"] = round(os.getloadavg()[0], 1)
    result["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
