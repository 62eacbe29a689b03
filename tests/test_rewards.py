"""GRPO reward functions on hand-written cases (TRL calling convention: lists per completion)."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from masksearch.training.curriculum import CurriculumConfig, curriculum_order, mask_count_of, stage_at
from masksearch.training.rewards import (
    RewardConfig,
    build_reward_funcs,
    combine_rewards,
    em_reward,
    exact_match,
    f1_reward,
    f1_score,
    format_reward,
    make_judge_reward,
    make_length_penalty,
    parse_verdict,
    recall_reward,
    score_answer,
    token_recall,
)

GOOD = (
    "<think> find it </think>\n<search> Eiffel tower city </search>"
    "<|im_end|>\n<|im_start|>user\n<information>\nDoc 1 (Title: Eiffel) in Paris\n</information><|im_end|>\n"
    "<|im_start|>assistant\n<think> it is Paris </think>\n<answer> Paris </answer><|im_end|>"
)


# ------------------------------------------------------------------ metrics
def test_token_recall_is_fraction_of_gold_tokens():
    assert token_recall("The city of Paris, France", "Paris") == 1.0
    assert token_recall("Paris", "Paris France") == 0.5
    assert token_recall("London", "Paris") == 0.0
    assert token_recall("paris paris", "Paris Paris Texas") == pytest.approx(2 / 3)
    assert token_recall(None, "Paris") == 0.0


def test_f1_and_em_normalise():
    assert exact_match("the Eiffel Tower!", "Eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel tower") == 0.0
    assert f1_score("Eiffel", "Eiffel tower") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1_score("", "x") == 0.0


def test_multi_span_ramp_answers_are_compared_in_order():
    golds = ["1889", "Gustave Eiffel"]
    assert score_answer("1889 | Gustave Eiffel", golds, "em", "all", ordered=True) == 1.0
    # swapped spans: ordered comparison fails, unordered (FanoutQA) succeeds
    assert score_answer("Gustave Eiffel | 1889", golds, "em", "all", ordered=True) == 0.0
    assert score_answer("Gustave Eiffel | 1889", golds, "em", "all", ordered=False) == 1.0
    # one span of two restored: half the recall, no EM
    assert score_answer("1889", golds, "recall", "all", ordered=True) == 0.5
    assert score_answer("1889", golds, "em", "all", ordered=True) == 0.0
    # "any": best alternative
    assert score_answer("Big Apple", ["New York City", "Big Apple"], "em", "any") == 1.0


# ------------------------------------------------------------------ reward functions
def test_answer_rewards_read_rollout_fields_and_dataset_columns():
    kw = dict(
        golden_answers=[["Paris"], ["Paris"], ["1889", "Gustave Eiffel"], ["Tom", "Ann"]],
        answer=["Paris", None, "1889 | Eiffel", "Ann | Tom"],
        mask_count=[1, 1, 2, None],
        answer_match=["all", "all", "all", "all"],
    )
    comps = ["x"] * 4
    assert recall_reward(["q"] * 4, comps, **kw) == [1.0, 0.0, 0.75, 1.0]  # 4th: FanoutQA, unordered
    assert em_reward(["q"] * 4, comps, **kw) == [1.0, 0.0, 0.0, 1.0]
    f1 = f1_reward(["q"] * 4, comps, **kw)
    assert f1[0] == 1.0 and f1[1] == 0.0 and 0.5 < f1[2] < 1.0


def test_answer_reward_falls_back_to_completion_text():
    r = recall_reward(["q", "q"], [GOOD, "<think> hm </think> no answer"], golden_answers=[["Paris"], ["Paris"]])
    assert r == [1.0, 0.0]


def test_format_reward_on_text():
    bad_trailing = GOOD + " and more text"
    no_answer = "<think> x </think>\n<search> q </search>"
    malformed = "<think> x <answer> Paris </answer>"  # unclosed think
    both = "<think> x </think><search> q </search><answer> Paris </answer>"
    info_written = "<think> x </think><information>fake</information><answer> P </answer>"
    got = format_reward(["q"] * 6, [GOOD, bad_trailing, no_answer, malformed, both, info_written])
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0 * 0]


def test_format_reward_on_trajectory():
    ok = {"status": "answered", "answer": "Paris",
          "steps": [{"raw": "<think> a </think>\n<search> q </search>", "queries": ["q"], "error": None}],
          "final_raw": "<think> b </think>\n<answer> Paris </answer>"}
    capped = {**ok, "status": "turn_cap"}
    trailing = {**ok, "final_raw": "<think> b </think><answer> Paris </answer> because"}
    bad_step = {**ok, "steps": [{"raw": "<think> a </think> gibberish", "queries": [], "error": "no_action"}]}
    got = format_reward(["q"] * 4, ["?"] * 4, trajectory=[ok, capped, trailing, bad_step])
    assert got == [1.0, 0.0, 0.0, 0.0]


def test_length_penalty():
    f = make_length_penalty(soft=10, hard=20)
    got = f(["q"] * 4, ["x"] * 4, num_model_tokens=[5, 15, 40, 5], status=["answered", "answered", "answered", "length"])
    assert got == [0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError):
        make_length_penalty(soft=10, hard=10)


def test_judge_verdict_parsing_is_strict():
    assert parse_verdict("yes") is True
    assert parse_verdict(" No. ") is False
    assert parse_verdict("<think>hmm</think> Correct") is True
    assert parse_verdict("yes, because Paris") is None
    assert parse_verdict("I think yes") is None
    assert parse_verdict("") is None


def test_judge_reward_with_any_chat_model():
    judge = make_judge_reward(FakeListChatModel(responses=["yes", "Maybe so", "no"]))
    got = judge(["q1", "q2", "q3", "q4"], ["x"] * 4, golden_answers=[["a"], ["b"], ["c"], ["d"]],
                answer=["a", "b", "z", None])
    # the 4th has no answer: no call, 0; the 2nd reply is unparseable: 0
    assert got == [1.0, 0.0, 0.0, 0.0]
    assert judge.stats.calls == 3 and judge.stats.unparseable == 1


def test_build_and_combine():
    funcs, weights = build_reward_funcs(RewardConfig(weights={"format": 0.5, "recall": 1.0, "em": 0.0}))
    assert [f.__name__ for f in funcs] == ["format_reward", "recall_reward"] and weights == [0.5, 1.0]
    comb = combine_rewards(funcs, weights)
    assert comb(["q"], [GOOD], golden_answers=[["Paris"]]) == [1.5]
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward_funcs(RewardConfig(weights={"bogus": 1.0}))
    with pytest.raises(ValueError, match="judge"):
        build_reward_funcs(RewardConfig(weights={"judge": 1.0}))


# ------------------------------------------------------------------ curriculum
def _rows():
    return [{"id": f"{m}-{i}", "mask_count": m} for m in (1, 2, 3, 4) for i in range(3)] + [{"id": "x", "mask_count": 6}]


def test_staged_curriculum_goes_1_to_4():
    order = curriculum_order(_rows(), CurriculumConfig(schedule="staged", seed=1), total=16)
    counts = [min(mask_count_of(r), 4) for r in order]
    assert len(order) == 16 and counts == sorted(counts)
    assert counts.count(1) == 4 and counts.count(4) == 4  # equal shares; 6 masks joins the last stage
    assert [stage_at(s, 8, CurriculumConfig()) for s in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_staged_curriculum_fractions_and_missing_stage():
    rows = [r for r in _rows() if r["mask_count"] == 1]
    order = curriculum_order(rows, CurriculumConfig(stages=[1, 2], stage_fractions=[1, 1]), total=5)
    assert [r["mask_count"] for r in order] == [1] * 5  # stage 2 has no examples: stage 1 takes it all
    order = curriculum_order(_rows(), CurriculumConfig(stages=[1, 2], stage_fractions=[3, 1]), total=8)
    assert [min(r["mask_count"], 2) for r in order] == [1] * 6 + [2] * 2


def test_mixed_curriculum_mixes():
    order = curriculum_order(_rows(), CurriculumConfig(schedule="mixed", seed=0), total=13)
    counts = [mask_count_of(r) for r in order]
    assert sorted(counts) == sorted(r["mask_count"] for r in _rows())
    assert counts != sorted(counts)
    with pytest.raises(ValueError):
        CurriculumConfig(schedule="random")


# ------------------------------------------------------------------ the registry
def test_rewards_by_name_dotted_path_and_decorator():
    from masksearch.training import rewards as R

    funcs, weights = R.build_rewards(["format", "recall", "masksearch.training.rewards:f1_reward",
                                      "masksearch.training.rewards.em_reward"])
    assert [f.__name__ for f in funcs] == ["format_reward", "recall_reward", "f1_reward", "em_reward"]
    assert weights == [0.5, 1.0, 1.0, 1.0]  # registered defaults when reward_weights is unset
    assert R.build_rewards(["recall", "em"], [2.0, 0.5])[1] == [2.0, 0.5]
    # a parametrised reward is built from the options
    (plain,), _ = R.build_rewards(["recall"], options=R.RewardOptions(recall_min_precision=0))
    assert plain(["q"], ["x"], golden_answers=[["Paris"]], answer=["Paris | London"]) == [1.0]
    (capped,), _ = R.build_rewards(["recall"])
    assert capped(["q"], ["x"], golden_answers=[["Paris"]], answer=["Paris | London"]) == [0.75]

    @R.register_reward("shout_test", weight=0.25)
    def shout_reward(prompts, completions, **kwargs):
        return [1.0 if str(c).isupper() else 0.0 for c in completions]

    try:
        funcs, weights = R.build_rewards(["shout_test"])
        assert funcs == [shout_reward] and weights == [0.25] and "shout_test" in R.reward_names()
        assert funcs[0](["q", "q"], ["HI", "hi"]) == [1.0, 0.0]
    finally:
        R._REGISTRY.pop("shout_test")

    with pytest.raises(R.RewardSpecError, match="unknown reward 'bogus'.*format, recall"):
        R.build_rewards(["bogus"])
    with pytest.raises(R.RewardSpecError, match="cannot import module"):
        R.build_rewards(["no_such_pkg.mod:f"])
    with pytest.raises(R.RewardSpecError, match="has no 'nope'"):
        R.build_rewards(["masksearch.training.rewards:nope"])
    with pytest.raises(R.RewardSpecError, match="one weight per reward"):
        R.build_rewards(["format", "recall"], [1.0])
    with pytest.raises(R.RewardSpecError, match="judge model"):
        R.build_rewards(["judge"])
