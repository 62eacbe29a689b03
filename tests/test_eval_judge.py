"""The LLM judge: strict verdict parsing on messy replies, and the judge with a scripted chat model."""

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from masksearch.eval.judge import LLMJudge, parse_verdict


@pytest.mark.parametrize("reply,expected", [
    ("Verdict: CORRECT", True),
    ("verdict: incorrect", False),
    ("The prediction names the same person.\nVerdict: CORRECT", True),
    ("**Verdict:** Incorrect.", False),
    ("  Final verdict - Correct!  ", True),
    ("<verdict>INCORRECT</verdict>", False),
    ("Reasoning here.\nCORRECT", True),
    ("incorrect", False),
    ("Verdict: yes", True),
    ("Verdict = wrong", False),
])
def test_parse_clear_verdicts(reply, expected):
    assert parse_verdict(reply) is expected


@pytest.mark.parametrize("reply", [
    "",
    None,
    "The answer is correct.",            # prose, no verdict line
    "Correct? No, it names the wrong year.",
    "Verdict: not correct",               # negated: refused, not read as "correct"
    "Verdict: CORRECT\nVerdict: INCORRECT",  # contradictory
    "Verdict: partially correct",
    "Verdict: CORRECT or INCORRECT",
    "I cannot decide.",
])
def test_parse_ambiguous_gives_none(reply):
    assert parse_verdict(reply) is None


def test_judge_with_scripted_model_and_prompt_content():
    model = FakeListChatModel(responses=["Same city.\nVerdict: CORRECT", "Hmm, maybe?"])
    judge = LLMJudge(model)
    v = judge.judge("Capital of France?", ["Paris"], "paris, france")
    assert v.correct is True and "CORRECT" in v.raw
    v2 = judge.judge("Capital of France?", ["Paris"], "Lyon")
    assert v2.correct is None  # unparseable reply is no verdict, never a pass

    msgs = LLMJudge.messages("Which films?", ["A", "B"], "A", answer_match="all")
    assert "A | B" in msgs[1]["content"] and "every one" in msgs[1]["content"]
    assert "Verdict: CORRECT" in msgs[1]["content"]


async def test_judge_async_and_empty_prediction_skips_model():
    model = FakeListChatModel(responses=["Verdict: INCORRECT"])
    judge = LLMJudge(model)
    empty = await judge.ajudge("q?", ["x"], "  ")
    assert empty.correct is False and empty.raw == ""  # no model call spent on an empty answer
    v = await judge.ajudge("q?", ["x"], "y")
    assert v.correct is False


def test_one_judge_prompt_and_parser_for_teacher_reward_and_eval():
    import masksearch.agents.judge as agents_judge
    import masksearch.eval.judge as eval_judge
    import masksearch.training.rewards as rewards
    from masksearch.agents.judge import allm_verdict
    from masksearch.utils.aio import run_sync
    from test_teacher_fakes import ScriptedChatModel

    # one parser, everywhere
    assert rewards.parse_verdict is eval_judge.parse_verdict is agents_judge.parse_verdict
    replies = ["The years differ.\nVerdict: INCORRECT", "Verdict: CORRECT", "Verdict: correct\nVerdict: incorrect"]
    model = ScriptedChatModel(scripts={"judge": replies})
    golds, pred = ["1889", "Gustave Eiffel"], "1889 | Eiffel"

    teacher = run_sync(allm_verdict(model, "When and by whom?", golds, pred, "ordered"))
    reward = rewards.make_judge_reward(model)(["When and by whom?"], ["x"], golden_answers=[golds], answer=[pred],
                                              answer_match=["ordered"])
    ev = LLMJudge(model).judge("When and by whom?", golds, pred, "ordered")
    assert teacher["correct"] is False and reward == [1.0] and ev.correct is None  # contradictory: no verdict
    # the same messages reached the model three times: one prompt
    sent = [[(type(m).__name__, m.content) for m in msgs] for role, msgs in model.calls]
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2]
    assert "in this order" in sent[0][1][1] and "1889 | Gustave Eiffel" in sent[0][1][1]


def test_judge_prompt_says_how_several_golds_count():
    from masksearch.agents.judge import judge_messages

    user = {m: judge_messages("q?", ["A", "B"], "A", m)[1]["content"] for m in ("any", "all", "ordered", None)}
    assert "A OR B" in user["any"] and "alternatives" in user["any"]
    assert "A | B" in user["all"] and "any order" in user["all"]
    assert "in this order" in user["ordered"]
    assert "A | B" in user[None] and "required" not in user[None] and "alternatives" not in user[None]  # no claim
    assert "alternatives" not in judge_messages("q?", ["A"], "A", "any")[1]["content"]  # one gold: no note
