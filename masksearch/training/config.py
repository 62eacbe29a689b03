"""Our own training arguments.  TRL's ``SFTConfig`` is used as is next to them (TRL's ``TrlParser``
pattern), so every TRL/transformers option works from YAML or flags without being re-declared here.

``masksearch train sft --config configs/sft.yaml --max_steps 50 --use_peft true`` reads
:class:`SFTScriptArguments` + ``trl.SFTConfig`` + ``trl.ModelConfig`` (LoRA options: ``use_peft``,
``lora_r``, ``lora_alpha``, ``lora_target_modules`` ...) from the YAML, flags override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SFTScriptArguments:
    """What to train on and how (besides TRL's ``SFTConfig``)."""

    model: str = field(default="smollm2", metadata={
        "help": "Student model spec: 'smollm2' (the embedded SmolLM2-135M-Instruct), 'hf:PATH_OR_ID', or a path."})
    ramp_files: list[str] = field(default_factory=list, metadata={
        "help": "RAMP trajectory files: a teacher's trajectories.jsonl or sft.jsonl (from `masksearch cot`)."})
    qa_files: list[str] = field(default_factory=list, metadata={
        "help": "Downstream-QA trajectory files (e.g. HotpotQA teacher runs), mixed with the RAMP rows."})
    qa_ratio: float | None = field(default=None, metadata={
        "help": "QA rows per RAMP row (e.g. 0.5); None uses every QA row."})
    accept: str = field(default="em", metadata={
        "help": "Accept filter for trajectory files whose runs carry no accepted flag (see training.export.AcceptFilter)."})
    curriculum: str = field(default="mask_count", metadata={
        "help": "'mask_count': easy to hard by number of masks (sequential sampler); 'none': shuffled."})
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many rows (after mixing)."})
    use_lora: bool = field(default=False, metadata={
        "help": "Old name of TRL ModelConfig's use_peft (LoRA options: lora_r, lora_alpha, ... of ModelConfig); "
                "without a ModelConfig it trains LoRA r=16, alpha=32 on all linear layers."})
    merge_lora: bool = field(default=True, metadata={
        "help": "Merge LoRA weights into the saved checkpoint so `hf:PATH` loads it as a plain model."})
    plot: bool = field(default=True, metadata={"help": "Write loss.png next to the checkpoint."})
    max_train_seconds: float | None = field(default=None, metadata={
        "help": "Stop training after this many seconds (a time budget next to max_steps)."})
    fast_lm_head: bool = field(default=True, metadata={
        "help": "Score only loss-carrying positions in TRL's fused LM head on every device (same loss; faster on CPU)."})
    padding_free_accumulation: bool = field(default=True, metadata={
        "help": "Without a GPU, train each row of a batch as its own micro-batch (per_device_train_batch_size rows "
                "become gradient-accumulation steps of one row): no padding, the same rows per optimizer step, the "
                "same token-mean loss."})


@dataclass
class DistillArguments:
    """Self-evolving distillation (``masksearch distill``); the SFT recipe of each round comes from
    the same YAML (``SFTScriptArguments`` + ``SFTConfig``)."""

    rounds: int = field(default=1, metadata={"help": "Rounds after round 0 (teacher data -> train)."})
    workdir: str = field(default="runs/distill", metadata={"help": "Where rounds, data and reports go (resumable)."})
    teacher: str = field(default="provenance", metadata={
        "help": "Round-0 teacher: 'provenance' (no LLM), a model spec, or 'ROLE=SPEC,...' (teacher graph)."})
    retriever: str = field(default="", metadata={"help": "Retriever spec, e.g. bm25:DIR (required)."})
    corpus: str = field(default="", metadata={
        "help": "Corpus for RAMP generation when ramp_file is not given (default: the shared corpus)."})
    ramp_file: str = field(default="", metadata={
        "help": "An existing RAMP JSONL to draw questions from; else RAMP is generated from the corpus."})
    ramp_total: int = field(default=400, metadata={"help": "RAMP questions to generate when no ramp_file."})
    teacher_questions: int = field(default=200, metadata={"help": "Questions the round-0 teacher solves."})
    student_questions: int = field(default=100, metadata={"help": "New questions the student solves per round."})
    heldout_questions: int = field(default=50, metadata={"help": "Held-out RAMP questions for answer recall."})
    executor: str = field(default="local", metadata={
        "help": "Where RAMP generation and the round-0 teacher run: local | ray (docs/distributed.md)."})
    ray_address: str = field(default="", metadata={"help": "Ray cluster to join with executor: ray (default: a local Ray)."})
    student_accept: str = field(default="em", metadata={
        "help": "Judge filter for student runs (AcceptFilter spec); runs must also be grounded."})
    k: int = 3
    max_turns: int = 4
    max_new_tokens: int = 128
    info_max_tokens: int = 400
    concurrency: int = 8
    split_seed: int = field(default=0, metadata={"help": "Seed of the RAMP generation and the splits."})


_CPU_BF16: bool | None = None


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (``avx512_bf16`` or AMX-BF16 in its flags).

    On such a CPU an SFT step of the 135M student under bf16 autocast is ~1.4x faster than in
    float32, but its loss is ~8 % higher after the same 12 steps (``benchmarks/bench_train.py
    --equal-loss-steps 12``), so it is opt-in (``--bf16 true --use_cpu true``); on a CPU without,
    torch emulates every bf16 matmul and the step is ~14x slower. Read once from ``/proc/cpuinfo``
    (False off Linux)."""
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _CPU_BF16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return _CPU_BF16


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def trl_parser(dataclass_types: tuple) -> Any:
    """TRL's ``TrlParser`` over our dataclasses + TRL's config, with CPU defaults without a GPU:
    float32 (TRL's default bf16 does not keep the loss on a CPU, :func:`cpu_bf16_native`; ``--bf16
    true --use_cpu true`` asks for it where the CPU runs it natively: transformers wants
    ``use_cpu`` for bf16 without a GPU) and no gradient checkpointing (TRL's default recomputes
    every forward pass).  Under
    ``accelerate launch`` with several processes and no GPU, ``use_cpu`` defaults to true: only then
    does accelerate join the processes (``MULTI_CPU``, gloo); without it each would train alone.  A
    YAML file or a flag that sets them still wins."""
    import os

    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    if not _has_gpu():
        parser.set_defaults(bf16=False, gradient_checkpointing=False)
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            parser.set_defaults(use_cpu=True)
    return parser


def adapt_to_device(train_config: Any) -> Any:
    """Make a TRL config runnable where it is. Without a GPU, TRL's GPU-minded defaults only fail
    or slow the run: gradient checkpointing and fp16 are turned off, and a config's bf16 (autocast)
    is kept only on a CPU that runs it natively (:func:`cpu_bf16_native`: ~1.4x faster a step, at a
    higher loss); ``masksearch train`` sets bf16 false on a CPU unless asked."""
    if not _has_gpu():
        keep_bf16 = bool(getattr(train_config, "bf16", False)) and cpu_bf16_native()
        # transformers 5 reads `activation_checkpointing`; `gradient_checkpointing` is its deprecated
        # alias, resolved only at construction, so setting the old name afterwards changed nothing
        for name in ("fp16", "gradient_checkpointing", "activation_checkpointing") + (() if keep_bf16 else ("bf16",)):
            if getattr(train_config, name, False):
                setattr(train_config, name, False)
        # the same trap for precision: the config resolves bf16/fp16 into `mixed_precision` when it is
        # built, and the Trainer's Accelerator reads that. Left at "bf16" on a CPU without native bf16,
        # every matmul ran under an emulated bf16 autocast, ~14x slower than float32
        mp = getattr(train_config, "mixed_precision", "no")
        if mp == "fp16" or (mp == "bf16" and not keep_bf16):
            train_config.mixed_precision = "no"
    return train_config
