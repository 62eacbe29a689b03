"""RAMP data generation: Retrieval-Augmented Mask Prediction examples from Wikipedia passages.

One concept per module; every name is importable from ``masksearch.data.ramp`` as before.

1. **Selection** (:mod:`.selection`) – stream any corpus the retrieval layer reads, drop
   list-like, table-like, too short or too long passages (:func:`passage_filter_reason`), order the
   rest by a seeded hash of the passage id (bottom-k sampling), optionally keep only shard ``i`` of
   ``n`` (:func:`select_passages`).
2. **Spans** (:mod:`.spans`) – :class:`Span`; rule candidates (:func:`rule_spans`), strings a
   model listed placed in the passage (:func:`locate_spans`), kinds (:func:`classify_span`).
3. **Masking** (:mod:`.masking`) – which spans may be masked (:func:`usable_spans`), how many and
   which (:func:`draw_k`, :func:`choose_spans`), the masked text and the record
   (:func:`apply_masks`, :func:`mask_passage`).
4. **Extractors and strategies** (:mod:`.extractors`) – one interface, :class:`SpanExtractor`:
   ``rules`` (no model), ``llm`` (any LangChain chat model, replies parsed strictly by
   :func:`parse_span_reply`), ``ppl`` (the hardest rule spans by a local LM's perplexity,
   :class:`PplScorer`).
5. **Generation** (:mod:`.generation`) – :func:`generate_ramp`, the job on the runner of
   :mod:`masksearch.utils.jobs` with its :class:`RampWorker` (local or Ray), writing one JSONL
   record per example (:data:`RECORD_FIELDS`) resumably; :func:`format_summary`.
6. **Readers** (:mod:`.readers`) – :func:`load_ramp` (a ``datasets.Dataset``), :func:`curriculum`
   (order / buckets by mask count), :func:`solvability_report` (is the source passage in the top-k
   of a search for the masked passage?).  Every record also loads through
   :func:`masksearch.data.qa.qa_from_record`.

Shared by all of them (:mod:`.common`): :data:`STRATEGIES`, :data:`RECORD_FIELDS`, :class:`RampError`.
"""

from __future__ import annotations

from masksearch.data.ramp.common import RECORD_FIELDS, STRATEGIES, RampError
from masksearch.data.ramp.extractors import (LLM_SYSTEM_PROMPT, LLM_USER_PROMPT, LlmExtractor, PplExtractor,
                                             PplScorer, RulesExtractor, SpanExtractor, SpanParseError, _make_model,
                                             make_extractor, parse_span_reply)
from masksearch.data.ramp.generation import RampWorker, format_summary, generate_ramp
from masksearch.data.ramp.masking import (FILL_INSTRUCTION_MANY, FILL_INSTRUCTION_ONE, KIND_WEIGHTS, MaskConfig,
                                          apply_masks, build_record, choose_spans, draw_k, example_id, make_question,
                                          mask_passage, passage_rng, span_weight, usable_spans)
from masksearch.data.ramp.readers import curriculum, load_ramp, solvability_report
from masksearch.data.ramp.selection import Candidate, PassageFilter, passage_filter_reason, select_passages
from masksearch.data.ramp.spans import Span, classify_span, locate_spans, rule_spans
from masksearch.errors import UnknownSpecError

__all__ = [
    "STRATEGIES", "RECORD_FIELDS", "PassageFilter", "passage_filter_reason", "select_passages", "Candidate",
    "Span", "rule_spans", "classify_span", "MaskConfig", "usable_spans", "span_weight", "draw_k", "choose_spans",
    "apply_masks", "make_question", "mask_passage", "example_id", "parse_span_reply", "SpanParseError",
    "locate_spans", "PplScorer", "SpanExtractor", "make_extractor", "generate_ramp", "format_summary",
    "load_ramp", "curriculum", "solvability_report", "RampError", "LLM_USER_PROMPT", "LLM_SYSTEM_PROMPT",
    # also importable, as before: the strategies' classes, the worker and the masking constants
    "RulesExtractor", "LlmExtractor", "PplExtractor", "RampWorker", "build_record", "passage_rng",
    "KIND_WEIGHTS", "FILL_INSTRUCTION_ONE", "FILL_INSTRUCTION_MANY",
    # imported from here by benchmarks/bench_ramp.py and the tests
    "_make_model", "UnknownSpecError",
]
