"""Printable, secret-free names for specs and objects (recorded in provenance and reports)."""

from __future__ import annotations

from typing import Any


def spec_name(obj: Any) -> str:
    """The spec string itself, else the object's ``spec``/``model_name``/``model``/``model_id``/
    ``name`` attribute, else its class name.  Never an API key: those live in other attributes."""
    from masksearch.utils.scrub import scrub  # a spec's URL may carry credentials

    if obj is None:
        return ""
    if isinstance(obj, str):
        return scrub(obj)
    for attr in ("spec", "model_name", "model", "model_id", "name"):
        v = getattr(obj, attr, None)
        if isinstance(v, str) and v:
            return scrub(v)
    return type(obj).__name__
