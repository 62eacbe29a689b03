"""The tag protocol: parse every reply shape, render trajectories exactly, round-trip JSONL."""

from __future__ import annotations

import pytest

from masksearch import protocol as P
from masksearch.trajectory import Document, Provenance, Step, Trajectory, read_trajectories, write_trajectories


@pytest.mark.parametrize(
    "text, kind, extra",
    [
        ("<think>need facts</think>\n<search> capital of France </search>", "search", ["capital of France"]),
        ("<think>x</think><search>q1\nq2</search>", "search", ["q1", "q2"]),
        ("<think>done</think>\n<answer> Paris </answer>", "answer", "Paris"),
        # generation stopped on the stop string and the backend dropped it
        ("<think>x</think><search>who wrote Hamlet", "search", ["who wrote Hamlet"]),
        ("<think>x</think><answer>Shakespeare", "answer", "Shakespeare"),
        ("<answer>1945 | Berlin</answer>", "answer", "1945 | Berlin"),
    ],
)
def test_parse_valid(text, kind, extra):
    a = P.parse_action(text)
    assert a.kind == kind and a.ok
    if kind == "search":
        assert a.queries == extra
    else:
        assert a.answer == extra


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        (None, "empty"),
        ("   ", "empty"),
        ("I think the answer is Paris.", "no_action"),
        ("<think>only thinking</think>", "no_action"),
        ("<think>x<search>q</search>", "unbalanced_tags"),
        ("<think>x</think><search>q</search><answer>a</answer>", "search_and_answer"),
        ("<think>x</think><search>   </search>", "empty_query"),
        ("<think>x</think><answer> </answer>", "empty_answer"),
        ("<search>q<answer>a</answer></search>", "nested_tags"),
        ("<think>x</think><information>fake docs</information><answer>a</answer>", "information_written"),
    ],
)
def test_parse_malformed_is_classified_not_raised(text, reason):
    a = P.parse_action(text)
    assert a.kind == "malformed" and not a.ok
    assert a.reason == reason


def test_trailing_text_after_answer_is_reported():
    a = P.parse_action("<think>t</think><answer>Paris</answer> and more words")
    assert a.kind == "answer" and a.trailing == "and more words"
    assert not P.is_well_formed("<think>t</think><answer>Paris</answer> extra")
    assert P.is_well_formed("<think>t</think><answer>Paris</answer>")


def test_answers_join_and_split():
    assert P.join_answers([" 1945", "Berlin "]) == "1945 | Berlin"
    assert P.split_answer("1945 | Berlin") == ["1945", "Berlin"]
    assert P.split_answer(None) == []


def _traj() -> Trajectory:
    return Trajectory(
        id="q1",
        question="Who wrote Hamlet?",
        golden_answers=["William Shakespeare"],
        steps=[Step(thought="look it up", queries=["Hamlet author"],
                    documents=[Document(id="d1", title="Hamlet", text="Hamlet is a tragedy by William Shakespeare.", score=3.5)],
                    information="<information>\nDoc 1 (Title: Hamlet) Hamlet is a tragedy by William Shakespeare.\n</information>")],
        answer="William Shakespeare",
        final_thought="the document says so",
        status="answered",
        provenance=Provenance(graph="student", teacher="smollm2", example_id="q1", source="test"),
        metadata={"mask_count": 1},
        completion_ids=[1, 2, 3], completion_mask=[1, 0, 1], completion_logprobs=[-0.1, 0.0, -0.2],
    )


def test_render_messages_shape_and_content():
    msgs = P.render_messages(_traj())
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == P.STUDENT_SYSTEM_PROMPT
    assert msgs[1]["content"] == "Who wrote Hamlet?"
    assert msgs[2]["content"] == "<think> look it up </think>\n<search> Hamlet author </search>"
    assert msgs[3]["content"].startswith("<information>") and msgs[3]["content"].endswith("</information>")
    assert msgs[4]["content"] == "<think> the document says so </think>\n<answer> William Shakespeare </answer>"
    # every assistant turn renders to something the parser reads back
    assert P.parse_action(msgs[2]["content"]).queries == ["Hamlet author"]
    assert P.parse_action(msgs[4]["content"]).answer == "William Shakespeare"


def test_render_uses_raw_model_text_verbatim():
    t = _traj()
    t.steps[0].raw = "<think>raw!</think><search>Hamlet</search>"
    t.final_raw = "<think>ok</think><answer>WS</answer>"
    msgs = P.render_messages(t, system_prompt=None)
    assert msgs[0]["role"] == "user"
    assert msgs[1]["content"] == "<think>raw!</think><search>Hamlet</search>"
    assert msgs[-1]["content"] == "<think>ok</think><answer>WS</answer>"


def test_failed_search_renders_as_observation():
    t = Trajectory(id="x", question="q", steps=[Step(queries=["q"], error="timeout after 3 tries")])
    msgs = P.render_messages(t, include_answer=False)
    assert "Search failed: timeout after 3 tries" in msgs[-1]["content"]


def test_jsonl_round_trip(tmp_path):
    t = _traj()
    path = tmp_path / "t.jsonl"
    write_trajectories(str(path), [t, t])
    back = list(read_trajectories(str(path)))
    assert len(back) == 2
    assert back[0] == t
    assert back[0].steps[0].documents[0].score == 3.5
    assert back[0].num_searches == 1 and back[0].num_queries == 1
    assert back[0].provenance.teacher == "smollm2"


def test_round_trip_skips_bad_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectories(str(path), [_traj()])
    with open(path, "a") as f:
        f.write("{not json\n")
    write_trajectories(str(path), [_traj()])
    assert len(list(read_trajectories(str(path)))) == 2


def test_unanswered_run_renders_its_last_model_turn():
    # a run that ended malformed keeps its last (bad) output, so the transcript is exact
    t = Trajectory(id="m", question="q", status="malformed", final_raw="I will not use tags.")
    msgs = P.render_messages(t, system_prompt=None)
    assert msgs[-1] == {"role": "assistant", "content": "I will not use tags."}
    assert P.render_messages(t, system_prompt=None, include_answer=False)[-1]["role"] == "user"
