"""Span extraction behind one interface, :class:`SpanExtractor` (one per strategy).

* ``rules`` – no model: the spans of :func:`~masksearch.data.ramp.spans.rule_spans`;
* ``llm`` – any LangChain chat model: a prompt asking for the finest-grained knowledge spans,
  answered as JSON; replies are parsed strictly (:func:`parse_span_reply`, never ``eval``); a reply
  that cannot be parsed is counted and the passage skipped;
* ``ppl`` – the paper's "harder masks": the ``rules`` candidates are scored by a local causal LM
  (:class:`PplScorer`), the perplexity of each span given the passage with that span masked; the
  hardest ``k`` are masked.  Scoring is batched across passages.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from typing import Any, Sequence

from masksearch.data.ramp.common import STRATEGIES, RampError
from masksearch.data.ramp.masking import (MaskConfig, apply_masks, build_record, choose_spans, draw_k, passage_rng,
                                          span_weight, usable_spans)
from masksearch.data.ramp.selection import Candidate
from masksearch.data.ramp.spans import Span, locate_spans, rule_spans
from masksearch.errors import MaskSearchError, UnknownSpecError
from masksearch.protocol import MASK_TOKEN


LLM_SYSTEM_PROMPT = "You choose the spans to blank out of an encyclopedia passage for a fill-in-the-blank quiz."
LLM_USER_PROMPT = (
    "Passage:\n{passage}\n\n"
    "List the finest-grained knowledge spans of this passage: names of people, places, organisations, "
    "works and events, dates, numbers, and short specific terms that a reader could not infer from the "
    "rest of the passage. Copy each span exactly as written in the passage, at most 6 words each. "
    "Reply with only a JSON list of strings, for example: [\"Ada Lovelace\", \"1843\", \"Analytical Engine\"]"
)


class SpanParseError(ValueError):
    """A model reply with no JSON list of spans in it."""


_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _items_to_spans(obj: Any) -> list[str] | None:
    if isinstance(obj, dict):
        for key in ("spans", "entities", "answers", "items", "knowledge_spans", "results"):
            if isinstance(obj.get(key), list):
                return _items_to_spans(obj[key])
        return None
    if not isinstance(obj, list):
        return None
    out: list[str] = []
    for it in obj:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, (int, float)) and not isinstance(it, bool):
            out.append(str(it))
        elif isinstance(it, dict):
            for key in ("span", "text", "entity", "value", "name"):
                if isinstance(it.get(key), (str, int, float)):
                    out.append(str(it[key]))
                    break
        # anything else (nested lists, null) is ignored
    return out


def parse_span_reply(reply: str) -> list[str]:
    """The spans a model listed, from a reply that should hold a JSON list of strings.

    Tolerates code fences, prose before/after the JSON, ``{"spans": [...]}`` objects, lists of
    ``{"text": ...}`` objects and a list cut off by the token limit (complete strings before the cut
    are kept).  Only ``json`` decodes anything; raises :class:`SpanParseError` when no list is found.
    """
    if not isinstance(reply, str) or not reply.strip():
        raise SpanParseError("empty reply")
    texts = [m.group(1) for m in _FENCE_RE.finditer(reply)] + [reply]
    dec = json.JSONDecoder()
    fallback: list[str] | None = None  # a list of numbers only ("[1]" in prose) is a last resort
    for t in texts:
        t = t.strip()
        for i, ch in enumerate(t):
            if ch not in "[{":
                continue
            try:
                obj, _ = dec.raw_decode(t, i)
            except json.JSONDecodeError:
                continue
            spans = _items_to_spans(obj)
            if spans is None:
                continue
            has_text = isinstance(obj, dict) or any(isinstance(x, (str, dict)) for x in obj) or not obj
            if has_text:
                return [s.strip() for s in spans if s.strip()]
            if fallback is None:
                fallback = [s.strip() for s in spans if s.strip()]
    # a list cut off by the token limit: keep the complete strings after the first '['
    i = reply.find("[")
    if i >= 0:
        strings: list[str] = []
        pos = i + 1
        while True:
            while pos < len(reply) and reply[pos] in " \n\r\t,":
                pos += 1
            m = _JSON_STRING.match(reply, pos)
            if not m:
                break
            try:
                strings.append(json.loads(m.group(0)))
            except json.JSONDecodeError:
                break
            pos = m.end()
        if strings and reply[pos:].strip()[:1] in ("", '"'):
            return [s.strip() for s in strings if s.strip()]
    if fallback is not None:
        return fallback
    raise SpanParseError("no JSON list of spans in the reply")



def _make_model(spec: str, **opts: Any) -> Any:
    """A chat model from a spec through the model layer."""
    try:
        from masksearch.models import make_chat_model
    except ImportError:  # older model layer: local specs only
        from masksearch.models.local import LocalChatModel

        return LocalChatModel.from_spec(spec, **opts)
    return make_chat_model(spec, **opts)


# ------------------------------------------------------------------------------ ppl scorer
class PplScorer:
    """Scores spans by how hard they are for a causal LM to restore: the mean negative
    log-likelihood (log-perplexity) of the span's tokens after ``masked passage + cue``.

    ``model`` is a ``LocalChatModel`` (its ``.model``/``.tokenizer`` are used), a spec string for
    :func:`masksearch.models.make_chat_model`, or a ``(model, tokenizer)`` pair.
    """

    CUE = "\nThe [mask] above is:"

    def __init__(self, model: Any = None, tokenizer: Any = None, batch_size: int = 16, max_tokens: int = 384):
        if tokenizer is None:
            if model is None or isinstance(model, str):
                model = _make_model(model or "smollm2")
            if isinstance(model, tuple):
                model, tokenizer = model
            else:
                tokenizer = getattr(model, "tokenizer", None)
                model = getattr(model, "model", model)
        if tokenizer is None:
            raise RampError("the ppl strategy needs a local model with a tokenizer (e.g. --model smollm2 or hf:PATH)")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self._lock = threading.Lock()

    def score(self, contexts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """Mean NLL (nats/token) of each target after its context; batched, longest first."""
        import torch

        tok = self.tokenizer
        enc_ctx = tok([c + self.CUE for c in contexts], add_special_tokens=False)["input_ids"]
        enc_tgt = tok([" " + t for t in targets], add_special_tokens=False)["input_ids"]
        seqs = []
        for c, t in zip(enc_ctx, enc_tgt):
            t = t[: self.max_tokens // 2] or [tok.eos_token_id]
            c = c[-(self.max_tokens - len(t)):]
            seqs.append((c, t))
        order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
        out = [0.0] * len(seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        dev = next(self.model.parameters()).device
        with self._lock, torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                L = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
                T = max(len(seqs[i][1]) for i in idx)
                # left padding: every target ends at the last position, so only the last T+1
                # positions need logits (the lm head over the vocabulary is most of the cost)
                ids = torch.full((len(idx), L), pad, dtype=torch.long)
                att = torch.zeros((len(idx), L), dtype=torch.long)
                for r, i in enumerate(idx):
                    row = seqs[i][0] + seqs[i][1]
                    ids[r, L - len(row):] = torch.tensor(row)
                    att[r, L - len(row):] = 1
                pos_ids = (att.cumsum(-1) - 1).clamp(min=0)
                kw = dict(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos_ids.to(dev))
                try:
                    logits = self.model(**kw, logits_to_keep=T + 1).logits
                except TypeError:  # a model without logits_to_keep
                    logits = self.model(**kw).logits
                logits = logits[:, -(T + 1):-1].float()  # predictions of the last T tokens
                tgt = ids[:, -T:].to(dev)
                nll = torch.logsumexp(logits, -1) - logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                for r, i in enumerate(idx):
                    t = len(seqs[i][1])
                    out[i] = float(nll[r, T - t:].mean())
        return out


# ------------------------------------------------------------------------------ strategies
class SpanExtractor:
    """One interface for every strategy: ``process(cands) -> list[record | skip reason]``."""

    name = "base"

    def __init__(self, cfg: MaskConfig, seed: int, drops: Counter):
        self.cfg, self.seed, self.drops = cfg, seed, drops

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        raise NotImplementedError

    def _finish(self, cand: Candidate, spans: Sequence[Span]) -> dict[str, Any] | str:
        ok = usable_spans(spans, cand.text, cand.title, self.cfg, self.drops)
        rng = passage_rng(self.seed, cand.passage_id, self.name)
        k = draw_k(len(ok), self.cfg, rng)
        if not k:
            return "no_usable_spans"
        return self._record(cand, choose_spans(ok, k, rng, self.cfg))

    def _record(self, cand: Candidate, chosen: Sequence[Span]) -> dict[str, Any] | str:
        rec = build_record(cand, chosen, self.name, self.seed)
        if rec["masked_passage"].lstrip().startswith(MASK_TOKEN):
            return "starts_with_mask"
        return rec


class RulesExtractor(SpanExtractor):
    name = "rules"

    def process_sync(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return [self._finish(c, rule_spans(c.text)) for c in cands]

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return self.process_sync(cands)


class LlmExtractor(SpanExtractor):
    name = "llm"

    def __init__(self, cfg: MaskConfig, seed: int, drops: Counter, model: Any, concurrency: int = 8,
                 max_new_tokens: int = 96):
        super().__init__(cfg, seed, drops)
        if model is None or isinstance(model, str):
            model = _make_model(model or "smollm2", temperature=0.0, max_new_tokens=max_new_tokens)
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.sem = asyncio.Semaphore(max(1, concurrency))
        self.replies_unparseable = 0

    def messages(self, cand: Candidate) -> list[Any]:
        from langchain_core.messages import HumanMessage, SystemMessage

        return [SystemMessage(content=LLM_SYSTEM_PROMPT), HumanMessage(content=LLM_USER_PROMPT.format(passage=cand.text))]

    async def _one(self, cand: Candidate) -> dict[str, Any] | str:
        async with self.sem:
            try:
                reply = await self.model.ainvoke(self.messages(cand))
            except MaskSearchError:
                raise
            except Exception:  # noqa: BLE001 - a failed call skips this passage, counted
                return "model_error"
        content = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
        try:
            texts = parse_span_reply(content)
        except SpanParseError:
            self.replies_unparseable += 1
            return "unparseable_reply"
        return self._finish(cand, locate_spans(texts, cand.text, self.drops))

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return list(await asyncio.gather(*(self._one(c) for c in cands)))


class PplExtractor(SpanExtractor):
    name = "ppl"

    def __init__(self, cfg: MaskConfig, seed: int, drops: Counter, model: Any, batch_size: int = 16,
                 max_candidates: int = 12):
        super().__init__(cfg, seed, drops)
        self.scorer = model if isinstance(model, PplScorer) else PplScorer(model, batch_size=batch_size)
        self.max_candidates = max_candidates

    def process_sync(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        per: list[list[Span]] = []
        ctxs, tgts = [], []
        for c in cands:
            ok = usable_spans(rule_spans(c.text), c.text, c.title, self.cfg, self.drops)
            if len(ok) > self.max_candidates:  # the most salient candidates by rule weight
                ok = sorted(sorted(ok, key=lambda sp: -span_weight(sp, self.cfg.kind_weights))[: self.max_candidates],
                            key=lambda sp: sp.start)
            per.append(ok)
            for sp in ok:
                ctxs.append(apply_masks(c.text, [sp]))
                tgts.append(sp.text)
        scores = self.scorer.score(ctxs, tgts) if ctxs else []
        out: list[dict[str, Any] | str] = []
        j = 0
        for c, ok in zip(cands, per):
            for sp in ok:
                sp.score = scores[j]
                j += 1
            rng = passage_rng(self.seed, c.passage_id, self.name)
            k = draw_k(len(ok), self.cfg, rng)
            if not k:
                out.append("no_usable_spans")
                continue
            hardest = sorted(ok, key=lambda sp: (-(sp.score or 0.0), sp.start))[:k]
            out.append(self._record(c, sorted(hardest, key=lambda sp: sp.start)))
        return out

    async def process(self, cands: Sequence[Candidate]) -> list[dict[str, Any] | str]:
        return await asyncio.to_thread(self.process_sync, cands)


def make_extractor(strategy: str, cfg: MaskConfig, seed: int, drops: Counter, model: Any = None,
                   concurrency: int = 8) -> SpanExtractor:
    if strategy == "rules":
        return RulesExtractor(cfg, seed, drops)
    if strategy == "llm":
        return LlmExtractor(cfg, seed, drops, model, concurrency=concurrency)
    if strategy == "ppl":
        return PplExtractor(cfg, seed, drops, model, batch_size=max(8, concurrency))
    raise UnknownSpecError(f"unknown RAMP strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")

