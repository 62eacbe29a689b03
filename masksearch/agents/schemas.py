"""JSON schemas of the teacher roles' replies, for backends with constrained decoding.

Each schema is small on purpose (a reply must fit a role's token budget: llama.cpp cuts a reply
at ``max_tokens`` inside a string just as it would cut a tag) and strict (every field required, no
extra fields), so the same schema works with llama.cpp's and vLLM's ``response_format`` and with
OpenAI / DashScope structured outputs. The properties come in the order the model should think:
the thought before the decision. They are asked for through LangChain's
``with_structured_output(schema, method="json_schema")``.
"""

from __future__ import annotations

from typing import Any

THOUGHT_CHARS = 200
QUERY_CHARS = 100
TEXT_CHARS = 200


def _obj(title: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"title": title, "type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


THOUGHT_MIN_CHARS = 20  # a sentence, not one word ("in", "Robert I": what greedy 1.5B thoughts were)
# a search query holds no blank and no span separator: "[mask]" and "a | b" were the commonest
# degenerate queries; the decoder cannot write them at all (JSON-schema ``pattern``, which
# llama.cpp, vLLM and OpenAI structured outputs all support)
# A charset is a negated class, so it must also exclude what a JSON string cannot hold raw (``"``,
# ``\``, control characters): llama.cpp builds the string's grammar from the pattern alone, and a
# pattern that admits ``"`` lets the model close the string inside the pattern, which the
# server's output parser then refuses (HTTP 500 "does not match the expected peg-native format").
_JSON_UNSAFE = r'"\\\x00-\x1f'
QUERY_CHARSET = rf"[^\[\]|{_JSON_UNSAFE}]"
NO_BRACKETS = rf"[^\[\]{_JSON_UNSAFE}]"  # the observer's text: a next query or an answer, never "[mask]"


def _str(max_len: int, min_len: int = 1, charset: str | None = None) -> dict[str, Any]:
    """A string of ``min_len``..``max_len`` characters, optionally from ``charset`` (a regex class).

    With a charset the length bounds are written into the ``pattern`` too (``^C{m,n}$``):
    llama.cpp's schema-to-grammar converter reads a string's ``pattern`` *instead of* its
    ``minLength``/``maxLength``, so a pattern without the bounds let the 1.5B planner copy a whole
    passage into a 120-character query until ``max_tokens`` cut the reply (``json_cut``)."""
    out: dict[str, Any] = {"type": "string", "minLength": min_len, "maxLength": max_len}
    if charset:
        out["pattern"] = f"^{charset}{{{min_len},{max_len}}}$"
    return out


def _query() -> dict[str, Any]:
    return _str(QUERY_CHARS, 3, QUERY_CHARSET)


def planner_schema() -> dict[str, Any]:
    return _obj("planner", {"thought": _str(THOUGHT_CHARS, THOUGHT_MIN_CHARS), "query": _query()})


def rewriter_schema(n: int = 3) -> dict[str, Any]:
    return _obj("rewriter", {"queries": {"type": "array", "items": _query(),
                                         "minItems": 1, "maxItems": max(1, int(n))}})


BLANK_CHARS = 80


def observer_schema(decisions: tuple[str, ...] = ("answer", "next", "replan"), n_blanks: int = 0) -> dict[str, Any]:
    """On the last turn the graph passes ``("answer",)``: the decoder can then only answer.

    For a RAMP question with ``n_blanks`` blanks the reply also holds ``blanks``: exactly one string
    per blank, in order (the answer is read from it, joined with `` | ``), so a small model cannot
    get the number or the separator of the spans wrong."""
    props: dict[str, Any] = {"thought": _str(THOUGHT_CHARS, THOUGHT_MIN_CHARS), "decision": {"type": "string", "enum": list(decisions)},
                             "text": _str(TEXT_CHARS, 0, NO_BRACKETS)}
    if n_blanks > 0:
        props["blanks"] = {"type": "array", "items": _str(BLANK_CHARS, 0, NO_BRACKETS), "minItems": int(n_blanks),
                           "maxItems": int(n_blanks)}
    return _obj("observer", props)


def judge_schema() -> dict[str, Any]:
    return _obj("judge", {"verdict": {"type": "string", "enum": ["correct", "incorrect"]}})
