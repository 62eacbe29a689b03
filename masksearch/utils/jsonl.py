"""Streaming JSONL: tolerant readers, resumable writers and sharding.

Every long job (indexing, RAMP, trajectory building, evaluation) writes one JSON object per line
and flushes after each record, so a killed job loses at most the record in flight.  On restart
:class:`ResumableJsonlWriter` reads back the ids already written (repairing only a torn last line)
and the job skips them: nothing is redone, dropped or duplicated.  The job's identity is kept in
``OUT.job.json`` so that a rerun never resumes into another job's file, a user's file or an input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from masksearch.utils.scrub import safe_obj, safe_text, scrub, scrub_obj

_ESCAPED_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")


@dataclass
class ReadStats:
    """Counts of what a tolerant reader kept and skipped (by reason)."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.read} records read, none skipped"
        why = ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common())
        return f"{self.read} records read, {self.n_skipped} skipped ({why})"


def decode_line(raw: bytes, stats: ReadStats) -> dict[str, Any] | None:
    """One JSONL line as a dict, or None (a blank line, or a bad one counted in ``stats``)."""
    if not raw.strip():
        return None
    try:
        line = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark does not cost the first record
    except UnicodeDecodeError:
        stats.skipped["undecodable"] += 1
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        stats.skipped["invalid_json"] += 1
        return None
    if not isinstance(rec, dict):
        stats.skipped["not_an_object"] += 1
        return None
    if _ESCAPED_SURROGATE.search(raw):  # "\ud800" is valid JSON but not encodable text
        rec = safe_obj(rec)
    return rec


def iter_jsonl(path: str | os.PathLike, stats: ReadStats | None = None,
               required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a file, skipping (and counting) bad lines.

    Undecodable bytes, invalid JSON, non-objects and objects missing a ``required`` field are
    skipped with a reason in ``stats``; blank lines are ignored silently.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    stats = stats if stats is not None else ReadStats()
    required = tuple(required)
    with open(path, "rb") as f:
        for raw in f:
            rec = decode_line(raw, stats)
            if rec is None:
                continue
            if any(k not in rec for k in required):
                stats.skipped["missing_field"] += 1
                continue
            stats.read += 1
            yield rec


def _encode_line(rec: dict[str, Any]) -> str:
    """One record as a JSONL line: secrets scrubbed, lone surrogates replaced (never a crash)."""
    line = scrub(json.dumps(rec, ensure_ascii=False))
    return safe_text(line) + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(_encode_line(r))
            n += 1
    os.replace(tmp, path)
    return n


JOB_SUFFIX = ".job.json"
_FP_BYTES = 1 << 20


def input_fingerprint(path: Any) -> str:
    """A cheap, stable fingerprint of an input: a file's size plus the sha256 of its first and last
    MiB; a folder's sorted file names and sizes; anything else (``hf:NAME``, a spec) its scrubbed
    string."""
    p = str(path)
    h = hashlib.sha256()
    if os.path.isfile(p):
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            h.update(f.read(_FP_BYTES))
            if size > 2 * _FP_BYTES:
                f.seek(size - _FP_BYTES)
            h.update(f.read(_FP_BYTES))
        return f"file:{size}:{h.hexdigest()[:16]}"
    if os.path.isdir(p):
        for root, dirs, names in os.walk(p):
            dirs.sort()
            for n in sorted(names):
                fp = os.path.join(root, n)
                h.update(f"{os.path.relpath(fp, p)}\x1f{os.path.getsize(fp)}\n".encode("utf-8", "replace"))
        return f"dir:{h.hexdigest()[:16]}"
    return f"spec:{scrub(p)}"


def _is_inside(out: str, inp: str) -> bool:
    if not os.path.exists(inp):
        return False
    if os.path.exists(out) and os.path.samefile(out, inp):
        return True
    ro, ri = os.path.realpath(out), os.path.realpath(inp)
    return ro == ri or (os.path.isdir(ri) and ro.startswith(ri.rstrip(os.sep) + os.sep))


class ResumableJsonlWriter:
    """Append-only JSONL output that knows which ids it already holds, and whose file it is.

    >>> w = ResumableJsonlWriter("out.jsonl", job={"command": "ramp", "seed": 0},
    ...                          inputs=["corpus.jsonl"])      # doctest: +SKIP
    >>> todo = [r for r in inputs if r["id"] not in w.done]
    >>> w.write({"id": ..., ...})                               # flushed at once

    Safety rules (nothing a user points at is destroyed):

    * ``job`` (a dict: command, seed, input fingerprint...) is kept in ``OUT.job.json`` beside the
      file.  Resuming a file whose recorded identity differs in a shared key is refused with a
      :class:`~masksearch.errors.JobMismatchError` naming the difference (``resume=False`` starts
      the job over, since the file is provably an output).
    * A file without that sidecar is adopted only if every complete line is a JSON record with
      ``id_key`` (an output from before sidecars); anything else (notes, a corpus) is refused.
    * ``inputs``: the output may never be one of them, nor lie inside an input folder.
    * While open the sidecar is locked (``flock``): a second writer on the same file fails at once
      with :class:`~masksearch.errors.JobLockedError`.
    * Only a torn final line (no newline: the job was killed mid-write) is repaired.  Bad lines in
      the middle are counted (``bad_lines``) and kept; the records after them count as done.
    * Every record is scrubbed of secrets and made encodable before it is written.

    Thread-safe.
    """

    def __init__(self, path: str | os.PathLike, id_key: str = "id", resume: bool = True,
                 job: dict[str, Any] | None = None, inputs: Iterable[Any] = ()):
        from masksearch.errors import JobMismatchError

        self.path = str(path)
        self.id_key = id_key
        self.done: set[str] = set()
        self.bad_lines = 0
        self.repaired_tail = False
        self.job = scrub_obj(dict(job or {}))
        self._lock = threading.Lock()
        self._f = None
        for inp in inputs:
            if inp is not None and isinstance(inp, (str, os.PathLike)) and _is_inside(self.path, str(inp)):
                raise JobMismatchError(f"{self.path} is an input of this job ({inp}); refusing to write "
                                       f"into it: choose another output path")
        if os.path.isdir(self.path):
            raise JobMismatchError(f"{self.path} is a folder; give a file path for the output")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.job_path = self.path + JOB_SUFFIX
        created = not os.path.exists(self.job_path)
        self._job_fd = os.open(self.job_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire()
            self._open(resume)
        except BaseException:
            os.close(self._job_fd)
            if created:
                try:
                    os.remove(self.job_path)
                except OSError:
                    pass
            raise

    # -- identity and lock ----------------------------------------------------------------
    def _acquire(self) -> None:
        from masksearch.errors import JobLockedError

        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        try:
            fcntl.flock(self._job_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = (self._read_sidecar() or {}).get("pid", "?")
            raise JobLockedError(f"another masksearch run (pid {other}) is writing {self.path}; wait for "
                                 f"it to finish, or give this run another output") from None

    def _read_sidecar(self) -> dict[str, Any] | None:
        try:
            raw = os.pread(self._job_fd, 1 << 20, 0)
            rec = json.loads(raw) if raw.strip() else None
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def _write_sidecar(self) -> None:
        data = json.dumps({"masksearch_job": 1, **self.job, "pid": os.getpid()}, indent=1,
                          ensure_ascii=False).encode("utf-8")
        os.ftruncate(self._job_fd, 0)
        os.pwrite(self._job_fd, data, 0)

    def _open(self, resume: bool) -> None:
        from masksearch.errors import JobMismatchError

        has_data = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        side = self._read_sidecar()
        if has_data:
            scan = self._scan()
            if side is None and scan["foreign"] is not None:
                raise JobMismatchError(
                    f"{self.path} exists and is not a masksearch output (line {scan['foreign']} is not a "
                    f"JSON record with an {self.id_key!r}); refusing to write into it: choose another output")
            if side is not None and resume:
                diff = [k for k in self.job if k in side and side[k] != self.job[k]]
                if diff:
                    what = "; ".join(f"{k}: {side[k]!r} there, {self.job[k]!r} now" for k in diff)
                    raise JobMismatchError(
                        f"{self.path} holds the output of another job ({what}); resume it with the same "
                        f"settings, start over with --no-resume, or choose another output")
            if resume:
                self._load(scan)
            else:
                os.remove(self.path)
        self._write_sidecar()
        self._f = open(self.path, "a", encoding="utf-8")

    def _scan(self) -> dict[str, Any]:
        """One pass: ids, bad mid-file lines, the torn tail, the first line that is not a record."""
        done: set[str] = set()
        bad = 0
        foreign = None
        offset = 0
        torn: tuple[int, bytes] | None = None
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    torn = (offset, raw)
                    break
                offset += len(raw)
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    rec = None
                if isinstance(rec, dict) and self.id_key in rec:
                    done.add(str(rec[self.id_key]))
                else:
                    bad += 1
                    foreign = foreign or lineno
        return {"done": done, "bad": bad, "foreign": foreign, "torn": torn}

    def _load(self, scan: dict[str, Any]) -> None:
        self.done = set(scan["done"])
        self.bad_lines = scan["bad"]
        if scan["torn"] is not None:
            offset, raw = scan["torn"]
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            with open(self.path, "r+b") as f:
                if isinstance(rec, dict) and self.id_key in rec:  # complete record, newline lost
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                    self.done.add(str(rec[self.id_key]))
                else:
                    f.truncate(offset)
            self.repaired_tail = True

    def __contains__(self, rec_id: object) -> bool:
        return str(rec_id) in self.done

    def write(self, rec: dict[str, Any]) -> bool:
        """Write one record unless its id is already there; returns whether it was written."""
        rid = str(rec[self.id_key])
        line = _encode_line(rec)
        with self._lock:
            if rid in self.done:
                return False
            self._f.write(line)
            self._f.flush()
            self.done.add(rid)
            return True

    def close(self) -> None:
        with self._lock:
            if self._f is not None and not self._f.closed:
                self._f.close()
            if self._job_fd is not None:
                os.close(self._job_fd)  # releases the lock
                self._job_fd = None

    def __enter__(self) -> "ResumableJsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0-based i.  ``None`` -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"bad shard {spec!r}: expected 'i/n' with 0 <= i < n, e.g. '0/4'") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"bad shard {spec!r}: expected 'i/n' with 0 <= i < n, e.g. '0/4'")
    return i, n


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    i, n = shard
    return index % n == i
