"""Errors with one clear message naming the cause and the fix."""


class MaskSearchError(Exception):
    """Base class of errors a user can cause and fix (bad path, unknown spec, missing key...)."""


class UnknownSpecError(MaskSearchError, ValueError):
    pass


class MissingKeyError(MaskSearchError):
    pass


class EndpointError(MaskSearchError, ConnectionError):
    pass
