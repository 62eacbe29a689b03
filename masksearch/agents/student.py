"""The student policy: its prompts and the one call that asks a chat model for the next turn.

The student is a single model that writes ``<think>…</think>`` and then ``<search>…</search>`` or
``<answer>…</answer>``.  Two ways to call it:

* :func:`apolicy_messages` – any LangChain chat model (API, vLLM, local): the conversation goes in
  as chat messages, generation stops at :data:`~masksearch.protocol.STOP_SEQUENCES`.
* :func:`apolicy_ids` – a *token model* (``LocalChatModel``: has ``.tokenizer`` and
  ``agenerate_ids``): the exact token ids the model has seen go in, and the exact generated ids and
  their log-probs come back, cut right after the first stop sequence.  GRPO trains on these ids.

:func:`environment_text` gives the text the chat template puts between an assistant turn and the
next generation prompt (``<|im_end|>\\n<|im_start|>user\\n<information>…<|im_end|>\\n<|im_start|>
assistant\\n`` for ChatML), derived from the template itself so that the token stream the policy
sees always equals the template's rendering of the conversation.

The graph that loops these calls lives in :mod:`masksearch.graphs.student`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from masksearch.models.batching import eos_ids
from masksearch.protocol import STOP_SEQUENCES, close_dropped_stop, message_text

# Environment messages the student graph adds besides <information> blocks (never trained on).
FINAL_ANSWER_PROMPT = (
    "You have used all your searches. Give your final answer now, inside <answer> and </answer>."
)
CORRECTION_PROMPT = (
    "Your reply did not follow the format ({reason}). Think inside <think> and </think>, then "
    "either search with <search>query</search> or answer with <answer>answer</answer>."
)


def correction_message(reason: str | None) -> str:
    return CORRECTION_PROMPT.format(reason=(reason or "malformed").replace("_", " "))


@dataclass
class PolicyOutput:
    """One policy turn.

    ``text`` is the exact assistant content (for a token model: the decoded kept ids, without a
    trailing end-of-turn token); ``token_ids``/``logprobs`` are only set for token models and
    include the end-of-turn token when the model produced one (``ended_with_eos``).
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str = "stop"  # stop | length | eos
    ended_with_eos: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def is_token_model(model: Any) -> bool:
    """True for models that expose exact token ids (``LocalChatModel`` and look-alikes)."""
    return callable(getattr(model, "agenerate_ids", None)) and getattr(model, "tokenizer", None) is not None


def model_name(model: Any) -> str:
    """A readable name for provenance: the spec it was made from when known."""
    for attr in ("spec", "model_spec", "model_name", "model"):
        v = getattr(model, attr, None)
        if isinstance(v, str) and v:
            return v
    return type(model).__name__


# ------------------------------------------------------------------------------ stop handling
def cut_text_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> tuple[str, bool]:
    """Cut ``text`` right after the earliest stop sequence (kept).  Returns (text, hit)."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return (text[:best], True) if best is not None else (text, False)


def cut_ids_at_stop(tokenizer: Any, ids: list[int], stops: Sequence[str] = STOP_SEQUENCES) -> tuple[int, str]:
    """Length of the shortest prefix of ``ids`` that completes a stop sequence or ends with an
    end-of-turn token, and why it ended (``stop``/``eos``/``none``)."""
    eos = set(eos_ids(tokenizer))
    n = len(ids)
    for i, t in enumerate(ids):
        if t in eos:
            n = i + 1
            reason = "eos"
            break
    else:
        reason = "none"
    full = tokenizer.decode(ids[:n], skip_special_tokens=False)
    if not any(s in full for s in stops):
        return n, reason
    # the shortest prefix whose decoded text holds a stop sequence (contains-stop is monotone)
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in tokenizer.decode(ids[:mid], skip_special_tokens=False) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo, "stop"


# ------------------------------------------------------------------------------ template glue
def render_template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Ids of the chat template's rendering of ``messages`` (system + question) with the
    generation prompt: what the policy sees before its first turn."""
    return encode(tokenizer, render_template(tokenizer, messages, add_generation_prompt=True))


def environment_text(tokenizer: Any, history: list[dict[str, str]], assistant_text: str, env_content: str,
                     ended_with_eos: bool = False) -> str:
    """The text between the end of an assistant turn's content and the next generation.

    ``history`` is the conversation before the assistant turn.  Derived from the template: the
    rendering of ``history + [assistant, user(env_content)]`` with a generation prompt, minus the
    rendering of ``history`` with a generation prompt plus the assistant content.  When the model
    already produced the end-of-turn token it is not repeated.
    """
    prefix = render_template(tokenizer, history, add_generation_prompt=True) + assistant_text
    full = render_template(
        tokenizer,
        history + [{"role": "assistant", "content": assistant_text}, {"role": "user", "content": env_content}],
        add_generation_prompt=True,
    )
    if not full.startswith(prefix):
        raise ValueError("the chat template does not render assistant content verbatim; "
                         "use masksearch.protocol.STUDENT_CHAT_TEMPLATE")
    text = full[len(prefix):]
    if ended_with_eos:
        eos_text = tokenizer.eos_token or "<|im_end|>"
        if text.startswith(eos_text):
            text = text[len(eos_text):]
    return text


# ------------------------------------------------------------------------------ policy calls
def to_langchain(messages: list[dict[str, str]]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    cls = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [cls[m["role"]](content=m["content"]) for m in messages]


async def apolicy_messages(model: Any, messages: list[dict[str, str]], *,
                           stop: Sequence[str] = STOP_SEQUENCES) -> PolicyOutput:
    """One turn from any LangChain chat model.  Only ``stop`` is passed: generation settings of
    API models are the model object's own (``make_chat_model(spec, temperature=...)``)."""
    msg = await model.ainvoke(to_langchain(messages), stop=list(stop))
    text, hit = cut_text_at_stop(message_text(msg), stop)
    meta = dict(getattr(msg, "response_metadata", {}) or {})
    finish = "stop" if hit else str(meta.get("finish_reason") or "stop")
    if finish in ("stop", "eos"):
        text = close_dropped_stop(text)
    return PolicyOutput(text=text, finish_reason="length" if finish == "length" else "stop")


async def apolicy_ids(model: Any, ids: list[int], *, max_new_tokens: int, temperature: float, top_p: float,
                      stop: Sequence[str] = STOP_SEQUENCES) -> PolicyOutput:
    """One turn from a token model, continuing exactly ``ids``.  The generated ids are cut right
    after the first stop sequence or end-of-turn token; log-probs are cut alike."""
    tok = model.tokenizer
    gen = await model.agenerate_ids(ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, stop=list(stop))
    out_ids = list(gen.token_ids)
    lps = [float(x) for x in (gen.logprobs if gen.logprobs is not None else [0.0] * len(out_ids))]
    n, why = cut_ids_at_stop(tok, out_ids, stop)
    out_ids, lps = out_ids[:n], lps[:n]
    ended_with_eos = bool(out_ids) and out_ids[-1] in set(eos_ids(tok))
    text = tok.decode(out_ids[:-1] if ended_with_eos else out_ids, skip_special_tokens=False)
    if why == "none":
        finish = "length" if len(out_ids) >= max_new_tokens else str(getattr(gen, "finish_reason", "stop") or "stop")
    else:
        finish = why
    return PolicyOutput(text=text, token_ids=out_ids, logprobs=lps, finish_reason=finish,
                        ended_with_eos=ended_with_eos)
