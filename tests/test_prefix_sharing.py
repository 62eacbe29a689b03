"""GRPO with each group's prompt run once (``share_prompt_prefix``): the same log-probs, gradients,
loss and update as TRL's row-by-row padded path, with fewer positions through the model."""

from __future__ import annotations

import pytest
from test_training_speed import _spy  # counts the positions each fused-head call projects


def _batch(prompt_len: int = 14, comp_len: int = 11, rows: int = 6):
    """Rows as TRL builds them: two prompts (left-padded), completions of different lengths
    (right-padded), environment tokens (tool_mask 0) inside each completion."""
    import torch

    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(10, 1000, (prompt_len - d,), generator=g) for d in (0, 4)]
    ids, att, tool = [], [], []
    for r in range(rows):
        p, n = prompts[r % 2], comp_len - (r % 4)
        c = torch.randint(10, 1000, (n,), generator=g)
        pad_p, pad_c = prompt_len - len(p), comp_len - n
        ids.append(torch.cat([torch.zeros(pad_p, dtype=torch.long), p, c, torch.zeros(pad_c, dtype=torch.long)]))
        att.append(torch.cat([torch.zeros(pad_p), torch.ones(len(p)), torch.ones(n), torch.zeros(pad_c)]).long())
        t = torch.ones(comp_len, dtype=torch.long)
        t[3:6] = 0  # an <information> block
        tool.append(t)
    return torch.stack(ids), torch.stack(att), torch.stack(tool)


def test_shared_prompt_logps_equal_the_full_forward_with_fewer_positions(fused_tiny, monkeypatch):
    import torch

    from masksearch.training.prefix_sharing import shared_prompt_logps
    from masksearch.training.speed import fast_lm_head

    ids, att, tool = _batch()
    c = tool.shape[1]
    mask = (att[:, -c:] * tool).float()
    # TRL's path: the whole left-padded [prompt | completion] rows, the head on completion positions
    labels = ids.masked_fill(att == 0, -100)
    labels[:, :-c] = -100
    ref = fused_tiny(input_ids=ids, attention_mask=att, labels=labels, fused_lm_head=True)
    (ref.log_probs[:, -c:] * mask).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in fused_tiny.named_parameters()}
    fused_tiny.zero_grad(set_to_none=True)

    seen = _spy(monkeypatch)
    calls: list[int] = []
    backbone = fused_tiny.base_model
    real_forward = backbone.forward

    def counting_forward(*a, **kw):
        calls.append(int((kw.get("input_ids") if "input_ids" in kw else a[0]).shape[1]))
        return real_forward(*a, **kw)

    monkeypatch.setattr(backbone, "forward", counting_forward)
    with fast_lm_head():
        logps, ents = shared_prompt_logps(fused_tiny, ids, att, c, tool_mask=tool, compute_entropy=True)
    (logps * mask).sum().backward()
    assert logps.shape == ents.shape == (ids.shape[0], c)
    assert torch.allclose(logps * mask, ref.log_probs[:, -c:] * mask, atol=1e-5)
    assert torch.allclose(ents * mask, ref.entropy[:, -c:] * mask, atol=1e-5)
    assert float((logps.detach() * (1 - mask)).abs().max()) == 0.0  # unscored positions are 0, not garbage
    for n, p in fused_tiny.named_parameters():  # float rounding only: the sums run in another order
        scale = float(ref_grads[n].abs().max())
        assert float((p.grad - ref_grads[n]).abs().max()) <= 1e-4 * scale + 1e-7, (n, scale)
    # two distinct prompts -> two prompt passes (minus their last token) plus one pass per completion,
    # and the head scores exactly the model's own tokens
    # (prompt 1: 14 tokens, rows 0, 2, 4 with 11, 9, 11 completion tokens; prompt 2: 10, rows 1, 3, 5: 10, 8, 10)
    assert calls == [13, 12, 10, 12, 9, 11, 9, 11]
    assert sum(seen) == int(mask.sum())


def test_unusual_batches_fall_back_to_trl(fused_tiny):
    from masksearch.training.prefix_sharing import shared_prompt_logps

    ids, att, tool = _batch()
    holey = att.clone()
    holey[0, -8] = 0  # a completion mask that is not a prefix of ones (a masked truncation, say)
    assert shared_prompt_logps(fused_tiny, ids, holey, tool.shape[1], tool_mask=tool) is None
    assert shared_prompt_logps(fused_tiny, ids, att, ids.shape[1], tool_mask=None) is None  # no prompt part


def test_group_micro_batches_keep_the_generation_batch():
    from masksearch.training.grpo import parse_args, prompts_per_step
    from masksearch.training.prefix_sharing import group_micro_batches

    _, args, _ = parse_args(["--config", "configs/grpo.yaml", "--per_device_train_batch_size", "4",
                             "--gradient_accumulation_steps", "2", "--num_generations", "4", "--loss_type", "dapo"])
    before = (args.generation_batch_size, prompts_per_step(args))
    group_micro_batches(args)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (8, 1, 1)
    assert (args.generation_batch_size, prompts_per_step(args)) == before == (8, 2)
    _, bnpo, _ = parse_args(["--config", "configs/grpo.yaml", "--per_device_train_batch_size", "4",
                             "--gradient_accumulation_steps", "2", "--loss_type", "bnpo"])
    assert group_micro_batches(bnpo).per_device_train_batch_size == 4  # a per-micro-batch normaliser: left alone
    _, iters, _ = parse_args(["--config", "configs/grpo.yaml", "--num_iterations", "2"])
    assert group_micro_batches(iters).per_device_train_batch_size == 8 and iters.gradient_accumulation_steps == 1


class _Replay:
    """A rollout_func handing back one fixed batch: 2 prompts x 4 completions with environment tokens."""

    def __init__(self, tok):
        import random

        rnd = random.Random(0)
        prompts = [tok("Where is the tower?")["input_ids"], tok("Who painted the big picture in the hall?")["input_ids"]]
        self.batch = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": []}
        for q in range(2):
            for j in range(4):
                n_model, n_env = 5 + 3 * j, 6
                comp = [rnd.randrange(10, 1000) for _ in range(n_model + n_env + 3)]
                self.batch["prompt_ids"].append(prompts[q])
                self.batch["completion_ids"].append(comp)
                self.batch["logprobs"].append([-1.0] * len(comp))
                self.batch["env_mask"].append([1] * n_model + [0] * n_env + [1] * 3)

    def __call__(self, prompts, trainer):  # noqa: ANN001
        return {k: [list(x) for x in v] for k, v in self.batch.items()}


def _length_reward(prompts, completions, completion_ids, **kw):  # noqa: ANN001
    return [float(len(c)) for c in completion_ids]  # a spread in every group: the loss is not trivially 0


@pytest.mark.slow
def test_a_grpo_step_is_the_same_with_and_without_sharing(tiny_model_path, tmp_path, monkeypatch):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    import masksearch.training.prefix_sharing as ps
    from masksearch.protocol import ensure_student_template
    from masksearch.training.grpo import student_grpo_trainer_class, unpad_micro_batches
    from masksearch.training.prefix_sharing import group_micro_batches
    from masksearch.training.speed import fast_lm_head

    used: list[int] = []
    real = ps.shared_prompt_logps

    def spy(*a, **kw):
        out = real(*a, **kw)
        used.append(out is not None)
        return out

    monkeypatch.setattr(ps, "shared_prompt_logps", spy)

    def one_step(share: bool):
        torch.manual_seed(0)
        tok = ensure_student_template(AutoTokenizer.from_pretrained(tiny_model_path))
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        cfg = GRPOConfig(output_dir=str(tmp_path / f"g{share}"), max_steps=1, per_device_train_batch_size=8,
                         num_generations=4, max_completion_length=64, learning_rate=0.5, optim="sgd",
                         lr_scheduler_type="constant", loss_type="dapo", beta=0.0, logging_steps=1, report_to="none",
                         save_strategy="no", use_cpu=True, shuffle_dataset=False, seed=0, bf16=False,
                         gradient_checkpointing=False)
        (group_micro_batches if share else unpad_micro_batches)(cfg)
        ds = Dataset.from_list([{"prompt": "Where is the tower?"}, {"prompt": "Who painted it?"}] * 2)
        trainer = student_grpo_trainer_class()(model=model, reward_funcs=[_length_reward], args=cfg, train_dataset=ds,
                                               processing_class=tok, rollout_func=_Replay(tok))
        trainer.share_prompt_prefix = share
        with fast_lm_head():
            trainer.train()
        loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
        return cfg, loss, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    cfg_a, loss_a, w_a = one_step(share=False)
    assert not used
    cfg_b, loss_b, w_b = one_step(share=True)
    assert used and all(used)  # the shared path ran, and never fell back
    assert (cfg_a.per_device_train_batch_size, cfg_b.per_device_train_batch_size) == (1, 8)
    assert loss_a != 0 and loss_b == pytest.approx(loss_a, rel=1e-4, abs=1e-7)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    changed = max(float((w_a[k] - base[k]).abs().max()) for k in w_a)
    moved = max(float((w_a[k] - w_b[k]).abs().max()) for k in w_a)
    assert changed > 1e-4 and moved < 1e-5, (changed, moved)  # it trained, and both trained the same


def test_peft_and_wrapped_models_take_trls_path(fused_tiny):
    from types import SimpleNamespace

    from masksearch.training.prefix_sharing import shared_prompt_logps

    ids, att, tool = _batch()
    wrapped = SimpleNamespace(module=fused_tiny, base_model=fused_tiny.base_model)  # like DDP
    peft = SimpleNamespace(peft_config={}, base_model=fused_tiny.base_model)
    assert shared_prompt_logps(wrapped, ids, att, tool.shape[1], tool_mask=tool) is None
    assert shared_prompt_logps(peft, ids, att, tool.shape[1], tool_mask=tool) is None
