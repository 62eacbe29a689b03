"""Every branch of the teacher graph, driven by scripted role replies (control flow only)."""

from __future__ import annotations

import json

import pytest
from test_teacher_fakes import MemoryRetriever, ScriptedChatModel

from masksearch.agents.judge import string_verdict
from masksearch.agents.teacher import parse_observer, parse_planner, parse_rewriter
from masksearch.graphs.teacher import (TeacherContext, arun_teacher, build_teacher_graph, merge_round_robin,
                                       run_teacher)

Q = {"id": "q1", "question": "Who built the Eiffel Tower?", "golden_answers": ["Gustave Eiffel"]}
PLAN = "<think>I need the builder of the tower.</think>\n<query>who built the Eiffel Tower</query>"
REWRITE = "<queries>\nEiffel Tower builder\nGustave Eiffel company\nEiffel Tower construction 1889\n</queries>"
ANSWER = "<think>Doc 1 says his company built it.</think>\n<answer>Gustave Eiffel</answer>"


def ctx(scripts, **kw):
    model = ScriptedChatModel(scripts=scripts)
    kw.setdefault("search_retries", 0)
    return model, TeacherContext(models=model, retriever=kw.pop("retriever", MemoryRetriever()), **kw)


def test_answer_branch_records_everything():
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]})
    t = run_teacher(Q, c)
    assert t.status == "answered" and t.answer == "Gustave Eiffel" and t.reason == ""
    assert t.verdicts["string"]["em"] == 1 and t.verdicts["string"]["recall"] == 1.0
    assert [model.role_calls(r) for r in ("planner", "rewriter", "observer")] == [1, 1, 1]
    (step,) = t.steps
    # the sub-query first, then the rewrites: one parallel search per query
    assert step.queries == ["who built the Eiffel Tower", "Eiffel Tower builder", "Gustave Eiffel company",
                            "Eiffel Tower construction 1889"]
    assert sorted(c.retriever.queries) == sorted(step.queries)
    assert step.thought == "I need the builder of the tower."
    ids = [d.id for d in step.documents]
    assert len(ids) == len(set(ids)) and len(ids) <= 10
    assert step.information.startswith("<information>") and "Doc 1 (Title:" in step.information
    assert t.final_thought == "Doc 1 says his company built it."
    # raw node-level calls, in order, with node and role
    assert [(x["node"], x["role"]) for x in t.llm_calls] == [("planner", "planner"), ("rewriter", "rewriter"),
                                                             ("observer", "observer")]
    assert t.llm_calls[0]["output"] == PLAN and t.llm_calls[0]["messages"][0]["role"] == "system"
    assert t.provenance.graph == "teacher" and t.provenance.models == {
        "planner": "scripted", "rewriter": "scripted", "observer": "scripted"}
    assert t.provenance.teacher == "llm:scripted"
    # the observer saw the merged results
    obs_msgs = [m for r, m in model.calls if r == "observer"][0]
    assert "Gustave Eiffel was a French civil engineer" in obs_msgs[-1].content


def test_search_again_branch():
    obs = ["<think>I know the builder; now his birthplace.</think><next>where was Gustave Eiffel born</next>",
           "<think>Dijon.</think><answer>Dijon</answer>"]
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": obs})
    t = run_teacher({**Q, "golden_answers": ["Dijon"]}, c)
    assert t.status == "answered" and t.answer == "Dijon" and t.metadata["turns"] == 2
    assert len(t.steps) == 2 and model.role_calls("planner") == 1 and model.role_calls("rewriter") == 2
    assert t.steps[1].thought == "I know the builder; now his birthplace."
    assert t.steps[1].queries[0] == "where was Gustave Eiffel born"
    assert t.metadata["sub_queries"] == ["who built the Eiffel Tower", "where was Gustave Eiffel born"]


def test_replan_branch_goes_back_to_planner_with_feedback():
    obs = ["<think>Nothing useful.</think><replan>results are about Paris, not the builder</replan>", ANSWER]
    plans = [PLAN, "<think>Try the company.</think><query>Eiffel company tower construction</query>"]
    model, c = ctx({"planner": plans, "rewriter": [REWRITE], "observer": obs})
    t = run_teacher(Q, c)
    assert t.status == "answered" and t.metadata["replans"] == 1
    assert model.role_calls("planner") == 2 and len(t.steps) == 2
    replan_prompt = [m for r, m in model.calls if r == "planner"][1][-1].content
    assert "results are about Paris, not the builder" in replan_prompt
    assert "who built the Eiffel Tower" in replan_prompt  # the history of searches
    assert t.steps[1].queries[0] == "Eiffel company tower construction"


def test_turn_cap_ends_with_reason():
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE],
                    "observer": ["<think>more</think><next>tower builder again</next>"]}, max_turns=3)
    t = run_teacher(Q, c)
    assert t.status == "turn_cap" and t.answer is None
    assert "3 observer turns" in t.reason
    assert model.role_calls("observer") == 3 and len(t.steps) == 3
    assert t.verdicts["string"]["em"] == 0
    last_obs = [m for r, m in model.calls if r == "observer"][-1][-1].content
    assert "last turn" in last_obs


@pytest.mark.parametrize("role", ["planner", "rewriter", "observer"])
def test_malformed_twice_ends_the_run_and_is_counted(role):
    scripts = {"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]}
    scripts[role] = ["I think the answer is somewhere."]  # no tags at all, every time
    model, c = ctx(scripts, replan_on_refusal=False)  # the observer's re-plan is tested below
    t = run_teacher(Q, c)
    assert t.status == "malformed" and role in t.reason and "after retry" in t.reason
    assert model.role_calls(role) == 2  # one retry
    assert sum(v for k, v in t.metadata["malformed"].items() if k.startswith(role + ":")) == 2
    retry_prompt = [m for r, m in model.calls if r == role][1][-1].content
    assert "could not be read" in retry_prompt


def test_refused_observer_replans_while_turns_remain():
    bad = "I think the answer is somewhere."  # no decision: refused, retried, refused again
    plans = [PLAN, "<think>Try the company.</think><query>Eiffel company tower construction</query>"]
    model, c = ctx({"planner": plans, "rewriter": [REWRITE], "observer": [bad, bad, ANSWER]}, max_turns=3)
    t = run_teacher(Q, c)
    assert t.status == "answered" and t.answer == "Gustave Eiffel"
    assert t.metadata["refusals"] == 1 and t.metadata["replans"] == 1 and t.metadata["turns"] == 2
    assert t.metadata["malformed"] == {"observer:no_decision": 2}
    assert model.role_calls("observer") == 3 and model.role_calls("planner") == 2 and len(t.steps) == 2
    replan_prompt = [m for r, m in model.calls if r == "planner"][1][-1].content
    assert "do not hold the passage's sentences" in replan_prompt and "no_decision" in replan_prompt
    assert t.steps[1].queries[0] == "Eiffel company tower construction"
    assert not any(bad in th for th in t.metadata["thoughts"])  # the refused reply teaches nothing


def test_refused_observer_on_the_last_turn_ends_malformed():
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": ["no tags at all"]}, max_turns=2)
    t = run_teacher(Q, c)
    assert t.status == "malformed" and "observer" in t.reason
    assert model.role_calls("observer") == 4 and t.metadata["refusals"] == 1 and len(t.steps) == 2


@pytest.mark.parametrize("retry_temperature,expected", [(0.7, [0.0, 0.7]), (None, [0.0, 0.0])])
def test_a_retry_samples_at_the_retry_temperature(retry_temperature, expected):
    class Sampled(ScriptedChatModel):
        temperature: float = 0.0
        temps: list = []

        def _generate(self, messages, stop=None, run_manager=None, **kw):
            if self._role(messages) == "observer":
                self.temps.append(self.temperature)
            return super()._generate(messages, stop, run_manager, **kw)

    model = Sampled(scripts={"planner": [PLAN], "rewriter": [REWRITE], "observer": ["no tags", ANSWER]}, temps=[])
    c = TeacherContext(models=model, retriever=MemoryRetriever(), search_retries=0, retry_temperature=retry_temperature)
    t = run_teacher(Q, c)
    assert t.status == "answered" and model.temps == expected  # the copy shares the call log
    assert model.temperature == 0.0  # the caller's model is not changed


def test_malformed_once_is_retried_and_recovers():
    model, c = ctx({"planner": ["<think>hmm</think> no query here", PLAN], "rewriter": [REWRITE],
                    "observer": [ANSWER]})
    t = run_teacher(Q, c)
    assert t.status == "answered" and t.metadata["malformed"] == {"planner:no_query": 1}
    assert model.role_calls("planner") == 2


def test_failed_search_is_an_observation_not_a_crash():
    retr = MemoryRetriever(fail_word="builder")
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]}, retriever=retr)
    t = run_teacher(Q, c)
    assert t.status == "answered"
    step = t.steps[0]
    assert "Eiffel Tower builder" in step.error and "index offline" in step.error
    assert step.documents  # the other queries still returned documents


def test_every_search_failing_still_reaches_the_observer():
    retr = MemoryRetriever(fail_word="")  # "" is in every query
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE],
                    "observer": ["<think>search is down</think><next>Eiffel</next>"]}, retriever=retr, max_turns=2)
    t = run_teacher(Q, c)
    assert t.status == "turn_cap" and all(not s.documents for s in t.steps)
    assert "Search failed" in t.steps[0].information
    obs = [m for r, m in model.calls if r == "observer"][0][-1].content
    assert "index offline" in obs


def test_model_error_ends_run_with_status_error():
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]})
    model.raise_for = {"rewriter"}
    t = run_teacher(Q, c)
    assert t.status == "error" and "rewriter model call failed" in t.reason
    assert t.llm_calls[-1]["error"] and "unreachable" in t.llm_calls[-1]["error"]


def test_role_model_mapping_uses_each_roles_model():
    planner_m = ScriptedChatModel(scripts={"planner": [PLAN]}, model_name="big-planner")
    rest = ScriptedChatModel(scripts={"rewriter": [REWRITE], "observer": [ANSWER]}, model_name="small")
    c = TeacherContext(models={"planner": planner_m, "default": rest}, retriever=MemoryRetriever())
    t = run_teacher(Q, c)
    assert t.status == "answered"
    assert [r for r, _ in planner_m.calls] == ["planner"]
    assert [r for r, _ in rest.calls] == ["rewriter", "observer"]
    assert t.provenance.models == {"planner": "big-planner", "rewriter": "small", "observer": "small"}


def test_llm_judge_verdict_recorded():
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER],
                    "judge": ["<verdict>correct</verdict>"]}, llm_judge=True)
    t = run_teacher({**Q, "golden_answers": ["Alexandre Gustave Eiffel"]}, c)
    assert t.verdicts["string"]["em"] == 0 and t.verdicts["llm"]["correct"] is True
    assert t.llm_calls[-1]["role"] == "judge"


def test_token_usage_is_recorded_per_call_where_reported():
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class Counted(ScriptedChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kw):
            text = super()._generate(messages, stop, run_manager, **kw).generations[0].message.content
            n_in = sum(len(str(m.content).split()) for m in messages)
            msg = AIMessage(content=text, usage_metadata={"input_tokens": n_in, "output_tokens": 7, "total_tokens": n_in + 7,
                                                          "input_token_details": {"cache_read": 3}})
            return ChatResult(generations=[ChatGeneration(message=msg)])

    model = Counted(scripts={"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]})
    t = run_teacher(Q, TeacherContext(models=model, retriever=MemoryRetriever(), search_retries=0))
    assert [c["usage"]["completion_tokens"] for c in t.llm_calls] == [7, 7, 7]
    obs = t.llm_calls[-1]
    assert obs["usage"]["prompt_tokens"] == sum(len(m["content"].split()) for m in obs["messages"])
    assert obs["usage"]["cached_tokens"] == 3  # the server's prompt-cache hits, where it reports them
    # summaries add them up per role, per run
    from masksearch.training.export import tokens_by_role

    by_role = tokens_by_role([t, t])
    assert set(by_role) == {"planner", "rewriter", "observer"}
    assert by_role["observer"] == {"cached": 3.0, "calls": 1.0, "completion": 7.0,
                                   "prompt": float(obs["usage"]["prompt_tokens"])}
    # a backend that reports nothing leaves no usage field
    t2 = run_teacher(Q, ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]})[1])
    assert all("usage" not in c for c in t2.llm_calls)
    assert tokens_by_role([t2]) == {}


def test_api_keys_never_reach_the_trace(monkeypatch):
    secret = "sk-test-THIS-IS-A-SECRET-123456"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    leak = f"<think>my key is {secret}</think><answer>Gustave Eiffel</answer>"
    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [leak]})
    t = run_teacher({**Q, "question": f"Who built the Eiffel Tower? {secret}"}, c)
    calls = json.dumps(t.llm_calls)
    assert secret not in calls and "***" in calls


async def test_checkpointer_keeps_the_run_for_inspection(tmp_path):
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    model, c = ctx({"planner": [PLAN], "rewriter": [REWRITE], "observer": [ANSWER]})
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "ck.db")) as saver:
        g = build_teacher_graph(checkpointer=saver)
        t = await arun_teacher(Q, c, graph=g, thread_id="run-q1")
        snap = await g.aget_state({"configurable": {"thread_id": "run-q1"}})
        assert t.status == "answered"
        assert snap.values["answer"] == "Gustave Eiffel" and snap.values["status"] == "answered"
        history = [s async for s in g.aget_state_history({"configurable": {"thread_id": "run-q1"}})]
        assert len(history) >= 6  # planner, rewriter, search, merge, observer, judge


def test_merge_round_robin_dedupes_and_caps():
    a = [{"id": "a1"}, {"id": "a2"}, {"id": "x"}]
    b = [{"id": "x"}, {"id": "b2"}]
    c = [{"id": "c1"}]
    assert [d["id"] for d in merge_round_robin([a, b, c], 10)] == ["a1", "x", "c1", "a2", "b2"]
    assert [d["id"] for d in merge_round_robin([a, b, c], 3)] == ["a1", "x", "c1"]


def test_parsers_classify_instead_of_raising():
    assert parse_planner("").reason == "empty"
    assert parse_planner("<think>x</think>").reason == "no_query"
    assert parse_planner("<think>x</think><query>cut by the token lim").text == "cut by the token lim"
    r = parse_rewriter("1. first q\n2) second q\n- third q\n- first q")
    assert r.queries == ["first q", "second q", "third q"]
    assert parse_observer("<answer>a</answer><next>b</next>").reason == "several_decisions"
    assert parse_observer("<think>t</think><answer> </answer>").reason == "empty_answer"
    assert parse_observer("<think>t</think><replan>no luck</replan>").kind == "replan"


def test_string_verdict_span_by_span_for_ramp():
    v = string_verdict("Louvre | Paris", ["Louvre", "Paris"], "ordered")
    assert v["em"] == 1 and v["recall"] == 1.0
    v = string_verdict("Paris | Louvre", ["Louvre", "Paris"], "ordered")  # RAMP masks: order matters
    assert v["em"] == 0 and v["recall"] == 0.0
    v = string_verdict("Paris | Louvre", ["Louvre", "Paris"], "all")  # FanoutQA-style: any order
    assert v["em"] == 1 and v["recall"] == 1.0
    v = string_verdict("Paris | Louvre", ["Louvre", "Paris"], "all", mask_count=2)  # a RAMP record saying "all"
    assert v["em"] == 0 and v["match"] == "ordered"
    v = string_verdict("the Louvre", ["Louvre", "Paris"], "ordered")
    assert v["em"] == 0 and v["recall"] == 0.5
    assert string_verdict("The Gustave Eiffel.", ["gustave eiffel", "x"], "any")["em"] == 1
