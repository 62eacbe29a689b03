"""The teacher roles: Planner, Rewriter, Observer (the Judge is in :mod:`masksearch.agents.judge`).

Each role is a message builder, a parser that classifies malformed replies (never raises), and an
async call that retries once with a correction note.  The graph in
:mod:`masksearch.graphs.teacher` wires them together through :func:`plan`, :func:`rewrite` and
:func:`observe`; prompts live in :mod:`masksearch.agents.prompts`, reply schemas in
:mod:`masksearch.agents.schemas`.

Two ways to read a reply (:func:`read_mode`):

* ``"json_schema"``: the backend constrains decoding to the role's JSON schema (an
  OpenAI-compatible model: llama.cpp, vLLM, OpenAI, DashScope), asked for with LangChain's
  ``with_structured_output(schema, method="json_schema", include_raw=True)``;
* ``"tags"``: the reply is free text with ``<think>/<query>/...`` tags (the local transformers
  models, any model without structured outputs).

Either way a reply becomes the same :class:`RoleOutput`, and each call records its way in the
run's ``llm_calls`` (``read``). A query that :func:`masksearch.agents.quality.degenerate_query`
rejects counts as a malformed reply (retried once with the reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from masksearch.agents import prompts, schemas
from masksearch.agents.quality import (
    blank_anchors,
    blank_contexts,
    count_blanks,
    degenerate_query,
    has_letters_or_digits,
    masked_passage,
)
from masksearch.protocol import MAX_REPLY_CHARS, join_answers, last_tag, message_text, split_answer
from masksearch.scoring import span_in_text
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


def search_view(question: str, mode: str) -> str:
    """The question as the roles that write queries see it in JSON mode: a RAMP question's masked
    passage without its instruction paragraph, whose words ("fill in ... with the original text")
    the 1.5B planner wrote into its query in place of a blank; other questions as they are."""
    if mode != "json_schema" or not count_blanks(question):
        return question
    return masked_passage(question)


def planner_messages(question: str, steps: Sequence[dict[str, Any]] = (), feedback: str = "",
                     mode: str = "tags") -> list[Msg]:
    user = f"Question: {search_view(question, mode)}"
    if steps or feedback:
        user += "\n\n" + prompts.PLANNER_REPLAN.format(history=_history(steps), feedback=feedback or "none")
    return [("system", prompts.PLANNER_JSON if mode == "json_schema" else prompts.PLANNER_SYSTEM), ("human", user)]


def rewriter_messages(question: str, sub_query: str, n: int = 3, mode: str = "tags") -> list[Msg]:
    system = prompts.REWRITER_JSON if mode == "json_schema" else prompts.REWRITER_SYSTEM
    return [("system", system.format(n=n)), ("human", f"Question: {search_view(question, mode)}\nSub-query: {sub_query}")]


def observer_messages(question: str, thoughts: Sequence[str], sub_query: str, information: str,
                      turn: int, max_turns: int, mode: str = "tags") -> list[Msg]:
    reasoning = "\n".join(f"- {t}" for t in thoughts if t) or "- (none)"
    user = f"Question: {question}\n\n"
    blanks = blank_contexts(question)
    if blanks:  # where each blank stands: the words to look for in a document
        user += "The blanks in their context:\n" + "\n".join(f"{i}. ...{b}..." for i, b in enumerate(blanks, 1)) + "\n\n"
    user += (f"Reasoning so far:\n{reasoning}\n\n"
             f"Searched for: {sub_query}\nDocuments found:\n{information}\n\n"
             f"Turn {turn} of {max_turns}.")
    if turn >= max_turns:
        user += (" This is the last turn: give your best answer." if mode == "json_schema"
                 else " This is the last turn: give your best <answer>.")
    system = (prompts.OBSERVER_JSON + prompts.OBSERVER_JSON_END[bool(blanks)] if mode == "json_schema"
              else prompts.OBSERVER_SYSTEM)
    return [("system", system), ("human", user)]


# ------------------------------------------------------------------------------- calling
READ_MODES = ("json_schema", "tags")


def read_mode(model: Any) -> str:
    """``"json_schema"`` when ``model`` declares constrained JSON-schema decoding (its
    ``structured_output`` attribute, set on the OpenAI-compatible models), else ``"tags"``."""
    return "json_schema" if getattr(model, "structured_output", None) == "json_schema" else "tags"


@dataclass
class RoleCall:
    """The outcome of one role call (with at most one retry)."""

    output: RoleOutput
    raw: list[str] = field(default_factory=list)  # every reply, the retry included
    malformed: list[str] = field(default_factory=list)  # reasons of the unreadable replies
    error: str | None = None  # the model call itself failed (endpoint down, ...)
    read: str = "tags"  # how the replies were read: "json_schema" | "tags"


# JSON replies -> RoleOutput (the same classification as the tag parsers)
def planner_from_json(data: dict[str, Any]) -> RoleOutput:
    think = " ".join(str(data.get("thought") or "").split())
    query = " ".join(str(data.get("query") or "").split())
    if not query:
        return RoleOutput("malformed", think=think, reason="empty_query")
    return RoleOutput("query", think=think, text=query[:300])


def rewriter_from_json(data: dict[str, Any], max_queries: int = 5) -> RoleOutput:
    out: list[str] = []
    for q in data.get("queries") or []:
        q = " ".join(str(q).split()).strip('"\'')
        if q and len(q) <= 300 and q.lower() not in {x.lower() for x in out}:
            out.append(q)
    if not out:
        return RoleOutput("malformed", reason="no_queries")
    return RoleOutput("queries", queries=out[:max_queries])


def observer_from_json(data: dict[str, Any]) -> RoleOutput:
    """``blanks`` (a RAMP question's per-blank spans, see :func:`schemas.observer_schema`) is the
    answer when the decision is ``answer``: its spans in order, joined as the protocol joins them."""
    think = " ".join(str(data.get("thought") or "").split())
    kind = str(data.get("decision") or "").strip().lower()
    text = " ".join(str(data.get("text") or "").split())
    blanks = data.get("blanks")
    filled = isinstance(blanks, list) and bool(blanks) and all(
        has_letters_or_digits(" ".join(str(b).split())) for b in blanks)
    if kind == "next" and not text and filled:
        # "next" with no query but every blank filled (the 1.5B model's commonest reply at first):
        # read as the answer it holds; check_grounded then decides whether the spans were copied
        # from the right place, so a guess is still refused
        kind = "answer"
    if kind == "answer" and isinstance(blanks, list) and blanks:
        spans = [" ".join(str(b).split()) for b in blanks]
        if not all(has_letters_or_digits(sp) for sp in spans):  # "", " | ", "-": no span at all
            return RoleOutput("malformed", think=think, reason="empty_blank")
        text = join_answers(spans)
    if kind not in ("answer", "next", "replan"):
        return RoleOutput("malformed", think=think, reason="no_decision")
    if not text and kind != "replan":
        return RoleOutput("malformed", think=think, reason=f"empty_{kind}")
    return RoleOutput(kind, think=think, text=text[:300])


def _cut_text(error: Exception) -> str:
    """The text of a reply the OpenAI client refused because ``max_tokens`` cut it."""
    try:
        return str(error.completion.choices[0].message.content or "")  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        return ""


Check = Callable[[RoleOutput], "str | tuple[str, str] | None"]


def check_grounded(question: str, information: str) -> Check:
    """For a RAMP question, an observer answer must be copied from the documents it was shown, and
    from the right place in them.  Read from what the observer saw only (never the gold):

    * ``ungrounded_answer``: a span (``a | b``) does not occur in ``information`` on word
      boundaries (the model guessed);
    * ``out_of_context``: a span occurs, but not next to its blank's neighbours: a document must
      hold the words just before the blank followed by the span, or the span followed by the words
      just after it (the 1.5B model filled a blank with a name the passage mentions elsewhere),
      and the span must not run into those neighbours (``646.38 m or 2,121 ft`` for the blank
      before ``or 2,121``).  The retry note names the neighbours of each such blank.

    Either is a malformed reply, retried once with the reason, so a small model gets one chance to
    copy from the right place or to search again."""
    query_check = check_query(question)

    def check(out: RoleOutput) -> str | tuple[str, str] | None:
        why = query_check(out)
        if why or out.kind != "answer" or not count_blanks(question):
            return why
        spans = split_answer(out.text)
        if any(not span_in_text(information, sp) for sp in spans):
            return "ungrounded_answer"
        anchors = blank_anchors(question)
        if len(anchors) != len(spans):
            return None  # the count is the schema's business (blanks: exactly one per blank)

        def placed(sp: str, left: str, right: str) -> bool:
            if (left and span_in_text(sp, left)) or (right and span_in_text(sp, right)):
                return False  # the span runs into its neighbours ("646.38 m or 2,121 ft")
            return not (left or right) or (bool(left) and span_in_text(information, f"{left} {sp}")) \
                or (bool(right) and span_in_text(information, f"{sp} {right}"))

        wrong = [(i, left, right) for i, (sp, (left, right)) in enumerate(zip(spans, anchors), 1)
                 if not placed(sp, left, right)]
        if not wrong:
            return None
        where = "; ".join(f'blank {i} stands between "{left}" and "{right}"' if left and right else
                          f'blank {i} stands {"after" if left else "before"} "{left or right}"'
                          for i, left, right in wrong)
        return "out_of_context", prompts.OUT_OF_CONTEXT_NOTE.format(where=where)
    return check


def check_query(question: str) -> Callable[[RoleOutput], str | None]:
    """A validator: a planner query or an observer ``next`` query must not be degenerate."""
    def check(out: RoleOutput) -> str | None:
        if out.kind in ("query", "next"):
            why = degenerate_query(out.text, question)
            return f"degenerate_query:{why}" if why else None
        return None
    return check


def with_temperature(model: Any, temperature: float | None) -> Any:
    """``model`` sampling at ``temperature`` (a copy; the model itself when it has no such field,
    already samples at it, or ``temperature`` is None)."""
    fields = getattr(type(model), "model_fields", {})
    if temperature is None or "temperature" not in fields or getattr(model, "temperature", None) == temperature:
        return model
    return model.model_copy(update={"temperature": float(temperature)})


async def call_role(model: Any, role: str, messages: list[Msg], parser: Callable[[str], RoleOutput],
                    retries: int = 1, *, schema: dict[str, Any] | None = None,
                    from_json: Callable[[dict[str, Any]], RoleOutput] | None = None,
                    validate: Check | None = None, retry_temperature: float | None = None) -> RoleCall:
    """Call ``model`` with ``messages``, read the reply; on a malformed one retry once with a note.

    A retry samples at ``retry_temperature`` when it is given: a greedy model asked again with a
    note mostly repeats its reply (the 1.5B observer did in 14 of 15 refused runs).

    With a ``schema`` (and ``from_json``) and a model whose :func:`read_mode` is ``json_schema``,
    the reply is decoded under that JSON schema (``with_structured_output(..., method=
    "json_schema", include_raw=True)``) and read by ``from_json``; otherwise ``parser`` reads the
    tags. ``validate`` may reject a readable reply with a reason (e.g. a degenerate query).
    Exceptions from the model become ``RoleCall.error`` (the run then ends with status
    ``error``): a role never crashes the graph.
    """
    mode = read_mode(model) if schema is not None and from_json is not None else "tags"
    call = RoleCall(output=RoleOutput("malformed", reason="not_called"), read=mode)
    def reader(m: Any) -> Any:
        if mode == "json_schema":
            return m.with_structured_output(schema, method="json_schema", include_raw=True, strict=True)
        return m

    runnable = reader(model)
    msgs = list(messages)
    for attempt in range(retries + 1):
        if attempt == 1 and retry_temperature is not None:
            runnable = reader(with_temperature(model, retry_temperature))
        try:
            reply = await runnable.ainvoke(msgs, config={"metadata": {"role": role, "attempt": attempt, "read": mode},
                                                         "tags": [f"role:{role}"]})
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ != "LengthFinishReasonError":
                call.error = scrub(f"{role} model call failed: {type(e).__name__}: {e}")
                return call
            # a JSON reply cut by the token limit (the OpenAI client refuses to parse it): malformed,
            # with the cut text kept (the client's exception carries the completion)
            reply = {"raw": _cut_text(e), "parsed": None, "cut": True}
        if mode == "json_schema":
            text = message_text(reply.get("raw"))
            data = reply.get("parsed")
            out = (from_json(data) if isinstance(data, dict)
                   else RoleOutput("malformed", reason="json_cut" if reply.get("cut") else "invalid_json"))
        else:
            text = message_text(reply)
            out = parser(text)
        note_for: str | None = None
        if out.ok and validate is not None:
            why = validate(out)
            if isinstance(why, tuple):  # (reason, the retry note that explains it)
                why, note_for = why
            if why:
                out = RoleOutput("malformed", think=out.think, text=out.text, reason=why)
        call.raw.append(text)
        call.output = out
        if out.ok:
            return call
        call.malformed.append(out.reason or "malformed")
        note = prompts.RETRY_NOTE.format(reason=out.reason)
        if out.reason == "json_cut":
            note = "Your reply was cut by the length limit. Reply again, shorter."
        if out.reason == "empty_next":
            note = prompts.EMPTY_NEXT_NOTE
        if out.reason == "ungrounded_answer":
            note = prompts.UNGROUNDED_NOTE
        if (out.reason or "").startswith("degenerate_query:"):
            note = (f"That query is not usable: {prompts.DEGENERATE_NOTE.get(out.reason.split(':', 1)[1], out.reason)}. "
                    + prompts.QUERY_RULES + " Reply again.")
        if note_for:
            note = note_for
        msgs = msgs + [("ai", text), ("human", note)]
    return call


# ------------------------------------------------------------------------------- the roles
async def plan(model: Any, question: str, steps: Sequence[dict[str, Any]] = (), feedback: str = "",
               retries: int = 1, retry_temperature: float | None = None) -> RoleCall:
    """The Planner: a thought and the first (or, on a re-plan, a new) search query."""
    mode = read_mode(model)
    return await call_role(model, "planner", planner_messages(question, steps, feedback, mode), parse_planner,
                           retries, schema=schemas.planner_schema(), from_json=planner_from_json,
                           validate=check_query(question), retry_temperature=retry_temperature)


async def rewrite(model: Any, question: str, sub_query: str, n: int = 3, max_queries: int = 5,
                  retries: int = 1, retry_temperature: float | None = None) -> RoleCall:
    """The Rewriter: up to ``max_queries`` search queries for the sub-query; degenerate ones are dropped
    (they still leave the sub-query itself, which the graph searches first)."""
    mode = read_mode(model)
    call = await call_role(model, "rewriter", rewriter_messages(question, sub_query, n, mode),
                           lambda t: parse_rewriter(t, max_queries), retries,
                           schema=schemas.rewriter_schema(n), from_json=lambda d: rewriter_from_json(d, max_queries),
                           retry_temperature=retry_temperature)
    if call.output.ok:
        call.output.queries = [q for q in call.output.queries if degenerate_query(q, question) is None]
    return call


async def observe(model: Any, question: str, thoughts: Sequence[str], sub_query: str, information: str,
                  turn: int, max_turns: int, retries: int = 1, retry_temperature: float | None = None) -> RoleCall:
    """The Observer: answer, next query or re-plan; on the last turn a constrained decoder may only answer."""
    mode = read_mode(model)
    decisions = ("answer",) if turn >= max_turns else ("answer", "next", "replan")
    return await call_role(model, "observer",
                           observer_messages(question, thoughts, sub_query, information, turn, max_turns, mode),
                           parse_observer, retries, schema=schemas.observer_schema(decisions, count_blanks(question)),
                           from_json=observer_from_json, validate=check_grounded(question, information),
                           retry_temperature=retry_temperature)
