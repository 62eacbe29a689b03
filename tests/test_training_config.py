"""TRL configs from flags start on a CPU: GPU-minded defaults are turned off, explicit choices kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU defaults only apply without a GPU")
@pytest.mark.parametrize("native", [False, True])
def test_sft_and_grpo_flags_parse_on_cpu_in_float32_and_bf16_on_request(tmp_path, monkeypatch, native):
    from masksearch.training import config as tc
    from masksearch.training.grpo import parse_args
    from masksearch.training.sft import parse_sft_args

    monkeypatch.setattr(tc, "_CPU_BF16", native)
    _, sft = parse_sft_args(["--output_dir", str(tmp_path / "sft"), "--max_steps", "3"])
    assert sft.bf16 is False and sft.gradient_checkpointing is False and sft.max_steps == 3
    _, grpo, _ = parse_args(["--output_dir", str(tmp_path / "grpo")])
    assert grpo.bf16 is False and grpo.gradient_checkpointing is False
    yaml = Path(__file__).resolve().parents[1] / "configs" / "sft.yaml"
    _, sft = parse_sft_args(["--config", str(yaml), "--output_dir", str(tmp_path / "s2")])
    assert sft.bf16 is False
    if native:  # asked for, on a CPU that runs it natively: kept, and the config starts (use_cpu)
        _, sft = parse_sft_args(["--output_dir", str(tmp_path / "s3"), "--bf16", "true", "--use_cpu", "true"])
        assert sft.bf16 is True and sft.use_cpu is True
        tc.adapt_to_device(sft)
        assert sft.bf16 is True


def test_yaml_value_wins_over_cpu_default(tmp_path):
    from masksearch.training.sft import parse_sft_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ngradient_checkpointing: true\nlearning_rate: 0.001\n")
    _, sft = parse_sft_args(["--config", str(cfg)])
    assert sft.gradient_checkpointing is True and sft.learning_rate == 0.001
