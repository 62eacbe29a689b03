"""The teacher roles: Planner, Rewriter, Observer (the Judge is in :mod:`masksearch.agents.judge`).

Each role is a message builder, a parser that classifies malformed replies (never raises), and an
async call that retries once with a correction note.  The graph in
:mod:`masksearch.graphs.teacher` wires them together; prompts live in
:mod:`masksearch.agents.prompts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from masksearch.agents import prompts
from masksearch.protocol import MAX_REPLY_CHARS, last_tag
from masksearch.utils.scrub import scrub

ROLES = ("planner", "rewriter", "observer", "judge")


@dataclass
class RoleOutput:
    """A parsed role reply: ``kind`` is the decision (``query``, ``queries``, ``answer``, ``next``,
    ``replan``) or ``malformed`` with a ``reason``."""

    kind: str
    think: str = ""
    text: str = ""  # the sub-query / answer / replan note
    queries: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind != "malformed"


def _tag(text: str, tag: str) -> str | None:
    """Body of the last ``<tag>…</tag>``; an unclosed final tag (cut by a token limit) counts.
    The protocol's one tag rule (case-insensitive, linear time): :func:`masksearch.protocol.last_tag`."""
    return last_tag(text, tag)


def _too_long(text: str) -> bool:
    return len(text) > MAX_REPLY_CHARS


_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|q\d*:|query\s*\d*:)\s*", re.I)


def parse_planner(text: str) -> RoleOutput:
    if not text or not text.strip():
        return RoleOutput("malformed", reason="empty")
    if _too_long(text):
        return RoleOutput("malformed", reason="too_long")
    think = _tag(text, "think") or ""
    query = _tag(text, "query")
    if query is None:
        return RoleOutput("malformed", think=think, reason="no_query")
    query = " ".join(query.split())
    if not query:
        return RoleOutput("malformed", think=think, reason="empty_query")
    return RoleOutput("query", think=think, text=query[:300])


def parse_rewriter(text: str, max_queries: int = 5) -> RoleOutput:
    if not text or not text.strip():
        return RoleOutput("malformed", reason="empty")
    if _too_long(text):
        return RoleOutput("malformed", reason="too_long")
    body = _tag(text, "queries")
    if body is None:  # no block: accept a bulleted / numbered list, not free prose
        lines = [ln for ln in re.sub(r"</?[a-z]+>", "\n", text).splitlines() if _BULLET.match(ln) and _BULLET.sub("", ln).strip()]
        if not lines:
            return RoleOutput("malformed", reason="no_queries_block")
        body = "\n".join(lines)
    out: list[str] = []
    for line in body.splitlines():
        q = _BULLET.sub("", line).strip().strip('"\'').strip()
        if not q or len(q) > 300 or q.endswith(":"):
            continue
        if q.lower() not in {x.lower() for x in out}:
            out.append(q)
    if not out:
        return RoleOutput("malformed", reason="no_queries")
    return RoleOutput("queries", queries=out[:max_queries])


def parse_observer(text: str) -> RoleOutput:
    if not text or not text.strip():
        return RoleOutput("malformed", reason="empty")
    if _too_long(text):
        return RoleOutput("malformed", reason="too_long")
    think = _tag(text, "think") or ""
    found = [(k, _tag(text, k)) for k in ("answer", "next", "replan")]
    found = [(k, v) for k, v in found if v is not None]
    if not found:
        return RoleOutput("malformed", think=think, reason="no_decision")
    if len(found) > 1:
        return RoleOutput("malformed", think=think, reason="several_decisions")
    kind, body = found[0]
    body = " ".join(body.split())
    if not body and kind != "replan":
        return RoleOutput("malformed", think=think, reason=f"empty_{kind}")
    return RoleOutput(kind, think=think, text=body[:300])


# ------------------------------------------------------------------------------- messages
Msg = tuple[str, str]


def _history(steps: Sequence[dict[str, Any]], max_chars: int = 1200) -> str:
    lines = []
    for i, s in enumerate(steps, 1):
        titles = ", ".join(dict.fromkeys(d.get("title", "") for d in s.get("documents", [])[:5]))
        lines.append(f"{i}. thought: {s.get('thought', '')} | searched: {'; '.join(s.get('queries', []))} "
                     f"| found: {titles or s.get('error') or 'nothing'}")
    return "\n".join(lines)[-max_chars:] or "(none)"


def planner_messages(question: str, steps: Sequence[dict[str, Any]] = (), feedback: str = "") -> list[Msg]:
    user = f"Question: {question}"
    if steps or feedback:
        user += "\n\n" + prompts.PLANNER_REPLAN.format(history=_history(steps), feedback=feedback or "none")
    return [("system", prompts.PLANNER_SYSTEM), ("human", user)]


def rewriter_messages(question: str, sub_query: str, n: int = 3) -> list[Msg]:
    return [("system", prompts.REWRITER_SYSTEM.format(n=n)),
            ("human", f"Question: {question}\nSub-query: {sub_query}")]


def observer_messages(question: str, thoughts: Sequence[str], sub_query: str, information: str,
                      turn: int, max_turns: int) -> list[Msg]:
    reasoning = "\n".join(f"- {t}" for t in thoughts if t) or "- (none)"
    user = (f"Question: {question}\n\nReasoning so far:\n{reasoning}\n\n"
            f"Latest sub-query: {sub_query}\nLatest search results:\n{information}\n\n"
            f"Turn {turn} of {max_turns}.")
    if turn >= max_turns:
        user += " This is the last turn: give your best <answer>."
    return [("system", prompts.OBSERVER_SYSTEM), ("human", user)]


# ------------------------------------------------------------------------------- calling
@dataclass
class RoleCall:
    """The outcome of one role call (with at most one retry)."""

    output: RoleOutput
    raw: list[str] = field(default_factory=list)  # every reply, the retry included
    malformed: list[str] = field(default_factory=list)  # reasons of the unreadable replies
    error: str | None = None  # the model call itself failed (endpoint down, ...)


def _content(msg: Any) -> str:
    c = getattr(msg, "content", msg)
    if isinstance(c, list):  # content blocks
        c = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in c)
    return str(c or "")


async def call_role(model: Any, role: str, messages: list[Msg], parser: Callable[[str], RoleOutput],
                    retries: int = 1) -> RoleCall:
    """Call ``model`` with ``messages``, parse; on a malformed reply retry once with a note.

    Exceptions from the model become ``RoleCall.error`` (the run then ends with status
    ``error``): a role never crashes the graph.
    """
    call = RoleCall(output=RoleOutput("malformed", reason="not_called"))
    msgs = list(messages)
    for attempt in range(retries + 1):
        try:
            reply = await model.ainvoke(msgs, config={"metadata": {"role": role, "attempt": attempt},
                                                      "tags": [f"role:{role}"]})
        except Exception as e:  # noqa: BLE001
            call.error = scrub(f"{role} model call failed: {type(e).__name__}: {e}")
            return call
        text = _content(reply)
        call.raw.append(text)
        out = parser(text)
        call.output = out
        if out.ok:
            return call
        call.malformed.append(out.reason or "malformed")
        msgs = msgs + [("ai", text), ("human", prompts.RETRY_NOTE.format(reason=out.reason))]
    return call
