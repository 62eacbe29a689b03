"""Errors with one clear message naming the cause and the fix.

Every :class:`MaskSearchError` scrubs its own message (:func:`masksearch.utils.scrub.scrub`), so
an API key echoed by an endpoint never reaches a file, a checkpoint or the console through one.
"""

from masksearch.utils.scrub import scrub


class MaskSearchError(Exception):
    """Base class of errors a user can cause and fix (bad path, unknown spec, missing key...)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class UnknownSpecError(MaskSearchError, ValueError):
    pass


class MissingKeyError(MaskSearchError):
    pass


class EndpointError(MaskSearchError, ConnectionError):
    """A remote endpoint (model or search) failed: refused, timed out, or answered an error."""


class EndpointTimeoutError(EndpointError, TimeoutError):
    """The endpoint accepted the request but did not answer within the timeout."""


class JobMismatchError(MaskSearchError):
    """An output file belongs to another job (another command, seed or input), or is not an output."""


class JobLockedError(MaskSearchError):
    """Another live process is writing the same output."""
