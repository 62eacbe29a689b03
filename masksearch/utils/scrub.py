"""One scrubber for every string the project writes or prints, and one cleaner for outside text.

* :func:`scrub` removes secrets from a string: the values of secret-looking environment variables
  (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``, ...), keys registered at run time with
  :func:`register_secret` (an ``api_key=`` passed in Python), ``Authorization``/``Bearer`` values,
  ``sk-...`` style keys, ``api_key=``/``token=`` URL parameters and the credentials of any URL
  (``https://user:pass@host`` -> ``https://***@host``), a model spec's URL included.
  :func:`scrub_obj` does the same through dicts and lists.

  It is applied where text leaves the process: the JSONL writers, ``results.json``/``summary.json``,
  error messages (every :class:`~masksearch.errors.MaskSearchError` scrubs its own text) and the
  CLI's error line.

* :func:`safe_text` makes text from outside (model replies, queries sent to the server, corpus
  records) encodable: lone UTF-16 surrogates such as ``"\\ud800"`` (valid JSON, invalid UTF-8)
  become U+FFFD, and NUL characters are dropped.  Text that is already clean is returned as is.

Pure Python, no imports beyond the standard library: any layer may call it.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"

_SECRET_ENV = re.compile(r"(API_?KEY|_KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.I)
_MIN_SECRET_LEN = 6  # shorter values ("EMPTY", "1") would scrub ordinary words
_NOT_SECRETS = {"EMPTY", "none", "None", "null", "true", "false"}
_registered: set[str] = set()

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # credentials in a URL: scheme://user:pass@host, scheme://token@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@\"'<>]+@"), r"\1" + REDACTED + "@"),
    # Authorization headers, as text or as a dict repr / JSON
    (re.compile(r"([Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn][\"']?\s*[:=]\s*[\"']?)"
                r"(?:([Bb][Ee][Aa][Rr][Ee][Rr]|[Bb][Aa][Ss][Ii][Cc]|[Tt][Oo][Kk][Ee][Nn])\s+)?[^\s\"',}]+"),
     lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + REDACTED),  # type: ignore[list-item]
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{6,}", re.I), r"\1 " + REDACTED),
    # key=... in query strings, api_key=... / access_token: ... in messages
    (re.compile(r"([?&])((?:api[_-]?key|key|token|access[_-]?token|sig)=)[^&\s\"'<>]+", re.I),
     r"\1\2" + REDACTED),
    (re.compile(r"\b((?:api[_-]?key|access[_-]?token)[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9._~+/-]{6,}", re.I),
     r"\1" + REDACTED),
    # well-known key shapes (OpenAI / DashScope sk-..., Hugging Face hf_...)
    (re.compile(r"\b(sk|hf)([-_])[A-Za-z0-9_-]{12,}"), r"\1\2" + REDACTED),
]


# substrings (of the lower-cased text) without which a pattern cannot match, in _PATTERNS' order
_TRIGGERS: list[tuple[str, ...]] = [("://",), ("authorization",), ("bearer",), ("=",),
                                    ("api_key", "api-key", "apikey", "access_token", "access-token", "accesstoken"),
                                    ("sk-", "sk_", "hf-", "hf_")]


def register_secret(value: str | None) -> None:
    """Remember a secret that is not in the environment (an ``api_key=`` given in Python)."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN and value not in _NOT_SECRETS:
        _registered.add(value)


def _secret_values() -> list[str]:
    vals = set(_registered)
    for k, v in os.environ.items():
        if v and len(v) >= _MIN_SECRET_LEN and v not in _NOT_SECRETS and _SECRET_ENV.search(k):
            vals.add(v)
    return sorted(vals, key=len, reverse=True)  # longest first: a key that contains another


def scrub(text: Any) -> Any:
    """``text`` with every secret replaced by ``***`` (non-strings are returned unchanged)."""
    if not isinstance(text, str) or not text:
        return text
    for v in _secret_values():
        if v in text:
            text = text.replace(v, REDACTED)
    low = text.lower()
    for (pat, rep), triggers in zip(_PATTERNS, _TRIGGERS):
        if any(t in low for t in triggers):  # a cheap substring test before each regex
            text = pat.sub(rep, text)
    return text


def scrub_obj(obj: Any) -> Any:
    """:func:`scrub` applied to every string in nested dicts, lists and tuples (keys included)."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_obj(k): scrub_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_obj(v) for v in obj)
    return obj


_UNSAFE = re.compile("[\ud800-\udfff\x00]")


def safe_text(text: Any) -> Any:
    """Text from outside made safe to encode and store: lone surrogates -> U+FFFD, NUL dropped."""
    if not isinstance(text, str):
        return text
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return _UNSAFE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def safe_obj(obj: Any) -> Any:
    """:func:`safe_text` through nested dicts and lists."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_obj(k): safe_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(safe_obj(v) for v in obj)
    return obj


__all__ = ["scrub", "scrub_obj", "register_secret", "safe_text", "safe_obj", "REDACTED"]
