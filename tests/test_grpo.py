"""GRPO rollouts: the student graph as TRL's rollout_func, exact token bookkeeping, a few GRPO steps.

The rollout tests drive the real student graph and the real BM25 retriever over the shared corpus;
the policy is either a scripted token model (to get multi-turn rollouts from a deterministic
"model") or the tiny random Llama wrapped by ``LocalChatModel.from_model`` (the real path).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from masksearch.data.qa import QAExample
from masksearch.protocol import STUDENT_SYSTEM_PROMPT
from masksearch.training.grpo import RolloutSettings, make_rollout_func, parse_args, prompt_text
from masksearch.training.rewards import format_reward, recall_reward

SEARCH = "<think> I should look it up. </think>\n<search> Eiffel Tower Paris </search>"
ANSWER = "<think> The documents say Paris. </think>\n<answer> Paris </answer>"

EXAMPLES = [
    QAExample(id="e1", question="In which city is the Eiffel Tower?", golden_answers=["Paris"],
              answer_match="all", metadata={"mask_count": 1}),
    QAExample(id="e2", question="The [mask] is a wrought-iron lattice tower in Paris.",
              golden_answers=["Eiffel Tower"], answer_match="all", metadata={"mask_count": 1}),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    from masksearch.protocol import ensure_student_template

    return ensure_student_template(AutoTokenizer.from_pretrained(tiny_model_path))


@pytest.fixture(scope="module")
def retriever(bm25_dir):
    from masksearch.retrieval import make_retriever

    return make_retriever(f"bm25:{bm25_dir}")


class ScriptedTokenModel:
    """A token model (``agenerate_ids`` + ``tokenizer``) whose reply depends on how many
    ``<information>`` blocks it has seen; records every prompt it was given."""

    def __init__(self, tokenizer, replies):
        self.tokenizer = tokenizer
        self.replies = replies
        self.calls: list[list[int]] = []

    async def agenerate_ids(self, prompt_ids, max_new_tokens=64, temperature=1.0, top_p=1.0, stop=None):
        self.calls.append(list(prompt_ids))
        seen = self.tokenizer.decode(prompt_ids).count("<information>\n")  # blocks, not the system prompt
        text = self.replies[min(seen, len(self.replies) - 1)]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return SimpleNamespace(token_ids=ids, logprobs=[-0.5] * len(ids), text=text,
                               finish_reason="stop" if len(ids) < max_new_tokens else "length")


def _trainer(tokenizer, max_completion_length=1024):
    args = SimpleNamespace(max_completion_length=max_completion_length, temperature=1.0, top_p=1.0)
    return SimpleNamespace(args=args, processing_class=tokenizer, model=None)


def _runs(mask):
    """(start, end, flag) runs of equal mask values."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((start, i, mask[start]))
            start = i
    return out


def test_env_mask_covers_exactly_the_information_turns(tokenizer, retriever):
    models = []

    def factory(trainer):
        models.append(ScriptedTokenModel(tokenizer, [SEARCH, ANSWER]))
        return models[-1]

    rollout = make_rollout_func(retriever, RolloutSettings(k=2, max_turns=3, info_max_tokens=96),
                                examples=EXAMPLES, chat_model_factory=factory)
    prompts = [EXAMPLES[0].question] * 2 + [EXAMPLES[1].question] * 2  # TRL repeats prompts itself
    out = rollout(prompts, _trainer(tokenizer))
    assert len(out["completion_ids"]) == 4  # one completion per (already repeated) prompt
    eos = tokenizer.eos_token_id
    for i in range(4):
        ids, mask, lps = out["completion_ids"][i], out["env_mask"][i], out["logprobs"][i]
        assert len(ids) == len(mask) == len(lps)
        runs = _runs(mask)
        # model turn, environment (glue + <information> + glue), model turn, closing end-of-turn
        assert [f for _, _, f in runs] == [1, 0, 1, 0]
        model_text = [tokenizer.decode(ids[a:b]) for a, b, f in runs if f == 1]
        assert model_text == [SEARCH, ANSWER]
        env_text = tokenizer.decode(ids[runs[1][0]:runs[1][1]])
        assert env_text.count("<information>") == 1 and env_text.count("</information>") == 1
        inner = env_text.replace("<|im_end|>", "").replace("<|im_start|>", "").split("<information>")
        assert inner[0].strip() == "user"  # template glue only before the block
        assert inner[1].split("</information>")[1].strip() == "assistant"  # and after it
        assert "Eiffel" in env_text  # real BM25 results
        assert ids[runs[3][0]:] == [eos]
        assert all(lp == -0.5 for lp, m in zip(lps, mask) if m) and all(lp == 0.0 for lp, m in zip(lps, mask) if not m)
        # the token stream is exactly what the model was fed: its last prompt + its last reply
        full = out["prompt_ids"][i] + ids[:-1]
        assert any(full == call + tokenizer(ANSWER, add_special_tokens=False)["input_ids"] for m in models for call in m.calls)
        # and the text equals the chat template's rendering of the conversation
        traj = out["trajectory"][i]
        assert traj["status"] == "answered" and traj["answer"] == "Paris"
        msgs = [{"role": "system", "content": STUDENT_SYSTEM_PROMPT}, {"role": "user", "content": prompts[i]},
                {"role": "assistant", "content": SEARCH}, {"role": "user", "content": traj["steps"][0]["information"]},
                {"role": "assistant", "content": ANSWER}]
        rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
        assert tokenizer.decode(out["prompt_ids"][i] + ids) == rendered.rstrip("\n")
    assert out["num_searches"] == [1, 1, 1, 1]
    assert out["status"] == ["answered"] * 4
    assert out["golden_answers"] == [["Paris"]] * 2 + [["Eiffel Tower"]] * 2
    assert out["mask_count"] == [1, 1, 1, 1]
    assert out["num_model_tokens"] == [sum(m) for m in out["env_mask"]]
    # the extra fields are what the rewards read (TRL forwards them as keyword lists)
    extra = {k: v for k, v in out.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
    comps = [tokenizer.decode(c, skip_special_tokens=True) for c in out["completion_ids"]]
    assert recall_reward(prompts, comps, **extra) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward(prompts, comps, **extra) == [1.0] * 4
    assert len(rollout.history) == 1 and rollout.history[0].rollouts == 4


def test_budget_and_turn_cap_are_marked(tokenizer, retriever):
    searcher = make_rollout_func(retriever, RolloutSettings(k=2, max_turns=2, info_max_tokens=64),
                                 examples=EXAMPLES, chat_model_factory=lambda t: ScriptedTokenModel(tokenizer, [SEARCH]))
    out = searcher([EXAMPLES[0].question], _trainer(tokenizer))
    assert out["status"] == ["turn_cap"] and out["answer"] == [None]
    assert format_reward(["q"], ["x"], trajectory=out["trajectory"]) == [0.0]

    cut = make_rollout_func(retriever, RolloutSettings(k=2, max_turns=4, info_max_tokens=64),
                            examples=EXAMPLES, chat_model_factory=lambda t: ScriptedTokenModel(tokenizer, [SEARCH, ANSWER]))
    out = cut([EXAMPLES[0].question], _trainer(tokenizer, max_completion_length=40))
    assert out["status"] == ["length"]
    assert len(out["completion_ids"][0]) <= 40 and out["completion_ids"][0][-1] != tokenizer.eos_token_id


def test_unknown_prompt_and_chat_prompts(tokenizer, retriever):
    rollout = make_rollout_func(retriever, examples=EXAMPLES,
                                chat_model_factory=lambda t: ScriptedTokenModel(tokenizer, [ANSWER]))
    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": " Q? "}]) == "Q?"
    out = rollout([[{"role": "user", "content": EXAMPLES[0].question}], "Who knows?"], _trainer(tokenizer))
    assert out["golden_answers"] == [["Paris"], []]
    assert out["num_searches"] == [0, 0] and out["status"] == ["answered", "answered"]


def test_parse_args_reads_yaml_and_overrides():
    script, targs, margs = parse_args(["--config", "configs/grpo.yaml", "--loss_type", "dr_grpo", "--beta", "0.04",
                                       "--mask_counts", "1", "2", "--reward_funcs", "format", "recall", "f1",
                                       "--reward_weights", "0.5", "1.0", "0.5"])
    assert targs.loss_type == "dr_grpo" and targs.beta == 0.04 and targs.num_generations == 4
    assert script.mask_counts == [1, 2] and margs.model_name_or_path == "smollm2"
    assert script.reward_funcs == ["format", "recall", "f1"] and targs.reward_weights == [0.5, 1.0, 0.5]
    script, targs, _ = parse_args(["--config", "configs/grpo.yaml"])
    assert script.reward_funcs == ["format", "recall"] and targs.reward_weights == [0.5, 1.0]


# ---------------------------------------------------------------------------- real policy
@pytest.mark.slow
def test_logprobs_match_a_forward_pass(tiny_model_path, tokenizer, retriever):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trainer = SimpleNamespace(args=SimpleNamespace(max_completion_length=120, temperature=1.0, top_p=1.0),
                              processing_class=tokenizer, model=model)
    rollout = make_rollout_func(retriever, RolloutSettings(k=2, max_turns=2, max_new_tokens=24, info_max_tokens=64),
                                examples=EXAMPLES)
    torch.manual_seed(0)
    model.train()
    out = rollout([EXAMPLES[0].question] * 2, trainer)
    assert model.training  # sampled in eval mode, training mode restored
    for p_ids, c_ids, lps, mask in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"], out["env_mask"]):
        assert sum(mask) > 0
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(p_ids) - 1:-1].float()
        ref = torch.log_softmax(logits / 1.0, dim=-1).gather(1, torch.tensor(c_ids)[:, None])[:, 0]
        got = torch.tensor(lps)
        m = torch.tensor(mask).bool()
        assert torch.allclose(got[m], ref[m], atol=2e-3), (got[m] - ref[m]).abs().max()
        assert (got[~m] == 0).all()


@pytest.mark.slow
def test_tiny_model_runs_grpo_steps_end_to_end(tiny_model_path, bm25_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from masksearch.training.grpo import run_grpo

    out_dir = tmp_path / "grpo"
    script, targs, margs = parse_args([
        "--config", "configs/grpo.yaml", "--model_name_or_path", str(tiny_model_path),
        "--retriever", f"bm25:{bm25_dir}", "--output_dir", str(out_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "96",
        "--max_new_tokens", "16", "--max_turns", "2", "--info_max_tokens", "48", "--learning_rate", "1e-2",
        "--loss_type", "grpo", "--beta", "0.02", "--dynamic_sampling", "true", "--max_resample_rounds", "1",
    ])

    def token_parity(prompts, completions, completion_ids, **kw):
        # a reward with variance for a random model, so advantages (and the update) are non-zero
        return [sum(t % 2 for t in ids) / max(1, len(ids)) for ids in completion_ids]

    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    summary = run_grpo(script, targs, margs, examples=EXAMPLES * 2, extra_rewards=[(token_parity, 1.0)])
    assert summary["steps"] == 2 and summary["rollouts"] >= 2 * 4
    rows = [json.loads(line) for line in open(out_dir / "grpo_log.jsonl")]
    logged = [r for r in rows if "reward" in r]
    assert len(logged) == 2 and all("rewards/format_reward/mean" in r and "kl" in r for r in logged)
    # rollout and dynamic-sampling metrics reach the log through Trainer.log (not TRL's private _metrics)
    assert all("rollout/num_searches" in r and "dynamic_sampling/groups_all_equal" in r for r in logged)
    assert all(r["dynamic_sampling/extra_rollouts"] <= 1 * 4 for r in logged)
    assert (out_dir / "grpo_curves.png").stat().st_size > 1000
    trajs = [json.loads(line) for line in open(out_dir / "rollouts.jsonl")]
    assert len(trajs) == summary["rollouts"] and {t["provenance"]["graph"] for t in trajs} == {"student"}
    after = AutoModelForCausalLM.from_pretrained(out_dir).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "GRPO steps did not update the policy"


def test_vllm_token_model_batches_concurrent_turns(tokenizer):
    import asyncio

    from masksearch.training.grpo import VLLMTokenModel

    class FakeClient:
        def __init__(self):
            self.calls = []

        def generate(self, prompts, n, temperature, top_p, max_tokens, logprobs, generation_kwargs):
            self.calls.append((len(prompts), temperature, max_tokens, generation_kwargs))
            ids = tokenizer(SEARCH, add_special_tokens=False)["input_ids"]
            return {"prompt_ids": prompts, "completion_ids": [ids] * len(prompts),
                    "logprobs": [[[-0.25]] * len(ids)] * len(prompts)}

    client = FakeClient()
    tm = VLLMTokenModel(client, tokenizer)

    async def go():
        return await asyncio.gather(*(tm.agenerate_ids([1, 2, 3 + i], max_new_tokens=64, temperature=0.7,
                                                       stop=["</search>"]) for i in range(5)))

    gens = asyncio.run(go())
    assert client.calls == [(5, 0.7, 64, {"stop": ["</search>"], "include_stop_str_in_output": True})]
    assert all(g.text == SEARCH and g.logprobs == [-0.25] * len(g.token_ids) for g in gens)


@pytest.mark.slow
def test_cli_train_grpo(tiny_model_path, bm25_dir, tmp_path, capsys):
    from masksearch.cli import main

    train = tmp_path / "ramp.jsonl"
    train.write_text("".join(json.dumps({"id": e.id, "question": e.question, "answers": e.golden_answers,
                                         "mask_count": 1}) + "\n" for e in EXAMPLES))
    out_dir = tmp_path / "cli"
    rc = main(["train", "grpo", "--config", "configs/grpo.yaml", "--model_name_or_path", str(tiny_model_path),
               "--train_file", str(train), "--retriever", f"bm25:{bm25_dir}", "--output_dir", str(out_dir),
               "--max_steps", "1", "--per_device_train_batch_size", "2", "--num_generations", "2",
               "--max_completion_length", "48", "--max_new_tokens", "12", "--max_turns", "1"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["rollouts"] == 2 and summary["loss_type"] == "dapo"
    assert (out_dir / "model.safetensors").exists() and (out_dir / "grpo_log.jsonl").exists()
    # a user error is one line, not a traceback
    assert main(["train", "grpo", "--config", "configs/grpo.yaml", "--train_file", str(tmp_path / "nope.jsonl"),
                 "--output_dir", str(out_dir)]) == 2
    assert "train_file" in capsys.readouterr().err
