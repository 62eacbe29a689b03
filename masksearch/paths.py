"""Where things live: the cache (``MASKSEARCH_HOME``) and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The cache root: ``$MASKSEARCH_HOME`` or ``~/.cache/masksearch``."""
    p = Path(os.environ.get("MASKSEARCH_HOME") or Path.home() / ".cache" / "masksearch")
    p.mkdir(parents=True, exist_ok=True)
    return p


def shared_data() -> Path | None:
    """``../shared/data`` beside the project checkout (or ``$MASKSEARCH_SHARED_DATA``), if present."""
    env = os.environ.get("MASKSEARCH_SHARED_DATA")
    if env:
        return Path(env) if Path(env).exists() else None
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.exists():
            return cand
    return None


def shared_corpus() -> Path | None:
    d = shared_data()
    p = d / "corpus" / "wiki_passages.jsonl" if d else None
    return p if p and p.exists() else None


def shared_bench(name: str) -> Path | None:
    d = shared_data()
    p = d / "bench" / f"{name}.dev.jsonl" if d else None
    return p if p and p.exists() else None
