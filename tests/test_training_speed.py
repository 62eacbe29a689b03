"""The training speed-ups change the work, not the loss: ``fast_lm_head`` (TRL's fused LM head on
loss positions only) and padding-free accumulation (one row per micro-batch on a CPU)."""

from __future__ import annotations

import pytest


def _spy(monkeypatch):
    """Record how many positions each fused-head call projects."""
    import trl.trainer.utils as tu

    seen: list[int] = []
    real = tu._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            seen.append(int(hidden.shape[0]))
            return real.apply(hidden, *args)

    monkeypatch.setattr(tu, "_ChunkedLogProbFunction", Spy)
    return seen


def test_fast_lm_head_projects_only_label_positions_with_the_same_loss_and_grads(fused_tiny, monkeypatch):
    import torch

    from masksearch.training.speed import fast_lm_head

    seen = _spy(monkeypatch)
    ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :30] = -100  # like a row whose loss is only on the last turn
    labels[1, 36:] = -100  # and padding

    def run():
        fused_tiny.zero_grad(set_to_none=True)
        out = fused_tiny(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in fused_tiny.named_parameters() if p.grad is not None}
        return out, grads

    ref, ref_grads = run()
    with fast_lm_head() as active:
        fast, fast_grads = run()
    assert active
    n_label = int((labels[:, 1:] != -100).sum())
    assert seen == [2 * 39, n_label] and n_label == 10 + 6  # all positions, then only those that carry loss
    assert torch.allclose(fast.loss, ref.loss, atol=1e-6)
    for name in ("log_probs", "entropy", "is_top1"):
        assert torch.allclose(getattr(fast, name).float(), getattr(ref, name).float(), atol=1e-5), name
    assert ref_grads.keys() == fast_grads.keys()
    assert all(torch.allclose(fast_grads[k], ref_grads[k], atol=1e-6) for k in ref_grads)
    # the switch is undone after the block, and a disabled block changes nothing
    import trl.trainer.utils as tu

    assert tu._use_triton(torch.device("cpu")) is False
    with fast_lm_head(False) as active:
        assert not active and tu._use_triton(torch.device("cpu")) is False


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        info = " ".join(f"word{j}" for j in range(20 + 15 * i))  # rows of different lengths: a padded batch
        rows.append({"messages": [
            {"role": "system", "content": "You search."},
            {"role": "user", "content": f"Question {i}: where is the [mask] tower?"},
            {"role": "assistant", "content": "<think> Search. </think>\n<search> tower </search>"},
            {"role": "user", "content": f"<information>{info}</information>"},
            {"role": "assistant", "content": f"<think> Found it. </think>\n<answer> Paris {i} </answer>"},
        ], "teacher": "provenance", "mask_count": 1})
    return rows


@pytest.mark.slow
def test_padding_free_accumulation_trains_the_same_step(tiny_model_path, tmp_path):
    """A 4-row padded batch and 4 one-row micro-batches give the same loss and the same update."""
    import torch
    from trl import SFTConfig

    from masksearch.training.config import SFTScriptArguments
    from masksearch.training.sft import build_sft_trainer, load_student, prepare_config

    rows = _rows(4)

    def one_step(split: bool, fast: bool):
        from masksearch.training.speed import fast_lm_head

        torch.manual_seed(0)
        model, tok = load_student(f"hf:{tiny_model_path}")
        script = SFTScriptArguments(model=f"hf:{tiny_model_path}", curriculum="none", plot=False,
                                    padding_free_accumulation=split, fast_lm_head=fast)
        cfg = SFTConfig(output_dir=str(tmp_path / f"s{split}{fast}"), max_steps=1, per_device_train_batch_size=4,
                        learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", logging_steps=1,
                        save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False, max_length=512,
                        seed=0, train_sampling_strategy="sequential", use_cpu=True)
        cfg = prepare_config(script, cfg)
        trainer = build_sft_trainer(script, cfg, rows, model=model, tokenizer=tok)
        with fast_lm_head(fast):
            trainer.train()
        loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
        return cfg, loss, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    cfg_a, loss_a, w_a = one_step(split=False, fast=False)
    cfg_b, loss_b, w_b = one_step(split=True, fast=True)
    assert (cfg_a.per_device_train_batch_size, cfg_a.gradient_accumulation_steps) == (4, 1)
    assert (cfg_b.per_device_train_batch_size, cfg_b.gradient_accumulation_steps) == (1, 4)
    assert loss_b == pytest.approx(loss_a, rel=1e-4)
    moved = max(float((w_a[k] - w_b[k]).abs().max()) for k in w_a)
    changed = max(float((w_a[k] - load_student(f"hf:{tiny_model_path}")[0].state_dict()[k]).abs().max()) for k in
                  ("model.embed_tokens.weight",))
    assert changed > 1e-4 and moved < 1e-5, (changed, moved)  # it trained, and both trained the same


def test_grpo_micro_batches_keep_the_generation_batch():
    from masksearch.training.grpo import parse_args, prompts_per_step, unpad_micro_batches

    _, args, _ = parse_args(["--config", "configs/grpo.yaml", "--per_device_train_batch_size", "8",
                             "--num_generations", "4", "--loss_type", "dapo"])
    before = (args.generation_batch_size, prompts_per_step(args))
    unpad_micro_batches(args)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (1, 8, 8)
    assert (args.generation_batch_size, prompts_per_step(args)) == before == (8, 2)
    # TRL computes old log-probs (a second forward pass) only when these are misaligned
    assert args.gradient_accumulation_steps % (args.steps_per_generation * args.num_iterations) == 0
    _, bnpo, _ = parse_args(["--config", "configs/grpo.yaml", "--per_device_train_batch_size", "8", "--loss_type", "bnpo"])
    assert unpad_micro_batches(bnpo).per_device_train_batch_size == 8  # its normaliser is per micro-batch: left alone


def test_adapt_to_device_really_turns_checkpointing_off_on_cpu():
    """transformers 5 reads `activation_checkpointing`; setting its old alias after construction did
    nothing, so a GRPOConfig built in code kept TRL's default (recompute every forward pass)."""
    from trl import GRPOConfig

    from masksearch.training.config import _has_gpu, adapt_to_device

    cfg = GRPOConfig(output_dir="/tmp/ms-adapt", use_cpu=True, bf16=False)
    if _has_gpu():
        pytest.skip("CPU-only behaviour")
    assert cfg.activation_checkpointing  # TRL's default
    adapt_to_device(cfg)
    assert cfg.activation_checkpointing is False and cfg.gradient_checkpointing is False


@pytest.mark.parametrize("native", [False, True])
def test_adapt_to_device_keeps_bf16_autocast_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    """The config turns bf16 into `mixed_precision` when it is built, and the Trainer's Accelerator
    autocasts by that. On a CPU without native bf16 a GRPOConfig built in code (TRL's default
    bf16=True) trained under emulated bf16, ~10x slower, although `adapt_to_device` had set
    bf16=False; on one with avx512_bf16 the same autocast is ~1.4x faster a step than float32 (at a
    higher loss), so a config that asks for it keeps it."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Trainer
    from trl import GRPOConfig

    from masksearch.training import config as tc

    if tc._has_gpu():
        pytest.skip("CPU-only behaviour")
    monkeypatch.setattr(tc, "_CPU_BF16", native)
    cfg = GRPOConfig(output_dir="/tmp/ms-adapt-bf16", use_cpu=True, report_to="none")
    assert cfg.bf16 and cfg.mixed_precision == "bf16"  # TRL's default, resolved at construction
    tc.adapt_to_device(cfg)
    assert cfg.bf16 is native and cfg.mixed_precision == ("bf16" if native else "no")
    assert cfg.gradient_checkpointing is False and cfg.activation_checkpointing is False
    tiny = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                        num_hidden_layers=1, num_attention_heads=2))
    assert Trainer(model=tiny, args=cfg).accelerator.mixed_precision == ("bf16" if native else "no")
    # an explicit bf16=False stays float32 on any CPU
    off = tc.adapt_to_device(GRPOConfig(output_dir="/tmp/ms-adapt-bf16", use_cpu=True, report_to="none", bf16=False))
    assert off.bf16 is False and off.mixed_precision == "no"


def test_cpu_bf16_native_reads_the_cpu_flags(monkeypatch, tmp_path):
    from masksearch.training import config as tc

    real = open
    for flags, expect in (("fpu sse avx2 fma", False), ("fpu avx512f avx512_bf16 avx512_vnni", True),
                          ("fpu amx_bf16 amx_tile", True)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n")
        monkeypatch.setattr(tc, "_CPU_BF16", None)
        monkeypatch.setattr("builtins.open", lambda p, *a, **k: real(info if p == "/proc/cpuinfo" else p, *a, **k))
        assert tc.cpu_bf16_native() is expect
    monkeypatch.setattr(tc, "_CPU_BF16", None)
