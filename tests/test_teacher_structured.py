"""Structured (JSON-schema) role replies, the degenerate-query rule, and how each role was read."""

from __future__ import annotations

import asyncio

import pytest

from masksearch.agents import schemas
from masksearch.agents import teacher as roles
from masksearch.agents.quality import degenerate_query
from masksearch.trajectory import Step, Trajectory

RAMP_Q = ("In [mask], tulip traders could no longer find new buyers. Prices collapsed and the bubble burst. "
          "Mackay says the Dutch devolved into accusations.\n\nFill in each of the 1 [mask] blanks in the "
          "passage above with the original text.")


@pytest.mark.parametrize("query,why", [
    ("", "empty"), ("  ", "empty"), ("a?", "too_short"),
    ("next sub-query", "prompt_echo"), ("latest search results", "prompt_echo"),
    ("the search query", "prompt_echo"),
    ("In [mask], tulip traders", "mask_token"),
    # the whole masked passage pasted (blank removed): more than a sentence and >= 80 % of it
    ("In tulip traders could no longer find new buyers. Prices collapsed and the bubble burst. Mackay says "
     "the Dutch devolved into accusations.", "copy"),
    # fine: key words, or one sentence of the passage (what the provenance teacher searches)
    ("tulip mania 1637 crash", None),
    ("tulip traders could no longer find new buyers", None),
])
def test_degenerate_queries(query, why):
    assert degenerate_query(query, RAMP_Q) == why


def test_copying_an_ordinary_question_is_a_fair_first_search():
    assert degenerate_query("Who built the Eiffel Tower", "Who built the Eiffel Tower?") is None


def _traj(query: str) -> Trajectory:
    return Trajectory(id="r", question=RAMP_Q, golden_answers=["1637"], status="answered", answer="1637",
                      steps=[Step(thought="t", queries=[query], information="<information>1637</information>")],
                      verdicts={"string": {"em": 1, "recall": 1.0}}, final_thought="found it")


def test_accept_filter_rejects_degenerate_queries():
    from masksearch.training.export import AcceptFilter

    f = AcceptFilter.parse("em")
    assert f.check(_traj("next sub-query")) == (False, "degenerate_query:prompt_echo")
    assert f.check(_traj("tulip mania bubble year")) == (True, "accepted")
    assert AcceptFilter.parse("em,queries=0").check(_traj("next sub-query"))[0] is True


def test_json_replies_read_like_tags():
    assert roles.planner_from_json({"thought": "t", "query": " tulip  mania "}).text == "tulip mania"
    assert roles.planner_from_json({"thought": "t", "query": ""}).reason == "empty_query"
    assert roles.rewriter_from_json({"queries": ["a b c", "A B C", "d e f"]}).queries == ["a b c", "d e f"]
    assert roles.observer_from_json({"thought": "t", "decision": "answer", "text": ""}).reason == "empty_answer"
    assert roles.observer_from_json({"thought": "t", "decision": "maybe", "text": "x"}).reason == "no_decision"
    assert roles.observer_from_json({"thought": "t", "decision": "next", "text": "Dutch tulip"}).kind == "next"


def test_schemas_are_strict_and_the_last_observer_turn_can_only_answer():
    for s in (schemas.planner_schema(), schemas.rewriter_schema(3), schemas.observer_schema(), schemas.judge_schema()):
        assert s["additionalProperties"] is False and s["required"] == list(s["properties"])
    assert list(schemas.planner_schema()["properties"]) == ["thought", "query"]  # think first
    assert schemas.observer_schema(("answer",))["properties"]["decision"]["enum"] == ["answer"]
    assert schemas.rewriter_schema(2)["properties"]["queries"]["maxItems"] == 2


def test_read_mode_follows_the_backend():
    from test_teacher_fakes import ScriptedChatModel

    from masksearch.models.remote import make_openai_compatible

    remote = make_openai_compatible("vllm", "m", base_url="http://127.0.0.1:9/v1")
    assert roles.read_mode(remote) == "json_schema"
    assert roles.read_mode(make_openai_compatible("vllm", "m", base_url="http://127.0.0.1:9/v1",
                                                  structured_output=None)) == "tags"
    assert roles.read_mode(ScriptedChatModel()) == "tags"  # e.g. the local transformers models


def test_degenerate_planner_query_is_retried_with_the_reason():
    import asyncio

    from test_teacher_fakes import ScriptedChatModel

    model = ScriptedChatModel(scripts={"planner": ["<think>t</think><query>next sub-query</query>",
                                                   "<think>t</think><query>tulip mania crash year</query>"]})
    call = asyncio.run(roles.plan(model, RAMP_Q))
    assert call.read == "tags" and call.output.text == "tulip mania crash year"
    assert call.malformed == ["degenerate_query:prompt_echo"]
    retry_note = model.calls[-1][1][-1].content
    assert "repeats words of these instructions" in retry_note


def test_trajectory_records_how_each_role_was_read():
    from test_teacher_fakes import MemoryRetriever, ScriptedChatModel

    from masksearch.graphs.teacher import TeacherContext, run_teacher

    model = ScriptedChatModel(scripts={
        "planner": ["<think>I need the builder.</think><query>Eiffel Tower builder</query>"],
        "rewriter": ["<queries>\nEiffel Tower construction\n</queries>"],
        "observer": ["<think>Doc 1 says so.</think><answer>Gustave Eiffel</answer>"]})
    t = run_teacher({"id": "q", "question": "Who built the Eiffel Tower?", "golden_answers": ["Gustave Eiffel"]},
                    TeacherContext(models=model, retriever=MemoryRetriever(), search_retries=0))
    assert t.status == "answered"
    assert t.metadata["role_reads"] == {"planner": "tags", "rewriter": "tags", "observer": "tags"}
    assert {c["read"] for c in t.llm_calls} == {"tags"}


def test_sft_rows_mix_teachers_with_per_row_provenance(tmp_path):
    from masksearch.training.sft import load_rows
    from masksearch.trajectory import Provenance, write_trajectories

    files = []
    for teacher, query in (("provenance", "tulip traders could no longer find new buyers"),
                           ("llm:llamacpp:qwen2.5-coder-1.5b", "tulip mania bubble year"),
                           ("llm:llamacpp:qwen2.5-coder-1.5b", "next sub-query")):  # rejected: degenerate
        t = _traj(query)
        t.id = f"{teacher}-{len(files)}"
        t.provenance = Provenance(graph="teacher", teacher=teacher)
        f = tmp_path / f"{len(files)}.jsonl"
        write_trajectories(str(f), [t], append=False)
        files.append(f)
    rows = load_rows(files, "ramp")
    assert [r["teacher"] for r in rows] == ["provenance", "llm:llamacpp:qwen2.5-coder-1.5b"]


TWO_BLANKS = ("Smith reached the [mask] World Championship for the first time. He beat [mask] 3–1 in the "
              "first round.\n\nFill in each of the 2 [mask] blanks in the passage above with the original text.")


def test_blank_contexts_name_each_blank_in_order_from_the_question_only():
    from masksearch.agents.quality import blank_contexts, count_blanks

    assert count_blanks(TWO_BLANKS) == 2 and count_blanks("Who built the Eiffel Tower?") == 0
    ctx = blank_contexts(TWO_BLANKS, width=3)
    assert ctx == ["Smith reached the [mask 1] World Championship for", "time. He beat [mask 2] 3–1 in the"]
    assert blank_contexts("Who built the Eiffel Tower?") == []
    # the observer is shown where each blank stands; an ordinary question gets no such block
    msgs = dict(roles.observer_messages(TWO_BLANKS, [], "q", "DOCS", 1, 3, "json_schema"))
    assert "[mask 2] 3–1" in msgs["human"]
    assert "blanks in their context" not in dict(roles.observer_messages("Who?", [], "q", "D", 1, 3))["human"]


def test_observer_schema_holds_one_span_per_blank_and_the_answer_is_read_from_it():
    s = schemas.observer_schema(n_blanks=2)
    assert s["properties"]["blanks"]["minItems"] == s["properties"]["blanks"]["maxItems"] == 2
    assert "blanks" not in schemas.observer_schema()["properties"]
    out = roles.observer_from_json({"thought": "t", "decision": "answer", "text": "", "blanks": ["2014", " Morihiro  Hashimoto"]})
    assert (out.kind, out.text) == ("answer", "2014 | Morihiro Hashimoto")
    assert roles.observer_from_json({"thought": "t", "decision": "answer", "text": "x",
                                     "blanks": ["2014", " "]}).reason == "empty_blank"
    # "next" with no query but every blank filled is the answer it holds (check_grounded judges it);
    # with a blank missing it stays an unreadable next
    held = roles.observer_from_json({"thought": "t", "decision": "next", "text": "", "blanks": ["Edinburgh", "2.25%"]})
    assert (held.kind, held.text) == ("answer", "Edinburgh | 2.25%")
    assert roles.observer_from_json({"thought": "t", "decision": "next", "text": "",
                                     "blanks": ["Edinburgh", ""]}).reason == "empty_next"
    import re
    blank = re.compile(schemas.observer_schema(n_blanks=2)["properties"]["blanks"]["items"]["pattern"])
    assert blank.match("Edinburgh") and not blank.match("In [mask 1] ")  # a blank cannot hold "[mask"
    # a next query ignores the blanks
    nxt = roles.observer_from_json({"thought": "t", "decision": "next", "text": "Smith snooker 2014", "blanks": ["", ""]})
    assert (nxt.kind, nxt.text) == ("next", "Smith snooker 2014")


def test_a_ramp_answer_must_be_copied_from_the_documents_shown():
    info = "<information>Doc 1 (Title: Smith) Smith reached the 2014 World Championship. He beat Ali Carter 3–1.</information>"
    check = roles.check_grounded(TWO_BLANKS, info)
    assert check(roles.RoleOutput("answer", text="2014 | Ali Carter")) is None
    assert check(roles.RoleOutput("answer", text="2013 | Ali Carter")) == "ungrounded_answer"  # a guess
    assert check(roles.RoleOutput("next", text="Smith snooker 2014")) is None
    assert check(roles.RoleOutput("next", text="Smith [mask] 2014")) == "degenerate_query:mask_token"
    # an ordinary question's answer need not be a span of the documents (yes/no, a paraphrase)
    assert roles.check_grounded("Is Smith a snooker player?", info)(roles.RoleOutput("answer", text="yes")) is None


def test_a_ramp_span_must_stand_next_to_its_blanks_neighbours():
    """``out_of_context``: a span that is in the documents but not where its blank is (the 1.5B
    model filled 'Warsaw radio mast – [mask] or 2,121 ft' with 'Burj Khalifa', a name the documents
    hold elsewhere); the retry note names the blank's neighbours."""
    from masksearch.agents.quality import blank_anchors

    assert blank_anchors(TWO_BLANKS) == [("reached the", "World Championship"), ("He beat", "3–1 in")]
    info = "<information>Doc 1 (Title: Smith) Smith reached the 2014 World Championship. He beat Ali Carter 3–1.</information>"
    check = roles.check_grounded(TWO_BLANKS, info)
    assert check(roles.RoleOutput("answer", text="2014 | Ali Carter")) is None
    why, note = check(roles.RoleOutput("answer", text="2014 | Smith"))  # in the documents, wrong place
    assert why == "out_of_context" and 'blank 2 stands between "He beat" and "3–1 in"' in note
    assert "blank 1" not in note
    why, note = check(roles.RoleOutput("answer", text="2014 World Championship | Ali Carter"))  # runs on
    assert why == "out_of_context" and "blank 1" in note and "blank 2" not in note
    # one neighbour is enough (a document may word the other side differently)
    assert roles.check_grounded("The [mask] beat Ali.\n\nFill in the [mask].",
                                "<information>Doc 1 (Title: X) In 2014 Smith beat Ali.</information>")(
        roles.RoleOutput("answer", text="Smith")) is None
    # a blank at the passage's start has only its right neighbours
    why, note = roles.check_grounded("[mask] beat Ali.\n\nFill in the [mask].",
                                     "<information>Doc 1 (Title: X) Smith met Ali; Jones beat Ali.</information>")(
        roles.RoleOutput("answer", text="Smith"))
    assert why == "out_of_context" and 'blank 1 stands before "beat Ali."' in note


def test_the_retry_note_of_a_validator_reaches_the_model():
    class Scripted:
        structured_output = "json_schema"

        def __init__(self, replies):
            self.replies, self.seen = list(replies), []

        def with_structured_output(self, schema, **kw):
            return self

        async def ainvoke(self, msgs, config=None):
            self.seen.append(msgs)
            data = self.replies.pop(0)
            return {"raw": str(data), "parsed": data}

    info = "<information>Doc 1 (Title: Smith) Smith reached the 2014 World Championship. He beat Ali Carter 3–1.</information>"
    model = Scripted([{"thought": "Doc 1 has the passage here.", "decision": "answer", "text": "", "blanks": ["2014", "Smith"]},
                      {"thought": "Doc 1 has the passage here.", "decision": "answer", "text": "", "blanks": ["2014", "Ali Carter"]}])
    call = asyncio.run(roles.observe(model, TWO_BLANKS, [], "Smith 2014", info, turn=1, max_turns=3))
    assert call.malformed == ["out_of_context"] and call.output.text == "2014 | Ali Carter"
    assert model.seen[1][-1][0] == "human" and 'blank 2 stands between "He beat"' in model.seen[1][-1][1]


def test_separator_only_blanks_are_no_answer_and_queries_cannot_hold_a_blank():
    import re

    out = roles.observer_from_json({"thought": "t", "decision": "answer", "text": "", "blanks": [" | ", "x"]})
    assert out.reason == "empty_blank"
    pat = re.compile(schemas.planner_schema()["properties"]["query"]["pattern"])
    assert pat.match("Smith snooker 2014 World Championship")
    assert not pat.match("Smith [mask] 2014") and not pat.match("Robert I | Charles the Simple")
    assert schemas.rewriter_schema(2)["properties"]["queries"]["items"]["pattern"] == pat.pattern
    assert schemas.planner_schema()["properties"]["thought"]["minLength"] >= 20
    # the length bounds are in the pattern (llama.cpp reads a pattern instead of min/maxLength)
    assert not pat.match("ab") and not pat.match("x" * (schemas.QUERY_CHARS + 1)) and pat.match("x" * schemas.QUERY_CHARS)
    text = re.compile(schemas.observer_schema(n_blanks=1)["properties"]["text"]["pattern"])
    assert text.match("") and text.match("Smith snooker | 2014") and not text.match("Smith [mask] 2014")
    assert not text.match("x" * (schemas.TEXT_CHARS + 1))
    # nothing a JSON string cannot hold raw: a pattern admitting '"' let the model end the string
    # inside it, and llama.cpp answered HTTP 500 (see test_llamacpp's structured-output test)
    for bad in ('Smith "snooker"', "back\\slash", "new\nline"):
        assert not pat.match(bad) and not text.match(bad)


def test_a_reply_cut_by_the_token_limit_is_json_cut_with_its_text_kept():
    """The OpenAI client raises on a structured reply cut by ``max_tokens``; the role call records
    the cut text (what the model was writing) and retries with the length note."""
    from types import SimpleNamespace

    class LengthFinishReasonError(Exception):  # the OpenAI SDK's name is what call_role matches
        def __init__(self, content):
            super().__init__("length limit reached")
            self.completion = SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=content))])

    class Cutting:
        structured_output = "json_schema"

        def __init__(self):
            self.calls = 0

        def with_structured_output(self, schema, **kw):
            return self

        async def ainvoke(self, msgs, config=None):
            self.calls += 1
            if self.calls == 1:
                raise LengthFinishReasonError('{"thought": "a very long thought that never')
            return {"raw": '{"thought": "short enough now", "query": "Smith snooker"}',
                    "parsed": {"thought": "short enough now", "query": "Smith snooker"}}

    model = Cutting()
    call = asyncio.run(roles.plan(model, "Who is Smith?"))
    assert call.malformed == ["json_cut"] and call.output.kind == "query" and call.output.text == "Smith snooker"
    assert call.raw[0].startswith('{"thought": "a very long')


def test_query_writers_see_a_ramp_passage_without_its_instruction():
    """In JSON mode the planner and rewriter get the masked passage only: the 1.5B planner wrote
    the instruction's "the original text" into its query in place of the blank."""
    plan = roles.planner_messages(TWO_BLANKS, mode="json_schema")[1][1]
    rew = roles.rewriter_messages(TWO_BLANKS, "Smith 2014", mode="json_schema")[1][1]
    for user in (plan, rew):
        assert "He beat [mask] 3–1" in user and "original text" not in user
    assert "original text" in roles.planner_messages(TWO_BLANKS, mode="tags")[1][1]  # tag prompts unchanged
    assert roles.planner_messages("Who is Smith?", mode="json_schema")[1][1] == "Question: Who is Smith?"
