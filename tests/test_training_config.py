"""TRL configs from flags start on a CPU: GPU-minded defaults are turned off, explicit choices kept."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU defaults only apply without a GPU")
def test_sft_and_grpo_flags_parse_on_cpu_without_bf16(tmp_path):
    from masksearch.training.grpo import parse_args
    from masksearch.training.sft import parse_sft_args

    _, sft = parse_sft_args(["--output_dir", str(tmp_path / "sft"), "--max_steps", "3"])
    assert sft.bf16 is False and sft.gradient_checkpointing is False and sft.max_steps == 3
    _, grpo, _ = parse_args(["--output_dir", str(tmp_path / "grpo")])
    assert grpo.bf16 is False and grpo.gradient_checkpointing is False


def test_yaml_value_wins_over_cpu_default(tmp_path):
    from masksearch.training.sft import parse_sft_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ngradient_checkpointing: true\nlearning_rate: 0.001\n")
    _, sft = parse_sft_args(["--config", str(cfg)])
    assert sft.gradient_checkpointing is True and sft.learning_rate == 0.001
