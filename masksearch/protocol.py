"""The tag protocol, in one place.

A search agent writes ``<think>…</think>`` then either ``<search>query</search>`` or
``<answer>…</answer>``; the environment answers a search with ``<information>…</information>``
(never trained on).  This module has the two halves every other module calls:

* **render** – a :class:`~masksearch.trajectory.Trajectory` to chat messages (TRL's conversational
  format) and to the exact text a model sees through a chat template;
* **parse** – a model reply to the next :class:`Action` (search queries / answer / malformed).
  Malformed replies are classified, never raised.

Environment turns are ``user`` messages whose content is the ``<information>`` block, so any
chat model (API or local) can continue the conversation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

from masksearch.trajectory import Step, Trajectory

THINK, SEARCH, INFORMATION, ANSWER = "think", "search", "information", "answer"
TAGS = (THINK, SEARCH, INFORMATION, ANSWER)

# Stop sequences for a policy turn: generation ends right after a search or an answer.
STOP_SEQUENCES = ("</search>", "</answer>")

STUDENT_SYSTEM_PROMPT = (
    "You are a search agent. Answer the user's question by searching a knowledge source.\n"
    "Each turn, first reason inside <think> and </think>. Then either search, writing one query "
    "inside <search> and </search> (the results come back inside <information> and "
    "</information>), or give the final answer inside <answer> and </answer>. "
    "Search as many times as you need. When the question has several [mask] blanks, answer with "
    "the filled spans in order, separated by ' | '. The answer is short: no explanation."
)

# ChatML (the format SmolLM2 and Qwen use) with {% generation %} markers around assistant
# content, so transformers/TRL can compute the assistant-only loss mask.  Unlike SmolLM2's own
# template it injects no default system prompt.
STUDENT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

MASK_TOKEN = "[mask]"
ANSWER_SEPARATOR = " | "

ActionKind = Literal["search", "answer", "malformed"]
MalformedReason = Literal[
    "empty",
    "no_action",
    "unbalanced_tags",
    "search_and_answer",
    "empty_query",
    "empty_answer",
    "nested_tags",
    "information_written",
    "too_long",
]


@dataclass
class Action:
    """What a policy reply asks for next."""

    kind: ActionKind
    think: str = ""
    queries: list[str] = field(default_factory=list)
    answer: str | None = None
    reason: str | None = None  # a MalformedReason when kind == "malformed"
    trailing: str = ""  # text after the closing action tag (a format fault, not fatal)

    @property
    def ok(self) -> bool:
        return self.kind != "malformed"


# ------------------------------------------------------------------------------ tag scanning
# One rule for every parser (student, teacher roles, baselines): tag names are matched
# case-insensitively (``<ANSWER>`` is ``<answer>``), and scanning is linear in the reply length:
# ``str.find``/``count`` over a lower-cased copy with the same offsets, no backtracking regex, few
# allocations.  Replies longer than MAX_REPLY_CHARS are classified ``too_long`` without a scan.
MAX_REPLY_CHARS = 32_768

_ANY_OPEN_RE = re.compile(r"<[a-z]+>", re.I)
_OPEN_TAG_RE = re.compile(r"<(?:" + "|".join(TAGS) + r")>", re.I)
_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def _lower(text: str) -> str:
    """``text`` lower-cased with every character at the same offset."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def close_dropped_stop(text: str) -> str:
    """Close a final ``<search>``/``<answer>`` cut by a stop sequence that the backend did not
    echo back (API backends drop the stop string; token models never need this)."""
    low = _lower(text)
    for tag in (SEARCH, ANSWER):
        o, c = f"<{tag}>", f"</{tag}>"
        if low.count(o) == low.count(c) + 1 and low.rfind(o) > low.rfind(c):
            text, low = text + c, low + c
    return text


def message_text(msg: Any) -> str:
    """The text of a chat message (LangChain message, dict or plain content): string content as
    is, content blocks joined by their ``text``."""
    content = msg.get("content", "") if isinstance(msg, dict) else getattr(msg, "content", msg)
    if isinstance(content, list):
        content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return "" if content is None else str(content)


def tag_bodies(text: str, tag: str, low: str | None = None) -> list[str]:
    """Bodies of ``<tag>…</tag>`` pairs, left to right, non-overlapping: each opening tag pairs with
    the first closing tag after it (what ``re.findall(r"<tag>(.*?)</tag>")`` gives, in linear time)."""
    low = _lower(text) if low is None else low
    o, c = f"<{tag}>", f"</{tag}>"
    out, pos = [], 0
    while True:
        i = low.find(o, pos)
        if i < 0:
            return out
        j = low.find(c, i + len(o))
        if j < 0:
            return out
        out.append(text[i + len(o):j])
        pos = j + len(c)


def last_tag(text: str, tag: str) -> str | None:
    """Body of the last ``<tag>…</tag>`` (stripped); else an unclosed ``<tag>`` (cut by a token
    limit) up to the next opening tag of any name; else None.  Case-insensitive, linear time."""
    if not text:
        return None
    low = _lower(text)
    closed = tag_bodies(text, tag, low)
    if closed:
        return closed[-1].strip()
    first = low.find(f"<{tag}>")
    if first < 0:
        return None
    first += len(tag) + 2
    m = _ANY_OPEN_RE.search(text, first)
    return text[first:m.start() if m else len(text)].strip()


def split_queries(body: str) -> list[str]:
    """One query per non-empty line of a ``<search>`` block."""
    return [q.strip() for q in body.strip().splitlines() if q.strip()]


def parse_action(text: str | None) -> Action:
    """Parse one policy reply into an :class:`Action`.

    The reply may lack its final closing tag when generation stopped on the stop sequence and the
    backend dropped it (OpenAI-compatible servers do): an unclosed last ``<search>``/``<answer>``
    is closed here.  Everything else that deviates is classified as malformed with a reason.
    Tags are case-insensitive; a reply over :data:`MAX_REPLY_CHARS` is ``too_long``.
    """
    if text is None or not text.strip():
        return Action("malformed", reason="empty")
    if len(text) > MAX_REPLY_CHARS:
        return Action("malformed", reason="too_long")
    text = close_dropped_stop(text.strip())
    low = _lower(text)
    think_i = low.find(f"<{THINK}>")
    think_j = low.find(f"</{THINK}>", think_i + len(THINK) + 2) if think_i >= 0 else -1
    think = text[think_i + len(THINK) + 2:think_j].strip() if think_j >= 0 else ""
    if low.count(f"<{INFORMATION}>"):
        return Action("malformed", think=think, reason="information_written")
    for tag in TAGS:
        if low.count(f"<{tag}>") != low.count(f"</{tag}>"):
            return Action("malformed", think=think, reason="unbalanced_tags")
    searches = tag_bodies(text, SEARCH, low)
    answers = tag_bodies(text, ANSWER, low)
    for body in searches + answers:
        if _OPEN_TAG_RE.search(body):
            return Action("malformed", think=think, reason="nested_tags")
    if searches and answers:
        return Action("malformed", think=think, reason="search_and_answer")
    if answers:
        answer = answers[-1].strip()
        end = low.rfind(f"</{ANSWER}>") + len(ANSWER) + 3
        if not answer:
            return Action("malformed", think=think, reason="empty_answer")
        return Action("answer", think=think, answer=answer, trailing=text[end:].strip())
    if searches:
        queries = [q for body in searches for q in split_queries(body)]
        end = low.rfind(f"</{SEARCH}>") + len(SEARCH) + 3
        if not queries:
            return Action("malformed", think=think, reason="empty_query")
        return Action("search", think=think, queries=queries, trailing=text[end:].strip())
    return Action("malformed", think=think, reason="no_action")


def is_well_formed(text: str) -> bool:
    """A whole student transcript is well formed when every assistant turn parses and the last
    one is an answer with nothing after it."""
    a = parse_action(text)
    return a.kind == "answer" and not a.trailing


# ---------------------------------------------------------------------------------- render
def wrap(tag: str, body: str) -> str:
    return f"<{tag}>{body}</{tag}>"


def information_block(formatted_documents: str) -> str:
    """The environment's reply to a search: formatted documents inside ``<information>``."""
    return wrap(INFORMATION, "\n" + formatted_documents.strip() + "\n")


def search_turn(thought: str, queries: Sequence[str]) -> str:
    return wrap(THINK, f" {thought.strip()} ") + "\n" + wrap(SEARCH, " " + "\n".join(queries).strip() + " ")


def answer_turn(thought: str, answer: str) -> str:
    return wrap(THINK, f" {thought.strip()} ") + "\n" + wrap(ANSWER, " " + answer.strip() + " ")


def join_answers(spans: Sequence[str]) -> str:
    """Multi-span answers (several ``[mask]`` blanks, FanoutQA lists) joined in order."""
    return ANSWER_SEPARATOR.join(s.strip() for s in spans)


def split_answer(answer: str | None) -> list[str]:
    if not answer:
        return []
    return [a.strip() for a in answer.split("|") if a.strip()]


# ----------------------------------------------------------------------------------------------
# the environment's half: retrieved documents as the model reads them

NO_RESULTS = "No results found."


def _fields(doc: Any) -> tuple[str, str, str]:
    """(id, title, text) of a LangChain Document, a masksearch Document, a Passage or a dict."""
    if isinstance(doc, dict):
        meta = doc.get("metadata") or {}
        text = doc.get("text", doc.get("page_content", doc.get("contents", "")))
        return (str(doc.get("id", meta.get("id", "")) or ""), str(doc.get("title", meta.get("title", "")) or ""),
                str(text or ""))
    if hasattr(doc, "page_content"):
        meta = getattr(doc, "metadata", None) or {}
        pid = meta.get("id") or getattr(doc, "id", None) or ""
        return str(pid), str(meta.get("title", "") or ""), doc.page_content or ""
    return (str(getattr(doc, "id", "") or ""), str(getattr(doc, "title", "") or ""),
            str(getattr(doc, "text", "") or ""))


def _counter(tokenizer: Any) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda s: len(s.split())
    if callable(getattr(tokenizer, "encode", None)):
        def count(s: str) -> int:
            try:
                return len(tokenizer.encode(s, add_special_tokens=False))
            except TypeError:
                return len(tokenizer.encode(s))
        return count
    return lambda s: len(tokenizer(s))


def _cut(head: str, text: str, budget: int, count: Callable[[str], int]) -> str:
    """``head`` plus the longest prefix of ``text`` (whole words, then ``...``) within ``budget``
    tokens; ``""`` when not even one word fits."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the word count
        mid = (lo + hi + 1) // 2
        if count(f"{head} {' '.join(words[:mid])} ...") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return f"{head} {' '.join(words[:lo])} ..." if lo else ""


def format_documents(docs: Sequence[Any], max_tokens: int | None = 512, tokenizer: Any = None,
                     empty: str = NO_RESULTS) -> str:
    """Format retrieved documents for a model: one ``Doc i (Title: T) text`` line each.

    Documents are deduplicated by id (or by text when they have none), numbered from 1 in the
    order given, and the whole block is cut to ``max_tokens`` tokens: whitespace words, or the
    ``tokenizer``'s tokens when one is given.  The last document that does not fit is truncated
    (ending in ``...``); the ones after it are dropped.  ``docs`` may be LangChain Documents,
    ``masksearch.trajectory.Document``s, ``Passage``s or dicts, or a list of such lists (one per
    query), which is flattened.  No documents -> ``empty``.
    """
    flat: list[Any] = []
    for d in docs or []:
        if isinstance(d, (list, tuple)):
            flat.extend(d)
        else:
            flat.append(d)
    count = _counter(tokenizer)
    sep = 1 if tokenizer is not None else 0  # a newline costs a token, not a whitespace word
    seen: set[str] = set()
    lines: list[str] = []
    used = 0
    for d in flat:
        pid, title, text = _fields(d)
        text = " ".join(text.split())
        key = f"id:{pid}" if pid else f"text:{text}"
        if key in seen:
            continue
        seen.add(key)
        head = f"Doc {len(lines) + 1} (Title: {title})"
        line = f"{head} {text}".rstrip()
        if max_tokens is None:
            lines.append(line)
            continue
        cost = count(line) + (sep if lines else 0)
        if used + cost <= max_tokens:
            lines.append(line)
            used += cost
            continue
        room = max_tokens - used - (sep if lines else 0)
        cut = _cut(head, text, room, count) if room > 0 else ""
        if cut:
            lines.append(cut)
        break
    return "\n".join(lines) if lines else empty



def _step_information(step: Step, fmt: Any = None) -> str:
    if step.information is not None:
        return step.information
    if step.error and not step.documents:
        return information_block(f"Search failed: {step.error}")
    return information_block((format_documents if fmt is None else fmt)(step.documents))


def render_messages(
    traj: Trajectory,
    system_prompt: str | None = STUDENT_SYSTEM_PROMPT,
    include_answer: bool = True,
    format_documents: Any = None,
) -> list[dict[str, str]]:
    """A trajectory as chat messages in TRL's conversational format.

    ``system`` (protocol), ``user`` (question), then per step an ``assistant`` turn
    (``<think>…</think><search>…</search>``) and a ``user`` turn with ``<information>…``, and a
    final ``assistant`` turn with ``<answer>`` (or, for a run that ended otherwise — malformed, cut
    by a budget — its exact last model output).  ``step.raw``/``final_raw`` are used verbatim when
    present, so a student's own transcript renders byte for byte.
    """
    msgs: list[dict[str, str]] = []
    if system_prompt:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": traj.question})
    for step in traj.steps:
        content = step.raw or search_turn(step.thought, step.queries)
        msgs.append({"role": "assistant", "content": content})
        msgs.append({"role": "user", "content": _step_information(step, format_documents)})
    if include_answer and traj.final_raw:  # the exact last model turn, whatever it was
        msgs.append({"role": "assistant", "content": traj.final_raw})
    elif include_answer and traj.answer is not None:
        msgs.append({"role": "assistant", "content": answer_turn(traj.final_thought, traj.answer)})
    return msgs


def ensure_student_template(tokenizer: Any) -> Any:
    """Give a tokenizer the student ChatML template (with generation markers) if it lacks them."""
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    if "{% generation %}" not in tmpl and "{%- generation -%}" not in tmpl:
        tokenizer.chat_template = STUDENT_CHAT_TEMPLATE
    return tokenizer


def tokenize_messages(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """Token ids of a conversation and its assistant mask (1 on assistant-turn tokens, else 0).

    Computed by rendering growing prefixes of the conversation, so it works with any template and
    the mask is exact to the token: system prompt, question and ``<information>`` are 0.
    """
    ids: list[int] = []
    mask: list[int] = []
    prev_text = ""
    for i in range(len(messages)):
        text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(prev_text):  # template not prefix-stable: fall back to whole text
            raise ValueError("chat template is not prefix-stable; cannot compute an exact mask")
        piece = text[len(prev_text):]
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        flag = 1 if messages[i]["role"] == "assistant" else 0
        if flag:
            # the role header "<|im_start|>assistant\n" is the environment's, not the model's
            head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            head_piece = head[len(prev_text):] if head.startswith(prev_text) else ""
            head_ids = tokenizer(head_piece, add_special_tokens=False)["input_ids"] if head_piece else []
            n_head = len(head_ids) if piece_ids[: len(head_ids)] == head_ids else 0
            # the newline after <|im_end|> is template glue, not model output
            tail = 0
            end_tok = tokenizer.convert_tokens_to_ids("<|im_end|>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
            if end_tok is not None and end_tok in piece_ids:
                last = len(piece_ids) - 1 - piece_ids[::-1].index(end_tok)
                tail = len(piece_ids) - 1 - last
            mask += [0] * n_head + [1] * (len(piece_ids) - n_head - tail) + [0] * tail
        else:
            mask += [0] * len(piece_ids)
        ids += piece_ids
        prev_text = text
    return {"input_ids": ids, "assistant_masks": mask}
