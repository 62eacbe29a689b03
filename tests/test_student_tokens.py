"""Exact token bookkeeping of the student graph with a scripted *token model* (the real SmolLM2
tokenizer and chat template, no network): the ids the policy sees each turn, the completion mask,
log-probs, end-of-turn handling and the ``max_completion_tokens`` cap."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from masksearch.data.qa import QAExample
from masksearch.graphs.student import StudentContext, run_student, run_student_batch
from masksearch.protocol import STUDENT_CHAT_TEMPLATE, render_messages

from test_student_graph import TinyRetriever


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model_path)
    t.chat_template = STUDENT_CHAT_TEMPLATE
    return t


@dataclass
class Gen:
    token_ids: list
    logprobs: list
    text: str
    finish_reason: str


class ScriptedTokenModel:
    """Looks like LocalChatModel to the graph: ``.tokenizer`` + ``agenerate_ids``.  Emits the
    scripted text followed by junk (stop handling must cut it), one log-prob per token."""

    def __init__(self, tokenizer, replies, junk=" trailing junk"):
        self.tokenizer, self.replies, self.junk = tokenizer, replies, junk
        self.inputs: list[list[int]] = []
        self.spec = "scripted-token-model"

    async def agenerate_ids(self, prompt_ids, *, max_new_tokens, temperature, top_p, stop):
        self.inputs.append(list(prompt_ids))
        text = self.replies[min(len(self.inputs) - 1, len(self.replies) - 1)]
        ids = self.tokenizer(text + self.junk, add_special_tokens=False)["input_ids"][:max_new_tokens]
        lps = [-0.01 * (i + 1) for i in range(len(ids))]
        return Gen(ids, lps, self.tokenizer.decode(ids), "length" if len(ids) == max_new_tokens else "stop")


EX = QAExample(id="r1", question="[mask] is the capital of France.", golden_answers=["Paris"],
               answer_match="all", source="ramp", metadata={"mask_count": 1})


def _template_text(tok, traj):
    text = tok.apply_chat_template(render_messages(traj), tokenize=False)
    return text


def test_token_stream_equals_template_rendering(tok):
    model = ScriptedTokenModel(tok, [
        "<think> find it </think>\n<search> capital of France </search>",
        "<think> again </think>\n<search> Paris city </search>",
        "<think> done </think>\n<answer> Paris </answer>",
    ])
    traj = run_student(EX, StudentContext(model=model, retriever=TinyRetriever(), k=2))
    assert traj.status == "answered" and traj.answer == "Paris"
    assert traj.metadata == {"answer_match": "all", "mask_count": 1}
    assert traj.provenance.teacher == "scripted-token-model"
    n = len(traj.completion_ids)
    assert len(traj.completion_mask) == n == len(traj.completion_logprobs)
    # prompt = the template of [system, question] with the generation prompt
    assert tok.decode(traj.prompt_ids) == tok.apply_chat_template(render_messages(traj)[:2], tokenize=False,
                                                                  add_generation_prompt=True)
    # the whole stream is the template's rendering of the conversation (the last <|im_end|>\n
    # is never generated: the answer turn stops at </answer>)
    full = tok.decode(traj.prompt_ids + traj.completion_ids)
    assert full + "<|im_end|>\n" == _template_text(tok, traj)
    # each turn continued exactly the ids accumulated so far
    ends = [i for i in range(1, n) if traj.completion_mask[i - 1] == 0 and traj.completion_mask[i] == 1]
    assert model.inputs[0] == traj.prompt_ids
    assert [len(x) - len(traj.prompt_ids) for x in model.inputs[1:]] == ends
    for x in model.inputs[1:]:
        assert x == traj.prompt_ids + traj.completion_ids[: len(x) - len(traj.prompt_ids)]
    # mask 1 exactly on the model's own tokens: their text is the three raw turns, junk cut away
    model_text = tok.decode([t for t, m in zip(traj.completion_ids, traj.completion_mask) if m])
    assert model_text == "".join(s.raw for s in traj.steps) + traj.final_raw
    assert "junk" not in full
    # environment tokens: log-prob 0.0; model tokens: the model's log-probs
    assert all(lp == 0.0 for lp, m in zip(traj.completion_logprobs, traj.completion_mask) if m == 0)
    assert all(lp < 0 for lp, m in zip(traj.completion_logprobs, traj.completion_mask) if m == 1)
    env_text = tok.decode([t for t, m in zip(traj.completion_ids, traj.completion_mask) if not m])
    assert env_text.startswith("<|im_end|>\n<|im_start|>user\n<information>")
    assert env_text.endswith("</information><|im_end|>\n<|im_start|>assistant\n")


def test_end_of_turn_token_not_repeated(tok):
    # the model closes its turn with <|im_end|> instead of </search>: parse closes the tag, the
    # environment does not add a second <|im_end|>
    model = ScriptedTokenModel(tok, ["<think> s </think><search> capital<|im_end|>",
                                     "<think> d </think><answer> Paris<|im_end|>"], junk="")
    traj = run_student(EX, StudentContext(model=model, retriever=TinyRetriever()))
    assert traj.status == "answered" and traj.answer == "Paris"
    full = tok.decode(traj.prompt_ids + traj.completion_ids)
    assert full.count("<|im_end|><|im_end|>") == 0
    assert full + "\n" == _template_text(tok, traj)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    # the model's <|im_end|> tokens are its own (mask 1)
    model_eos = [m for t, m in zip(traj.completion_ids, traj.completion_mask) if t == eos]
    assert model_eos.count(1) == 2


def test_max_completion_tokens_cuts_with_status_length(tok):
    model = ScriptedTokenModel(tok, ["<think> search more </think><search> capital of France </search>"])
    traj = run_student(EX, StudentContext(model=model, retriever=TinyRetriever(), max_completion_tokens=60,
                                          max_turns=10))
    assert traj.status == "length" and traj.answer is None
    assert len(traj.completion_ids) <= 60
    assert len(traj.completion_mask) == len(traj.completion_ids) == len(traj.completion_logprobs)


def test_per_turn_cap_is_not_length_status(tok):
    # a turn cut by max_new_tokens (not by the total budget) is a malformed turn, corrected once
    model = ScriptedTokenModel(tok, ["<think> a very long thought that never ends and keeps going on and on"])
    traj = run_student(EX, StudentContext(model=model, retriever=TinyRetriever(), max_new_tokens=8))
    assert traj.status == "malformed"
    assert "max_new_tokens" in traj.reason
    assert sum(traj.completion_mask) == 16  # two turns of 8 tokens


def test_batch_keeps_each_run_separate(tok):
    model = ScriptedTokenModel(tok, ["<think> t </think><answer> Paris </answer>"])
    exs = [EX, QAExample(id="r2", question="Another [mask] question?", golden_answers=["x"])]
    trajs = run_student_batch(exs, StudentContext(model=model, retriever=TinyRetriever()), concurrency=4,
                              progress=False)
    assert [t.id for t in trajs] == ["r1", "r2"]
    for t, ex in zip(trajs, exs):
        assert ex.question in tok.decode(t.prompt_ids)
        assert all(m == 1 for m in t.completion_mask)


def test_force_answer_continues_the_final_turn_from_a_written_answer_tag(tok):
    # max_turns 2: two searches, the final-answer request, a third search (declined), then the turn
    # again from "<answer>": the model's own words enter with mask 1, the forced tag with mask 0
    search = "<think> more </think>\n<search> capital of France </search>"
    model = ScriptedTokenModel(tok, [search, search, search, " Paris </answer>"])
    ctx = StudentContext(model=model, retriever=TinyRetriever(), k=2, max_turns=2, force_answer=True)
    traj = run_student(EX, ctx)
    assert traj.status == "answered" and traj.answer == "Paris", traj.reason
    assert traj.metadata["forced_answer"] is True and "forced" in traj.reason
    assert len(model.inputs) == 4
    forced = tok("<answer>", add_special_tokens=False)["input_ids"]
    assert model.inputs[3][-len(forced):] == forced
    # the declined third search is not in the stream: the forced turn continues the stream after
    # the final-answer request
    assert model.inputs[3] == model.inputs[2] + forced
    n_before = len(model.inputs[2]) - len(traj.prompt_ids)
    assert traj.completion_mask[n_before:n_before + len(forced)] == [0] * len(forced)
    assert all(traj.completion_mask[n_before + len(forced):])
    assert len(traj.completion_mask) == len(traj.completion_ids) == len(traj.completion_logprobs)
    full = tok.decode(traj.prompt_ids + traj.completion_ids)
    assert full + "<|im_end|>\n" == _template_text(tok, traj)
    assert traj.final_raw == "<answer> Paris </answer>"
    assert any(c.get("declined") == search for c in traj.llm_calls)
    # without it the same script ends at the turn cap
    plain = run_student(EX, StudentContext(model=ScriptedTokenModel(tok, [search, search, search, " Paris </answer>"]),
                                           retriever=TinyRetriever(), k=2, max_turns=2))
    assert plain.status == "turn_cap" and plain.answer is None and "forced_answer" not in plain.metadata
