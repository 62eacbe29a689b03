"""``accelerate launch`` with two processes on CPU (gloo): ``train sft`` and ``train grpo`` each
complete a step, and under GRPO every process's ``rollout_func`` runs its own slice of the prompts.

The launcher is accelerate's own (``--multi_gpu --num_processes 2``: torchrun underneath; without a
GPU the trainers' ``use_cpu`` gives ``DistributedType.MULTI_CPU`` on gloo). ``--cpu
--num_processes 2`` is not it: accelerate 1.15 then starts a single process unless MPI is set up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from masksearch.utils.net import free_port

from test_sft import teacher_file  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent



def launch(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 -m masksearch.cli ARGS`` on 127.0.0.1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "-m", "masksearch.cli", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_grpo_two_processes_split_the_prompts(tiny_model_path, bm25_dir, tmp_path):
    questions = [f"Question {i}: in which city is the Eiffel Tower?" for i in range(4)]
    train = tmp_path / "ramp.jsonl"
    train.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answers": ["Paris"], "mask_count": 1}) + "\n"
                             for i, q in enumerate(questions)))
    out = tmp_path / "grpo"
    # per process: 2 completions a step (one prompt x 2 generations); the global step: 2 prompts x 2
    proc = launch(["train", "grpo", "--config", "configs/grpo.yaml", "--model_name_or_path", str(tiny_model_path),
                   "--train_file", str(train), "--retriever", f"bm25:{bm25_dir}", "--output_dir", str(out),
                   "--curriculum", "none", "--max_steps", "1", "--per_device_train_batch_size", "2",
                   "--num_generations", "2", "--max_completion_length", "32", "--max_new_tokens", "8",
                   "--max_turns", "1", "--logging_steps", "1", "--seed", "0"], tmp_path)
    seen = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in open(out / f"rollouts.rank{rank}.jsonl")]
        seen[rank] = Counter(r["question"] for r in rows)
    assert not (out / "rollouts.jsonl").exists()
    # each process ran its own slice: half the global batch each, whole groups or not, nothing twice
    assert sum(seen[0].values()) == sum(seen[1].values()) == 2
    total = seen[0] + seen[1]
    assert len(total) == 2 and set(total) <= set(questions)
    assert all(n == 2 for n in total.values()), total  # every prompt exactly num_generations times
    # the step completed: one summary line from the main process, the log and the checkpoint written
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"output_dir"')]
    assert len(summaries) == 1, proc.stdout[-2000:]
    assert summaries[0]["steps"] == 1 and summaries[0]["world_size"] == 2 and summaries[0]["rollouts"] == 4
    logged = [json.loads(line) for line in open(out / "grpo_log.jsonl")]
    assert [r["step"] for r in logged if "reward" in r] == [1]
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()


@pytest.mark.slow
def test_sft_two_processes_complete_a_step(tiny_model_path, teacher_file, tmp_path):  # noqa: F811
    out = tmp_path / "sft"
    proc = launch(["train", "sft", "--config", "configs/sft.yaml", "--model", f"hf:{tiny_model_path}",
                   "--ramp_files", str(teacher_file), "--output_dir", str(out), "--max_steps", "1",
                   "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
                   "--curriculum", "none", "--logging_steps", "1", "--max_length", "512"], tmp_path)
    report = json.loads((out / "masksearch_sft.json").read_text())
    assert report["steps"] == 1 and report["world_size"] == 2 and report["loss_first"] is not None
    assert (out / "model.safetensors").exists()
    assert proc.stdout.count('"output_dir"') == 1  # one run of two processes, the main one reports


def test_use_cpu_defaults_to_true_only_under_a_multi_process_launcher(monkeypatch):
    from trl import SFTConfig

    from masksearch.training.config import SFTScriptArguments, _has_gpu, trl_parser

    if _has_gpu():
        pytest.skip("the default only applies without a GPU")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert trl_parser((SFTScriptArguments, SFTConfig)).get_default("use_cpu") is False  # one process: TRL's
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert trl_parser((SFTScriptArguments, SFTConfig)).get_default("use_cpu") is True
