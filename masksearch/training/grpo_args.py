"""``masksearch train grpo``'s own options, read by TRL's ``TrlParser`` next to TRL's ``GRPOConfig``
and ``ModelConfig`` (so every TRL option works from YAML or flags without being re-declared)."""

from __future__ import annotations

from dataclasses import dataclass, field

from masksearch.training.rewards import RewardOptions

@dataclass
class GRPOScriptArguments:
    """Our options next to TRL's ``GRPOConfig``/``ModelConfig`` (all settable in YAML or flags)."""

    train_file: str = field(default="", metadata={"help": "RAMP or QA JSONL with the training questions."})
    retriever: str = field(default="", metadata={"help": "Retriever spec for rollouts, e.g. bm25:PATH/TO/INDEX."})
    search_cache: str = field(default="", metadata={"help": "Search cache FILE[@read-write|read-only] (replayable rollouts)."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training questions."})
    mask_counts: list[int] | None = field(default=None, metadata={"help": "Keep only RAMP questions with these mask counts."})
    curriculum: str = field(default="staged", metadata={"help": "staged (1->2->3->4 masks) | mixed | none."})
    curriculum_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    k: int = field(default=3, metadata={"help": "Documents per search."})
    max_turns: int = field(default=4, metadata={"help": "Turn cap of the student graph."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens per policy turn."})
    info_max_tokens: int = field(default=256, metadata={"help": "Token budget of one <information> block."})
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "recall"], metadata={
        "help": "Rewards by name (format, recall, f1, em, length, judge) or dotted path pkg.mod:func; "
                "weights in GRPOConfig.reward_weights (unset: format 0.5, the others 1.0)."})
    recall_min_precision: float = field(default=2 / 3, metadata={
        "help": "The recall reward is scaled by min(1, precision / this); 0 = the paper's plain recall."})
    length_soft: int = 256
    length_hard: int = 512
    judge_model: str | None = field(default=None, metadata={"help": "Chat model spec for the judge reward."})
    save_rollouts: bool = field(default=True, metadata={"help": "Write every rollout to OUTPUT_DIR/rollouts.jsonl."})
    rollout_backend: str = field(default="policy", metadata={
        "help": "policy: the trainer's model through the batching LocalChatModel; vllm: TRL's vLLM server."})
    dynamic_sampling: bool = field(default=False, metadata={
        "help": "DAPO dynamic sampling: replace groups whose rewards are all equal by groups of fresh prompts."})
    max_resample_rounds: int = field(default=2, metadata={
        "help": "Dynamic sampling: at most this many refill rounds per batch (extra rollouts <= rounds x batch)."})
    padding_free_accumulation: bool = field(default=True, metadata={
        "help": "Without a GPU, optimise each completion as its own micro-batch (per_device_train_batch_size "
                "completions become accumulation steps of one): no padding, one optimizer step per generation "
                "batch as before, the same loss."})
    share_prompt_prefix: bool = field(default=True, metadata={
        "help": "Without a GPU, run each group's prompt through the model once and every completion on its cached "
                "keys/values, row by row without padding, the LM head on the model's own tokens only; the whole "
                "generation batch is one micro-batch (same loss and steps). Takes the place of "
                "padding_free_accumulation; false: that path."})
    fast_lm_head: bool = field(default=True, metadata={
        "help": "Score only loss-carrying positions in TRL's fused LM head on every device (same loss; faster on CPU)."})

    def reward_options(self) -> RewardOptions:
        return RewardOptions(length_soft=self.length_soft, length_hard=self.length_hard,
                             judge_model=self.judge_model, recall_min_precision=self.recall_min_precision)
