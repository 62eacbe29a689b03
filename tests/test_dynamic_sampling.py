"""DAPO dynamic sampling: all-equal-reward groups are dropped and refilled, within a bound.

The rollout here is a stub with scripted answers per question (control flow only); the scores come
from the real reward functions through ``weighted_reward_fn``, the way TRL calls them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from masksearch.data.qa import QAExample
from masksearch.training.dynamic_sampling import DynamicSampling, all_equal, weighted_reward_fn
from masksearch.training.rewards import format_reward, recall_reward


class StubRollout:
    """``examples``/``lookup``/``rollout_once`` as ``StudentRollout`` has them; the i-th rollout of
    a question answers ``answers[question][i % len]``."""

    def __init__(self, answers: dict[str, list[str]], gold: str = "Paris") -> None:
        self.examples = {q: QAExample(id=f"q{i}", question=q, golden_answers=[gold], metadata={"mask_count": 1})
                         for i, q in enumerate(answers)}
        self.answers = answers
        self.calls: list[list[str]] = []

    def lookup(self, prompt):
        return self.examples[prompt]

    def rollout_once(self, prompts, trainer):
        self.calls.append(list(prompts))
        seen: dict[str, int] = {}
        out = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "question", "golden_answers",
                               "answer_match", "mask_count", "answer", "status", "num_searches", "num_model_tokens")}
        for p in prompts:
            i = seen.get(p, 0)
            seen[p] = i + 1
            ans = self.answers[p][i % len(self.answers[p])]
            out["prompt_ids"].append([1, 2])
            out["completion_ids"].append([3, 4])
            out["logprobs"].append([-0.1, -0.2])
            out["env_mask"].append([1, 1])
            out["question"].append(p)
            out["golden_answers"].append(list(self.examples[p].golden_answers))
            out["answer_match"].append("any")
            out["mask_count"].append(1)
            out["answer"].append(ans)
            out["status"].append("answered")
            out["num_searches"].append(1)
            out["num_model_tokens"].append(2)
        return out


TRAINER = SimpleNamespace(args=SimpleNamespace(num_generations=2), processing_class=None, state=None)
SCORE = weighted_reward_fn([recall_reward], [1.0])


def test_weighted_score_is_what_trl_would_sum():
    ro = StubRollout({"same?": ["Paris", "Paris"], "mixed?": ["Paris", "Rome"]})
    out = ro.rollout_once(["same?", "same?", "mixed?", "mixed?"], TRAINER)
    assert SCORE(["same?"] * 2 + ["mixed?"] * 2, out, TRAINER) == [1.0, 1.0, 1.0, 0.0]
    two = weighted_reward_fn([recall_reward, format_reward], [1.0, 0.5])(["mixed?"] * 4, out, TRAINER)
    assert len(two) == 4 and two[3] == pytest.approx(0.5 * format_reward([""] * 4, [""] * 4, **{
        k: v for k, v in out.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")})[3])
    assert all_equal([1.0, 1.0]) and not all_equal([1.0, 0.0]) and all_equal([float("nan")] * 2)


def test_all_equal_group_is_dropped_and_refilled_with_a_fresh_prompt():
    ro = StubRollout({"same?": ["Paris"], "mixed?": ["Paris", "Rome"], "fresh?": ["Rome", "Paris"]})
    prompts = ["same?", "same?", "mixed?", "mixed?"]
    first = ro.rollout_once(prompts, TRAINER)
    ds = DynamicSampling(score=SCORE, max_resample_rounds=2)
    batch, stats = ds.refill(ro, prompts, first, TRAINER)
    # the all-equal group's slot now holds the fresh question's two rollouts, with its own gold
    assert batch["question"] == ["fresh?", "fresh?", "mixed?", "mixed?"]
    assert batch["answer"] == ["Rome", "Paris", "Paris", "Rome"]
    assert stats == {"groups": 2, "groups_all_equal": 1, "groups_dropped": 1, "extra_rollouts": 2, "rounds": 1,
                     "groups_kept_all_equal": 0}
    assert ro.calls[1] == ["fresh?", "fresh?"]  # only the open slot is re-sampled, never a prompt in the batch
    assert all(len(v) == 4 for v in batch.values())
    assert not any(all_equal(SCORE(prompts, batch, TRAINER)[i:i + 2]) for i in (0, 2))


def test_extra_rollouts_are_bounded_and_the_batch_keeps_its_size():
    answers = {"same?": ["Paris"], "mixed?": ["Paris", "Rome"]}
    answers.update({f"flat{i}?": ["Rome"] for i in range(10)})  # every fresh group is all-equal too
    ro = StubRollout(answers)
    prompts = ["same?", "same?", "mixed?", "mixed?"]
    first = ro.rollout_once(prompts, TRAINER)
    batch, stats = DynamicSampling(score=SCORE, max_resample_rounds=3).refill(ro, prompts, first, TRAINER)
    assert stats["rounds"] == 3 and stats["groups_dropped"] == 0 and stats["groups_kept_all_equal"] == 1
    assert stats["extra_rollouts"] == 3 * 1 * 2 <= 3 * stats["groups"] * 2  # rounds x open slots x group size
    assert batch["question"] == prompts and batch["answer"] == first["answer"]  # the original group stays
    drawn = [c[0] for c in ro.calls[1:]]
    assert len(set(drawn)) == 3 and not set(drawn) & set(prompts)  # fresh each round
    # no rounds at all: nothing is re-sampled
    ro.calls.clear()
    _, stats0 = DynamicSampling(score=SCORE, max_resample_rounds=0).refill(ro, prompts, first, TRAINER)
    assert stats0["extra_rollouts"] == 0 and ro.calls == []


def test_batches_that_are_not_whole_groups_are_left_alone():
    ro = StubRollout({"same?": ["Paris"], "mixed?": ["Paris", "Rome"]})
    prompts = ["same?", "mixed?", "same?"]
    first = ro.rollout_once(prompts, TRAINER)
    batch, stats = DynamicSampling(score=SCORE).refill(ro, prompts, first, TRAINER)
    assert batch is first and stats == {}
