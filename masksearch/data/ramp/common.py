"""What every RAMP module shares: the strategies, the record fields and the error."""

from __future__ import annotations

from masksearch.errors import MaskSearchError

STRATEGIES = ("rules", "llm", "ppl")

RECORD_FIELDS = ("id", "passage_id", "title", "question", "masked_passage", "answers", "mask_count",
                 "strategy", "passage", "spans")


class RampError(MaskSearchError):
    """A RAMP job cannot run as asked (bad option, empty corpus...)."""
