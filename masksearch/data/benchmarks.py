"""Benchmark loaders: the shared format, FlashRAG JSONL, and the original dataset files.

``load_benchmark(name_or_path, limit)`` takes a short name from :data:`BENCHMARKS` (resolved to
``../shared/data/bench/<file>.dev.jsonl``) or a path, detects the file's format and returns
:class:`~masksearch.data.qa.QAExample` records.  Formats recognised (per record, so mixed files
work too):

* shared / FlashRAG JSONL: ``id``, ``question``, ``golden_answers`` (+ optional ``answer_match``);
* HotpotQA and 2WikiMultihopQA originals: a JSON list of ``{_id, question, answer, ...}``;
* MuSiQue original JSONL: ``{id, question, answer, answer_aliases, answerable, ...}``;
* FanoutQA original JSON: ``{id, question, answer: dict | list | str | int | bool, ...}`` – the
  answer is flattened the way FanoutQA's metric does (dict keys and values, list items,
  booleans as yes/no) and every string is required (``answer_match="all"``);
* FreshQA original CSV: ``question`` and ``answer_0`` … ``answer_9`` columns (preamble rows
  before the header are skipped).

Bad records are counted in a :class:`~masksearch.utils.jsonl.ReadStats` and skipped.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator

from masksearch.data.qa import QAExample, qa_from_record
from masksearch.errors import MaskSearchError
from masksearch.utils.jsonl import ReadStats, iter_jsonl

# short name -> stem of the shared file ``bench/<stem>.dev.jsonl``; the first six are the paper's
BENCHMARKS: dict[str, str] = {
    "hotpotqa": "hotpotqa",
    "fanoutqa": "fanoutqa",
    "musique": "musique",
    "2wiki": "2wikimultihopqa",
    "bamboogle": "bamboogle",
    "freshqa": "freshqa",
}
PAPER_BENCHMARKS: tuple[str, ...] = tuple(BENCHMARKS)
ALIASES = {"2wikimultihopqa": "2wiki", "hotpot": "hotpotqa", "musique_qaonly": "musique_qaonly"}
DISPLAY_NAMES = {"hotpotqa": "HotpotQA", "fanoutqa": "FanoutQA", "musique": "MuSiQue", "2wiki": "2Wiki",
                 "bamboogle": "Bamboogle", "freshqa": "FreshQA"}


class BenchmarkError(MaskSearchError, ValueError):
    pass


def benchmark_path(name_or_path: str | os.PathLike) -> Path:
    """A short name (``hotpotqa``, ``2wiki`` …) to its shared file, or a path checked to exist."""
    s = str(name_or_path)
    key = ALIASES.get(s.lower(), s.lower())
    if key in BENCHMARKS or key == "musique_qaonly":
        from masksearch.paths import shared_bench

        stem = BENCHMARKS.get(key, key)
        p = shared_bench(stem)
        if p is None:
            raise BenchmarkError(f"benchmark {s!r}: ../shared/data/bench/{stem}.dev.jsonl not found; "
                                 "set MASKSEARCH_SHARED_DATA or pass a file path with --data")
        return p
    p = Path(s).expanduser()
    if not p.exists():
        known = ", ".join(BENCHMARKS)
        raise BenchmarkError(f"unknown benchmark or missing file {s!r}: use one of {known} or an existing path")
    return p


def benchmark_name(name_or_path: str | os.PathLike) -> str:
    """The short name a run is filed under: ``hotpotqa`` for the name or the shared file."""
    s = str(name_or_path)
    key = ALIASES.get(s.lower(), s.lower())
    if key in BENCHMARKS:
        return key
    stem = Path(s).name.split(".")[0].lower()
    for short, file_stem in BENCHMARKS.items():
        if stem in (short, file_stem):
            return short
    return stem


# ------------------------------------------------------------------ record normalisers
def flatten_fanout_answer(ans: Any) -> list[str]:
    """FanoutQA's answer (dict/list/str/number/bool, nested) as a flat, deduplicated string list."""
    out: list[str] = []

    def walk(a: Any) -> None:
        if isinstance(a, bool):
            out.append("yes" if a else "no")
        elif isinstance(a, dict):
            for k, v in a.items():
                out.append(str(k))
                walk(v)
        elif isinstance(a, (list, tuple)):
            for v in a:
                walk(v)
        elif a is not None and str(a).strip():
            out.append(str(a).strip())

    walk(ans)
    seen: set[str] = set()
    return [s for s in out if not (s in seen or seen.add(s))]


def _meta(rec: dict[str, Any], drop: set[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in drop}


def record_to_example(rec: dict[str, Any], source: str = "") -> QAExample:
    """Normalise one record of any supported format; raises ValueError on a bad record."""
    if not isinstance(rec, dict):
        raise ValueError("record is not an object")
    if "golden_answers" in rec or "answers" in rec:  # shared format, FlashRAG, RAMP files
        ex = qa_from_record(rec, source=source)
        # FlashRAG keeps extra fields under "metadata": lift them so nothing nests twice
        if isinstance(ex.metadata.get("metadata"), dict):
            inner = ex.metadata.pop("metadata")
            ex.metadata = {**inner, **ex.metadata}
        return ex
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise ValueError("missing question")
    rid = str(rec.get("_id", rec.get("id", "")) or "")
    if "answer" not in rec:
        raise ValueError("missing answer")
    ans = rec["answer"]
    if "answer_aliases" in rec or "answerable" in rec:  # MuSiQue
        golds = flatten_fanout_answer([ans] + list(rec.get("answer_aliases") or []))
        return QAExample(rid, q.strip(), golds, "any", source or "musique",
                         _meta(rec, {"id", "question", "answer", "answer_aliases"}))
    if "decomposition" in rec or not isinstance(ans, str):  # FanoutQA
        golds = flatten_fanout_answer(ans)
        meta = _meta(rec, {"id", "question", "answer"})
        meta["answer_struct"] = ans
        return QAExample(rid, q.strip(), golds, "all", source or "fanoutqa", meta)
    # HotpotQA / 2WikiMultihopQA original (``_id``, ``answer``)
    if not ans.strip():
        raise ValueError("empty answer")
    src = source or ("2wiki" if "evidences" in rec or "type" in rec and "level" not in rec else "hotpotqa")
    return QAExample(rid, q.strip(), [ans.strip()], "any", src, _meta(rec, {"_id", "id", "question", "answer"}))


def _iter_freshqa_csv(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header_idx = next((i for i, r in enumerate(rows)
                       if "question" in [c.strip().lower() for c in r] and "answer_0" in [c.strip().lower() for c in r]),
                      None)
    if header_idx is None:
        raise BenchmarkError(f"{path}: a CSV needs 'question' and 'answer_0'..'answer_9' columns (FreshQA)")
    header = [c.strip().lower() for c in rows[header_idx]]
    for row in rows[header_idx + 1:]:
        if not any(c.strip() for c in row):
            continue
        rec = dict(zip(header, (c.strip() for c in row)))
        golds = [rec[f"answer_{i}"] for i in range(10) if rec.get(f"answer_{i}")]
        if not rec.get("question") or not golds:
            stats.skipped["missing question or answers"] += 1
            continue
        stats.read += 1
        out = {k: v for k, v in rec.items() if not k.startswith("answer_") and v != ""}
        out["golden_answers"] = golds
        if out.get("id"):
            out["id"] = f"freshqa_{out['id']}"
        yield out


def _iter_records(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".csv":
        yield from _iter_freshqa_csv(path, stats)
        return
    with open(path, encoding="utf-8") as f:
        head = f.read(64).lstrip()
    if suffix == ".json" or head.startswith("["):  # one JSON document
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError:
                data = None
        if data is not None:
            recs = data.get("data") if isinstance(data, dict) and "question" not in data else data
            if isinstance(recs, dict):
                recs = [recs]
            if not isinstance(recs, list):
                raise BenchmarkError(f"{path}: expected a JSON list of questions (or an object with a 'data' list)")
            for rec in recs:
                stats.read += 1
                yield rec
            return
    yield from iter_jsonl(path, stats=stats)


def iter_benchmark(name_or_path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[QAExample]:
    stats = stats if stats is not None else ReadStats()
    path = benchmark_path(name_or_path)
    name = benchmark_name(name_or_path)
    for i, rec in enumerate(_iter_records(path, stats)):
        try:
            ex = record_to_example(rec, source="")
        except ValueError as e:
            stats.read -= 1
            stats.skipped[str(e)] += 1
            continue
        if not ex.source:
            ex.source = name
        if not ex.id:
            ex.id = f"{name}-{i}"
        yield ex


def load_benchmark(name_or_path: str | os.PathLike, limit: int | None = None,
                   stats: ReadStats | None = None) -> list[QAExample]:
    """The first ``limit`` questions of a benchmark (short name or file of any supported format)."""
    out: list[QAExample] = []
    for ex in iter_benchmark(name_or_path, stats=stats):
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------ fixed evaluation splits
EVAL_SPLIT_SALT = "masksearch-eval-v1"


def split_key(example_id: str, salt: str = EVAL_SPLIT_SALT) -> str:
    """The hash that orders a question for the evaluation split (sha256 of ``salt:id``)."""
    import hashlib

    return hashlib.sha256(f"{salt}:{example_id}".encode("utf-8")).hexdigest()


def eval_split_ids(ids: "list[str] | Any", n: int, salt: str = EVAL_SPLIT_SALT) -> set[str]:
    """The fixed evaluation split of a question pool: the ``n`` ids with the smallest
    :func:`split_key`.  It depends only on the ids, ``n`` and ``salt`` (not on the file order), and
    a larger ``n`` contains every smaller split."""
    uniq = sorted({str(i) for i in ids}, key=lambda i: split_key(i, salt))
    if n < 0:
        raise BenchmarkError(f"eval split size must be >= 0, got {n}")
    return set(uniq[:n])


class EvalLeakError(BenchmarkError):
    """Questions of the held-out evaluation split were about to be trained on."""


def check_no_eval_ids(ids: Any, eval_ids: set[str], what: str = "training data") -> None:
    """Refuse (``EvalLeakError``) when any of ``ids`` belongs to the evaluation split."""
    leak = sorted({str(i) for i in ids} & set(eval_ids))
    if leak:
        raise EvalLeakError(f"{what} holds {len(leak)} question(s) of the held-out evaluation split "
                            f"(e.g. {leak[0]!r}); they must never be trained on")


def split_pool(pool: str | os.PathLike, n_eval: int, out_dir: str | os.PathLike, salt: str = EVAL_SPLIT_SALT,
               name: str | None = None) -> dict[str, Any]:
    """Write ``<name>.heldout.jsonl`` (the fixed evaluation split) and ``<name>.train.jsonl`` (the
    rest, the downstream training pool) of a shared-format question file; records are copied as
    they are.  Returns ``{heldout, train, n_heldout, n_train, salt, skipped}``."""
    from masksearch.utils.jsonl import write_jsonl

    path = benchmark_path(pool)
    name = name or benchmark_name(pool)
    stats = ReadStats()
    recs = [r for r in iter_jsonl(path, stats=stats) if isinstance(r, dict) and r.get("id")]
    held = eval_split_ids([r["id"] for r in recs], n_eval, salt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held_path, train_path = out / f"{name}.heldout.jsonl", out / f"{name}.train.jsonl"
    write_jsonl(held_path, [r for r in recs if str(r["id"]) in held])
    write_jsonl(train_path, [r for r in recs if str(r["id"]) not in held])
    return {"heldout": str(held_path), "train": str(train_path), "n_heldout": len(held),
            "n_train": len(recs) - sum(1 for r in recs if str(r["id"]) in held), "salt": salt,
            "source": str(path), "skipped": dict(stats.skipped)}


def discover_eval_files(eval_dir: str | os.PathLike) -> dict[str, str]:
    """Benchmark short name -> file for a folder of question files named as in
    ``../shared/data/bench`` (``hotpotqa.*.jsonl``, ``2wikimultihopqa.*.jsonl``, ``musique.*.jsonl``
    …): the benchmark is the file-name prefix before the first dot.  Files of other prefixes
    (e.g. ``musique_qaonly``) are ignored; two files for one benchmark is an error."""
    d = Path(eval_dir)
    if not d.is_dir():
        raise BenchmarkError(f"eval dir not found: {d}")
    out: dict[str, str] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in (".jsonl", ".json", ".csv"):
            continue
        stem = p.name.split(".")[0].lower()
        name = ALIASES.get(stem, stem)
        if name not in BENCHMARKS:
            continue
        if name in out:
            raise BenchmarkError(f"eval dir {d}: two files for {name}: {Path(out[name]).name} and {p.name}")
        out[name] = str(p)
    if not out:
        raise BenchmarkError(f"eval dir {d} holds no benchmark file (expected names like hotpotqa.dev.jsonl)")
    return out
