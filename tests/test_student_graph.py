"""Student graph control flow with scripted models and a tiny in-memory retriever (no real model):
stop sequences, turn cap, malformed output, failed search, exact token bookkeeping."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever

from masksearch.agents.student import FINAL_ANSWER_PROMPT
from masksearch.data.qa import QAExample
from masksearch.graphs.student import StudentContext, build_student_graph, run_student, run_student_batch
from masksearch.protocol import render_messages

PASSAGES = [
    ("p1", "Paris", "Paris is the capital and most populous city of France."),
    ("p2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    ("p3", "Rome", "Rome is the capital city of Italy."),
]


class TinyRetriever(BaseRetriever):
    """Word-overlap retriever over three passages; ``fail=True`` raises on every call."""

    fail: bool = False
    calls: list = []

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        self.calls.append(query)
        if self.fail:
            raise ConnectionError("index offline")
        q = set(query.lower().split())
        scored = sorted(PASSAGES, key=lambda p: -len(q & set(p[2].lower().replace(".", "").split())))
        return [LCDocument(page_content=t, metadata={"id": i, "title": ti, "score": 1.0}) for i, ti, t in scored]


class ScriptedChat(BaseChatModel):
    """Returns the scripted replies in order; ignores ``stop`` unless ``honor_stop`` (so the graph's
    own cutting is exercised)."""

    replies: list[str]
    seen: list = []
    stops: list = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        self.seen.append([m.content for m in messages])
        self.stops.append(stop)
        text = self.replies[min(len(self.seen) - 1, len(self.replies) - 1)]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


EX = QAExample(id="q1", question="What is the capital of France?", golden_answers=["Paris"], source="toy")


def ctx(model, retriever=None, **kw):
    return StudentContext(model=model, retriever=retriever or TinyRetriever(), **kw)


def test_search_then_answer_and_stop_cutting():
    model = ScriptedChat(replies=[
        "<think>I need the capital.</think>\n<search>capital of France</search> junk after stop",
        "<think>Found it.</think>\n<answer>Paris</answer><|im_end|> more",
    ])
    retr = TinyRetriever()
    traj = run_student(EX, ctx(model, retr, k=2))
    assert traj.status == "answered" and traj.answer == "Paris"
    assert model.stops[0] == ["</search>", "</answer>"]
    # the text after the stop sequence was cut away
    assert traj.steps[0].raw.endswith("</search>") and "junk" not in traj.steps[0].raw
    assert traj.final_raw.endswith("</answer>")
    assert traj.steps[0].queries == ["capital of France"]
    assert retr.calls == ["capital of France"]
    # the observation is formatted by the search tool and wrapped in <information>
    info = traj.steps[0].information
    assert info.startswith("<information>") and info.endswith("</information>")
    assert "Paris is the capital" in info and len(traj.steps[0].documents) == 2
    # the model saw the observation as a user turn, before answering
    assert model.seen[1][-1] == info
    assert traj.provenance.graph == "student" and traj.provenance.teacher
    assert traj.metadata["answer_match"] == "any"
    assert traj.prompt_ids is None  # not a token model
    # render_messages reproduces the conversation the model saw
    msgs = render_messages(traj)
    assert [m["content"] for m in msgs[:-1]] == model.seen[1]


def test_turn_cap_asks_once_for_final_answer():
    model = ScriptedChat(replies=["<think>more</think><search>capital</search>"])
    traj = run_student(EX, ctx(model, max_turns=2))
    assert traj.status == "turn_cap" and traj.answer is None
    assert traj.num_searches == 2  # the third search (after the final-answer request) is not run
    assert len(model.seen) == 3
    assert FINAL_ANSWER_PROMPT in model.seen[2][-1]
    assert FINAL_ANSWER_PROMPT not in model.seen[1][-1]


def test_turn_cap_then_answer_is_answered():
    model = ScriptedChat(replies=["<think>a</think><search>capital</search>", "<think>b</think><answer>Paris</answer>"])
    traj = run_student(EX, ctx(model, max_turns=1))
    assert traj.status == "answered" and traj.answer == "Paris" and traj.num_searches == 1


def test_malformed_gets_one_correction_then_ends():
    model = ScriptedChat(replies=["I think it is Paris.", "still no tags"])
    traj = run_student(EX, ctx(model))
    assert traj.status == "malformed" and traj.answer is None
    assert len(model.seen) == 2
    assert "did not follow the format" in model.seen[1][-1]
    assert traj.steps[0].error.startswith("malformed") and traj.steps[0].queries == []
    assert traj.num_searches == 0


def test_malformed_recovers_after_correction():
    model = ScriptedChat(replies=["<search><think>x</think></search>", "<think>ok</think><answer>Paris</answer>"])
    traj = run_student(EX, ctx(model))
    assert traj.status == "answered" and traj.answer == "Paris"
    assert "nested_tags" in traj.steps[0].error


def test_failed_search_becomes_observation():
    model = ScriptedChat(replies=["<think>s</think><search>capital</search>", "<think>none</think><answer>unknown</answer>"])
    traj = run_student(EX, ctx(model, TinyRetriever(fail=True)))
    assert traj.status == "answered"
    step = traj.steps[0]
    assert step.error and step.documents == []
    assert step.information.startswith("<information>") and "Search failed" in step.information
    assert model.seen[1][-1] == step.information


def test_model_exception_is_status_error_and_batch_survives():
    class Boom(ScriptedChat):
        def _generate(self, messages, stop=None, run_manager=None, **kw):
            if "boom" in messages[-1].content:
                raise RuntimeError("model crashed")
            return super()._generate(messages, stop, run_manager, **kw)

    model = Boom(replies=["<think>t</think><answer>Paris</answer>"])
    exs = [EX, QAExample(id="q2", question="boom", golden_answers=["x"]), QAExample(id="q3", question="Capital of Italy?", golden_answers=["Rome"])]
    trajs = run_student_batch(exs, ctx(model), concurrency=2, progress=False)
    assert [t.id for t in trajs] == ["q1", "q2", "q3"]
    assert [t.status for t in trajs] == ["answered", "error", "answered"]
    assert "model crashed" in trajs[1].reason


def test_graph_uses_context_schema():
    g = build_student_graph()
    assert set(g.get_graph().nodes) >= {"policy", "search"}
    assert g.builder.context_schema is StudentContext
