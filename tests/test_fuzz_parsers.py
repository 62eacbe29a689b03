"""Fuzz: the protocol parsers and corpus readers classify random and adversarial input, never
raise, and take linear time (100 KB / 1 MB of tags in milliseconds, not the seconds a backtracking
regex took)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masksearch.agents.teacher import parse_observer, parse_planner, parse_rewriter
from masksearch.protocol import MAX_REPLY_CHARS, Action, last_tag, parse_action
from masksearch.retrieval.corpus import read_corpus
from masksearch.utils.jsonl import ReadStats, iter_jsonl

PIECES = ["<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>", "<ANSWER>", "</Answer>",
          "<information>", "</information>", "<query>", "</query>", "<queries>", "</queries>", "<next>",
          "<replan>", "</next>", "<", ">", "/", "\n", " ", "Paris", "- q1", "\ud800", "\x00", "é"]
tagged = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=60).map("".join)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(tagged)
def test_parsers_classify_anything(text):
    a = parse_action(text)
    assert isinstance(a, Action) and a.kind in ("search", "answer", "malformed")
    assert (a.kind == "malformed") == (a.reason is not None)
    for parse in (parse_planner, parse_rewriter, parse_observer):
        out = parse(text)
        assert out.ok or out.reason


def test_one_answer_tag_rule_for_student_and_teacher():
    assert parse_action("<think>x</think><ANSWER> Paris </ANSWER>").answer == "Paris"
    assert parse_observer("<think>x</think><ANSWER>Paris</ANSWER>").text == "Paris"
    assert last_tag("<Answer>Paris</answer>", "answer") == "Paris"


def _elapsed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_adversarial_tag_floods_are_fast(size):
    for unit in ("<think>", "<search>", "<answer>a</search>", "<think><answer>"):
        text = unit * (size // len(unit))
        for fn in (parse_action, parse_planner, parse_rewriter, parse_observer):
            assert _elapsed(fn, text) < 0.5, (fn.__name__, unit, size)
        assert parse_action(text).reason == "too_long" and parse_planner(text).reason == "too_long"


@pytest.mark.parametrize("unit", ["<think>", "<think></think>", "<search>q\n", "<Answer>a</answer>x"])
def test_tag_scanning_is_linear(unit):
    """The scan itself (no cap shortcut): 8x the text takes well under 64x (quadratic) the time."""
    small = unit * (MAX_REPLY_CHARS // len(unit))
    big = small * 8
    t_small = min(_elapsed(last_tag, small, "think") + _elapsed(last_tag, small, "answer") for _ in range(5))
    t_big = min(_elapsed(last_tag, big, "think") + _elapsed(last_tag, big, "answer") for _ in range(5))
    assert t_big < 20 * t_small + 0.05, (t_small, t_big)
    assert _elapsed(parse_action, small) < 0.2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.builds(lambda i, t: json.dumps({"id": i, "text": t}).encode(),
                                    st.text(max_size=5), st.text(max_size=40)),
                          st.sampled_from([b"\xef\xbb\xbf{\"id\":\"b\",\"text\":\"bom\"}", b"{\"id\":1,\"text\":\"\\ud800\"}",
                                           b"[]", b"null", b"{\"text\": 5}", b"\xff\xfe"])), max_size=20))
def test_corpus_and_jsonl_readers_never_raise_on_bad_lines(tmp_path, lines):
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    if b"\x00" in p.read_bytes()[:4096] or p.read_bytes().startswith((b"\xff\xfe", b"\xfe\xff")):
        return  # refused as UTF-16 (tested elsewhere)
    stats = ReadStats()
    passages = list(read_corpus(p, fmt="jsonl", stats=stats))
    for q in passages:
        q.text.encode("utf-8")
        q.title.encode("utf-8")
    list(iter_jsonl(p, stats=ReadStats()))
    assert stats.read + stats.n_skipped >= len([x for x in lines if x.strip()]) - sum(1 for x in lines if not x.strip())
