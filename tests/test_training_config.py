"""TRL configs from flags start on a CPU: GPU-minded defaults are turned off, explicit choices kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU defaults only apply without a GPU")
@pytest.mark.parametrize("native", [False, True])
def test_sft_and_grpo_flags_parse_on_cpu_with_bf16_only_where_native(tmp_path, monkeypatch, native):
    from masksearch.training import config as tc
    from masksearch.training.grpo import parse_args
    from masksearch.training.sft import parse_sft_args

    monkeypatch.setattr(tc, "_CPU_BF16", native)
    _, sft = parse_sft_args(["--output_dir", str(tmp_path / "sft"), "--max_steps", "3"])
    assert sft.bf16 is native and sft.gradient_checkpointing is False and sft.max_steps == 3
    _, grpo, _ = parse_args(["--output_dir", str(tmp_path / "grpo")])
    assert grpo.bf16 is native and grpo.gradient_checkpointing is False
    # the shipped YAMLs leave bf16 to that default; a flag still wins
    yaml = Path(__file__).resolve().parents[1] / "configs" / "sft.yaml"
    _, sft = parse_sft_args(["--config", str(yaml), "--output_dir", str(tmp_path / "s2")])
    assert sft.bf16 is native
    _, sft = parse_sft_args(["--output_dir", str(tmp_path / "s3"), "--bf16", "false"])
    assert sft.bf16 is False


def test_yaml_value_wins_over_cpu_default(tmp_path):
    from masksearch.training.sft import parse_sft_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'o'}\ngradient_checkpointing: true\nlearning_rate: 0.001\n")
    _, sft = parse_sft_args(["--config", str(cfg)])
    assert sft.gradient_checkpointing is True and sft.learning_rate == 0.001
