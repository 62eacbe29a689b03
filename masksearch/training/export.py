"""Trace export: teacher runs -> the student's SFT dataset, and the ``cot`` job that makes them.

* :func:`trajectory_to_sft_row` renders a :class:`~masksearch.trajectory.Trajectory` as one row in
  TRL's conversational format (``{"messages": [...]}``) through
  :func:`masksearch.protocol.render_messages`: the student system prompt, the question, assistant
  ``<think>…</think>\\n<search>…</search>`` turns, ``user`` turns carrying ``<information>…``, and a
  final ``<think>…</think>\\n<answer>…</answer>``.  Tokenised with
  :func:`masksearch.protocol.tokenize_messages` only the assistant turns are trainable.
* :class:`AcceptFilter` decides which runs become rows (verdict, format validity, turns,
  grounding); it is configurable from a short string (``"em"``, ``"recall:0.8"``, ``"llm"``...).
* :func:`run_cot` / :func:`arun_cot` run a teacher (the LLM teacher graph or the provenance
  teacher) over a RAMP or benchmark file concurrently, resumably, writing ``trajectories.jsonl``
  (every run), ``sft.jsonl`` (accepted rows) and ``summary.json``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from masksearch.protocol import STUDENT_SYSTEM_PROMPT, parse_action, render_messages
from masksearch.trajectory import Trajectory
from masksearch.utils.scrub import scrub, scrub_obj

SearchQueries = str  # "first" (the sub-query: one query per search, as the student is told) | "all"


# ----------------------------------------------------------------------------- rows
def _render_copy(traj: Trajectory, search_queries: SearchQueries) -> Trajectory:
    t = copy.copy(traj)
    t.steps = []
    for s in traj.steps:
        s2 = copy.copy(s)
        s2.raw = ""  # the teacher's role outputs are for debugging, not for the student
        if search_queries == "first":
            s2.queries = s.queries[:1]
        t.steps.append(s2)
    t.final_raw = ""
    return t


def trajectory_to_sft_row(traj: Trajectory, *, search_queries: SearchQueries = "first",
                          system_prompt: str | None = STUDENT_SYSTEM_PROMPT) -> dict[str, Any]:
    """One SFT row ``{"messages": [...]}`` (TRL conversational format) for a teacher trajectory.

    ``search_queries="first"`` writes each step's first query (the teacher's sub-query) in
    ``<search>``, matching the student's one-query protocol; ``"all"`` writes every rewritten
    query, one per line.  The ``<information>`` turn is the exact block the teacher saw.
    """
    if traj.answer is None:
        raise ValueError(f"trajectory {traj.id} has no answer; only answered runs export")
    if search_queries not in ("first", "all"):
        raise ValueError("search_queries must be 'first' or 'all'")
    return {"messages": render_messages(_render_copy(traj, search_queries), system_prompt=system_prompt)}


def format_problems(messages: list[dict[str, str]]) -> list[str]:
    """Why a row breaks the student protocol (empty list = well formed)."""
    probs = []
    body = [m for m in messages if m["role"] != "system"]
    if not body or body[0]["role"] != "user":
        probs.append("no question")
    turns = body[1:]
    for i, m in enumerate(turns):
        last = i == len(turns) - 1
        if i % 2 == 0:
            if m["role"] != "assistant":
                probs.append(f"turn {i}: expected assistant")
                continue
            a = parse_action(m["content"])
            want = "answer" if last else "search"
            if a.kind != want:
                probs.append(f"turn {i}: expected {want}, got {a.kind} ({a.reason})")
            elif a.trailing:
                probs.append(f"turn {i}: text after the action tag")
            elif not a.think:
                probs.append(f"turn {i}: no <think>")
        else:
            if m["role"] != "user" or not m["content"].startswith("<information>"):
                probs.append(f"turn {i}: expected an <information> turn")
    if turns and turns[-1]["role"] != "assistant":
        probs.append("does not end with an answer")
    return probs


# ----------------------------------------------------------------------------- accept filter
@dataclass
class AcceptFilter:
    """Which runs become SFT rows.

    ``verdict``: ``"em"`` (string exact match), ``"recall"`` (token recall >= ``min_recall``),
    ``"llm"`` (LLM judge says correct), ``"em_or_llm"``, or ``"none"`` (any answered run).
    A ``grounded`` verdict (provenance teacher) must be ok when ``require_grounded``.
    With ``require_clean_queries`` no step's exported query (its first: the ``<search>`` the
    student learns) may be degenerate (:func:`masksearch.agents.quality.degenerate_query`:
    empty, too short, echoing the prompts, holding ``[mask]``, or a sentence of a masked passage
    copied whole); the reason is ``degenerate_query:<why>``.
    """

    verdict: str = "em"
    min_recall: float = 1.0
    require_answered: bool = True
    require_format: bool = True
    require_grounded: bool = True
    min_searches: int = 1
    max_turns: int | None = None
    require_clean_queries: bool = True

    @classmethod
    def parse(cls, spec: "str | AcceptFilter | None") -> "AcceptFilter":
        """``"em"``, ``"recall"``, ``"recall:0.8"``, ``"llm"``, ``"em_or_llm"``, ``"none"``; extra
        comma-separated options: ``max_turns=3``, ``min_searches=0``, ``format=0``, ``grounded=0``,
        ``queries=0`` (allow degenerate queries)."""
        if isinstance(spec, AcceptFilter):
            return spec
        f = cls()
        if not spec:
            return f
        parts = [p.strip() for p in str(spec).split(",") if p.strip()]
        for p in parts:
            if "=" in p:
                k, v = (x.strip() for x in p.split("=", 1))
                if k == "max_turns":
                    f.max_turns = int(v)
                elif k == "min_searches":
                    f.min_searches = int(v)
                elif k == "format":
                    f.require_format = v not in ("0", "false", "no")
                elif k == "grounded":
                    f.require_grounded = v not in ("0", "false", "no")
                elif k == "queries":
                    f.require_clean_queries = v not in ("0", "false", "no")
                else:
                    raise ValueError(f"unknown accept option {k!r} (max_turns, min_searches, format, grounded, queries)")
                continue
            name, _, arg = p.partition(":")
            if name not in ("em", "recall", "llm", "em_or_llm", "none"):
                raise ValueError(f"unknown accept verdict {name!r}: use em, recall[:X], llm, em_or_llm or none")
            f.verdict = name
            if arg:
                f.min_recall = float(arg)
        return f

    def check(self, traj: Trajectory) -> tuple[bool, str]:
        """``(accepted, reason)``; ``reason`` names the first failed condition."""
        if self.require_answered and (traj.status != "answered" or traj.answer is None):
            return False, f"status:{traj.status}"
        if traj.num_searches < self.min_searches:
            return False, "no_search"
        if self.max_turns is not None and len(traj.steps) > self.max_turns:
            return False, "too_many_turns"
        grounded = traj.verdicts.get("grounded")
        if self.require_grounded and grounded is not None and not grounded.get("ok"):
            return False, "ungrounded"
        s = traj.verdicts.get("string", {})
        llm = traj.verdicts.get("llm", {}).get("correct")
        ok = {"em": bool(s.get("em")), "recall": s.get("recall", 0.0) >= self.min_recall,
              "llm": llm is True, "em_or_llm": bool(s.get("em")) or llm is True, "none": True}[self.verdict]
        if not ok:
            return False, f"verdict:{self.verdict}"
        if self.require_clean_queries:
            from masksearch.agents.quality import degenerate_query

            for step in traj.steps:
                why = degenerate_query(step.queries[0] if step.queries else "", traj.question)
                if why:
                    return False, f"degenerate_query:{why}"
        if self.require_format and traj.answer is not None:
            if format_problems(trajectory_to_sft_row(traj)["messages"]):
                return False, "format"
        return True, "accepted"

    def __call__(self, traj: Trajectory) -> bool:
        return self.check(traj)[0]


# ----------------------------------------------------------------------------- the cot job
def parse_teacher_spec(spec: Any) -> Any:
    """``"smollm2"`` -> one model for all roles; ``"planner=openai:gpt-4o,default=smollm2"`` -> a
    role mapping; ``"provenance"`` -> the provenance teacher; objects pass through."""
    if not isinstance(spec, str):
        return spec
    spec = spec.strip()
    if "=" not in spec:
        return spec
    out: dict[str, str] = {}
    for part in spec.split(","):
        role, _, model = part.partition("=")
        role, model = role.strip(), model.strip()
        if role not in ("planner", "rewriter", "observer", "judge", "default") or not model:
            raise ValueError(f"bad teacher spec part {part!r}: use ROLE=MODEL with ROLE in planner, "
                             "rewriter, observer, judge, default")
        out[role] = model
    return out


def summarize(trajs: list[Trajectory], accepted: Mapping[str, bool], reasons: Counter) -> dict[str, Any]:
    n = len(trajs)
    status = Counter(t.status for t in trajs)
    n_acc = sum(1 for t in trajs if accepted.get(t.id))
    malformed: Counter = Counter()
    for t in trajs:
        malformed.update(t.metadata.get("malformed", {}) or {})
    teachers = Counter(t.provenance.teacher for t in trajs)
    out = {
        "trajectories": n,
        "accepted": n_acc,
        "rejected": n - n_acc,
        "acceptance_rate": round(n_acc / n, 4) if n else 0.0,
        "by_status": dict(status),
        "rejected_by_reason": dict(reasons),
        "mean_turns": round(sum(len(t.steps) for t in trajs) / n, 3) if n else 0.0,
        "mean_searches": round(sum(t.num_searches for t in trajs) / n, 3) if n else 0.0,
        "malformed_role_outputs": dict(malformed),
        # runs whose observer reply was refused after its retries and that searched again
        "runs_replanned_after_refusal": sum(1 for t in trajs if t.metadata.get("refusals")),
        "teachers": dict(teachers),
    }
    tokens = tokens_by_role(trajs)
    if tokens:
        out["tokens_by_role"] = tokens
    return out


def tokens_by_role(trajs: list[Trajectory]) -> dict[str, dict[str, float]]:
    """Mean tokens per run spent by each role (``prompt``, ``cached``: the part of the prompt the
    server took from its cache, ``completion``), from the ``usage`` of the runs' LLM calls; empty
    when no call reports usage (a provenance teacher, a backend without token counts)."""
    sums: dict[str, Counter] = {}
    for t in trajs:
        for c in t.llm_calls or []:
            u = c.get("usage")
            if not u:
                continue
            acc = sums.setdefault(c.get("role") or "?", Counter())
            acc["prompt"] += u.get("prompt_tokens", 0)
            acc["cached"] += u.get("cached_tokens", 0)
            acc["completion"] += u.get("completion_tokens", 0)
            acc["calls"] += 1
    n = len(trajs) or 1
    return {r: {k: round(v / n, 1) for k, v in sorted(acc.items())} for r, acc in sorted(sums.items())}


def summarize_trajectories(path: str | os.PathLike, accept: "str | AcceptFilter | None" = None,
                           ids: "set[str] | None" = None) -> dict[str, Any]:
    """:func:`summarize` over a trajectories file as it stands, each run re-checked with ``accept``
    (the figures of a job that was stopped or is still running); ``ids`` keeps only those runs."""
    from masksearch.trajectory import read_trajectories

    filt = AcceptFilter.parse(accept)
    trajs = [t for t in read_trajectories(str(path)) if ids is None or t.id in ids]
    accepted: dict[str, bool] = {}
    reasons: Counter = Counter()
    for t in trajs:
        ok, why = filt.check(t)
        accepted[t.id] = ok
        if not ok:
            reasons[why] += 1
    return summarize(trajs, accepted, reasons)


def build_cot_method(teacher: Any, retriever: Any, *, k: int = 5, max_docs: int = 10, max_turns: int = 5,
                     info_max_tokens: int = 512, llm_judge: bool = False, model_options: dict[str, Any] | None = None,
                     graph: Any = None, retriever_name: str | None = None) -> Any:
    """The ``cot`` job's method, ``async (example) -> Trajectory``: the provenance teacher or the
    teacher graph.  ``teacher`` and ``retriever`` are specs or objects; from specs alone this is
    what each Ray worker builds once."""
    from masksearch.graphs.methods import TeacherMethod

    teacher = parse_teacher_spec(teacher)
    if isinstance(retriever, str):
        from masksearch.retrieval import make_retriever

        retriever_name = retriever_name or retriever
        retriever = make_retriever(retriever, k=k)
    from masksearch.training.provenance import PROVENANCE_TEACHERS

    if isinstance(teacher, str) and teacher in PROVENANCE_TEACHERS:
        from masksearch.training.provenance import ProvenanceMethod

        return ProvenanceMethod(retriever, k=k, info_max_tokens=info_max_tokens, retriever_name=retriever_name,
                                teacher=teacher)
    from masksearch.graphs.teacher import TeacherContext, build_teacher_graph

    if isinstance(teacher, TeacherContext):
        context = teacher
        context.retriever = retriever
    else:
        context = TeacherContext(models=teacher, retriever=retriever, k=k, max_docs=max_docs, max_turns=max_turns,
                                 info_max_tokens=info_max_tokens, llm_judge=llm_judge,
                                 model_options=dict(model_options or {}))
    return TeacherMethod(context=context, graph=graph or build_teacher_graph(), thread_prefix=context.teacher_name(),
                         record_retriever=retriever_name)


async def arun_cot(input: str | os.PathLike, out_dir: str | os.PathLike, teacher: Any = "smollm2",
                   retriever: Any = None, *, concurrency: int = 4, limit: int | None = None,
                   resume: bool = True, checkpoint_db: str | None = None, accept: Any = None,
                   max_turns: int = 5, k: int = 5, max_docs: int = 10, info_max_tokens: int = 512,
                   llm_judge: bool = False, search_queries: SearchQueries = "first", shard: str | None = None,
                   model_options: dict[str, Any] | None = None, progress: bool = True,
                   executor: str | None = None, ray_address: str | None = None,
                   workers: int | None = None) -> dict[str, Any]:
    """Async :func:`run_cot`."""
    teacher = _check_cot_args(input, teacher, retriever, executor, checkpoint_db)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    filt = AcceptFilter.parse(accept)
    opts = dict(k=k, max_docs=max_docs, max_turns=max_turns, info_max_tokens=info_max_tokens, llm_judge=llm_judge,
                model_options=dict(model_options or {}))
    backend = await _CotBackend.open(teacher, retriever, opts, executor=executor, checkpoint_db=checkpoint_db,
                                     concurrency=concurrency, ray_address=ray_address, workers=workers)
    examples, stats = _read_cot_examples(input, shard, limit)
    traj_w, sft_w = _open_cot_writers(out, input, teacher, shard, resume)
    tally = _CotTally(filt, traj_w, sft_w, search_queries)
    try:
        if resume and traj_w.done:
            tally.recheck(out / "trajectories.jsonl")
    except BaseException:
        traj_w.close()
        sft_w.close()
        raise
    elapsed = await _run_cot_jobs(examples, backend, tally, progress)
    summary = _cot_summary(tally, backend, input=input, elapsed=elapsed, stats=stats, concurrency=concurrency,
                           executor=executor)
    if summary["failed"]:
        print(f"warning: {summary['failed']} run(s) failed and were not written (rerun to retry): "
              f"{summary['failures']}")
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def _check_cot_args(input: str | os.PathLike, teacher: Any, retriever: Any, executor: str | None,
                    checkpoint_db: str | None) -> Any:
    """The ``cot`` job's one-line errors, before anything is opened; returns the parsed teacher."""
    from masksearch.errors import MaskSearchError

    if not os.path.exists(input):
        raise MaskSearchError(f"input file not found: {input} (a RAMP JSONL from `masksearch ramp` or a "
                              "benchmark file like ../shared/data/bench/hotpotqa.dev.jsonl)")
    if retriever is None:
        raise MaskSearchError("cot needs a retriever: --retriever bm25:DIR (build one with `masksearch index`)")
    teacher = parse_teacher_spec(teacher)
    if executor not in (None, "local"):
        if not isinstance(teacher, (str, dict)) or not isinstance(retriever, str):
            raise MaskSearchError(f"--executor {executor} builds the teacher in each worker: give the teacher "
                                  "and the retriever as spec strings")
        if checkpoint_db:
            raise MaskSearchError(f"--checkpoint-db needs one writer: run without --executor {executor} "
                                  "to record LangGraph checkpoints")
    return teacher


@dataclass
class _CotBackend:
    """What runs the teacher: an executor factory (built lazily, inside the job), the names the
    summary records, and the LangGraph checkpoint saver to close afterwards (or None)."""

    make_executor: Any
    teacher_name: str
    retriever_label: str
    saver_cm: Any = None

    @classmethod
    async def open(cls, teacher: Any, retriever: Any, opts: dict[str, Any], *, executor: str | None,
                   checkpoint_db: str | None, concurrency: int, ray_address: str | None,
                   workers: int | None) -> "_CotBackend":
        from masksearch.training.provenance import PROVENANCE_TEACHERS
        from masksearch.utils.jobs import LocalExecutor, WorkerSpec, make_executor

        is_prov = isinstance(teacher, str) and teacher in PROVENANCE_TEACHERS
        if executor not in (None, "local"):  # each worker builds the method from the specs
            from masksearch.graphs.teacher import TeacherContext

            spec = WorkerSpec("masksearch.training.export:build_cot_method",
                              dict(teacher=teacher, retriever=retriever, **opts))
            return cls(lambda: make_executor(executor, spec, concurrency=concurrency, address=ray_address,
                                             workers=workers),
                       teacher if is_prov else TeacherContext(models=teacher).teacher_name(), retriever)
        retriever_name = retriever if isinstance(retriever, str) else None  # a spec is kept as its name
        if isinstance(retriever, str):
            from masksearch.retrieval import make_retriever

            retriever = make_retriever(retriever, k=opts["k"])
        graph = saver_cm = None
        if not is_prov and checkpoint_db:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            from masksearch.graphs.teacher import build_teacher_graph

            saver_cm = AsyncSqliteSaver.from_conn_string(str(checkpoint_db))
            graph = build_teacher_graph(checkpointer=await saver_cm.__aenter__())
        method = build_cot_method(teacher, retriever, graph=graph, retriever_name=retriever_name, **opts)
        return cls(lambda: LocalExecutor(method, concurrency=max(1, concurrency)), method.teacher_name(),
                   retriever_name or type(retriever).__name__, saver_cm)


def _read_cot_examples(input: str | os.PathLike, shard: str | None, limit: int | None) -> tuple[list[Any], Any]:
    """This shard's questions, at most ``limit``, and the read stats (bad lines counted, skipped)."""
    from masksearch.data.qa import iter_qa
    from masksearch.utils.jsonl import ReadStats, in_shard, parse_shard

    stats = ReadStats()
    sh = parse_shard(shard)
    examples = []
    for i, ex in enumerate(iter_qa(input, stats=stats)):
        if not in_shard(i, sh):
            continue
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    return examples, stats


def _open_cot_writers(out: Path, input: str | os.PathLike, teacher: Any, shard: str | None,
                      resume: bool) -> tuple[Any, Any]:
    """``trajectories.jsonl`` and ``sft.jsonl``, both stamped with the job's identity: a rerun
    resumes only the same teacher on the same input."""
    from masksearch.utils.jsonl import ResumableJsonlWriter, input_fingerprint

    job = {"command": "cot", "teacher": _teacher_label(teacher), "input": input_fingerprint(input),
           "shard": shard or "0/1"}
    traj_w = ResumableJsonlWriter(out / "trajectories.jsonl", resume=resume, job=job, inputs=[input])
    try:
        sft_w = ResumableJsonlWriter(out / "sft.jsonl", resume=resume, job=job, inputs=[input])
    except BaseException:
        traj_w.close()
        raise
    return traj_w, sft_w


class _CotTally:
    """The driver's record of the job (it is the only writer): verdicts, rejections, failures,
    the runs resumed and the runs new this time."""

    def __init__(self, filt: AcceptFilter, traj_w: Any, sft_w: Any, search_queries: SearchQueries) -> None:
        self.filt, self.traj_w, self.sft_w, self.search_queries = filt, traj_w, sft_w, search_queries
        self.accepted: dict[str, bool] = {}
        self.reasons: Counter = Counter()
        self.failed: Counter = Counter()
        self.previous: list[Trajectory] = []
        self.new: list[Trajectory] = []

    def _write_row(self, t: Trajectory) -> None:
        self.sft_w.write({"id": t.id, **trajectory_to_sft_row(t, search_queries=self.search_queries)})

    def recheck(self, path: Path) -> None:
        """Re-check earlier runs; write any accepted row lost in a kill."""
        from masksearch.trajectory import read_trajectories

        for t in read_trajectories(str(path)):
            ok, why = self.filt.check(t)
            self.accepted[t.id] = ok
            if not ok:
                self.reasons[why] += 1
            elif t.id not in self.sft_w.done:
                self._write_row(t)
            self.previous.append(t)

    def on_result(self, _ex: Any, t: Trajectory) -> None:
        if t.status == "error":
            # a transient failure (endpoint down, timeout) is not final: not written, so the next
            # run retries it, as eval does
            self.failed[scrub(t.reason or "run ended with status error")[:200]] += 1
            return
        ok, why = self.filt.check(t)
        self.accepted[t.id] = ok
        t.metadata["accepted"] = ok
        t.metadata["accept_reason"] = why
        self.traj_w.write(t.to_dict())
        if ok:
            self._write_row(t)
        else:
            self.reasons[why] += 1
        self.new.append(t)

    def acceptance(self) -> dict[str, str]:
        return {"acc": f"{sum(1 for x in self.accepted.values() if x) / max(1, len(self.accepted)):.0%}"}


async def _run_cot_jobs(examples: list[Any], backend: _CotBackend, tally: _CotTally, progress: bool) -> float:
    """Run every question not yet done; close the executor, the writers and the saver whatever
    happens.  Returns the seconds it took."""
    from masksearch.utils.jobs import run_jobs

    t0 = time.perf_counter()
    ex_obj = None
    try:
        ex_obj = backend.make_executor()
        rep = await run_jobs(examples, ex_obj, done=tally.traj_w.done, on_result=tally.on_result,
                             progress={"desc": f"cot [{backend.teacher_name}]", "unit": "traj"} if progress else None,
                             postfix=tally.acceptance)
        tally.failed.update(rep.failed)  # runs that raised (one bad question must not end the job)
    finally:
        elapsed = time.perf_counter() - t0
        if ex_obj is not None:
            ex_obj.close()
        tally.traj_w.close()
        tally.sft_w.close()
        if backend.saver_cm is not None:
            await backend.saver_cm.__aexit__(None, None, None)
    return elapsed


def _cot_summary(tally: _CotTally, backend: _CotBackend, *, input: str | os.PathLike, elapsed: float, stats: Any,
                 concurrency: int, executor: str | None) -> dict[str, Any]:
    """``summary.json``: :func:`summarize` over every run, then the job's own figures (scrubbed)."""
    new = tally.new
    summary = summarize(tally.previous + new, tally.accepted, tally.reasons)
    summary.update({
        "teacher": backend.teacher_name,
        "retriever": backend.retriever_label,
        "input": str(input),
        "accept": tally.filt.__dict__,
        "new_this_run": len(new),
        "resumed": len(tally.previous),
        "input_lines_skipped": stats.n_skipped,
        "input_skipped_by_reason": dict(stats.skipped),
        "seconds": round(elapsed, 3),
        "trajectories_per_minute": round(len(new) / elapsed * 60, 3) if new and elapsed > 0 else 0.0,
        "concurrency": concurrency,
        "failed": sum(tally.failed.values()),
        "failures": dict(tally.failed.most_common(5)),
        "executor": executor or "local",
    })
    return scrub_obj(summary)


def _teacher_label(teacher: Any) -> str:
    """A stable, secret-free name of the teacher for the job identity."""
    if isinstance(teacher, str):
        return scrub(teacher)
    if isinstance(teacher, dict):
        return ",".join(f"{k}={_teacher_label(v)}" for k, v in sorted(teacher.items()))
    from masksearch.utils.names import spec_name

    name = getattr(teacher, "teacher_name", None)
    if callable(name):
        try:
            return scrub(name())
        except Exception:  # noqa: BLE001
            pass
    return scrub(spec_name(teacher))


def run_cot(input: str | os.PathLike, out_dir: str | os.PathLike, teacher: Any = "smollm2",
            retriever: Any = None, **kw: Any) -> dict[str, Any]:
    """Run a teacher over a RAMP or benchmark file; returns (and writes) the summary.

    ``teacher``: a model spec (one model for every role), a ``"ROLE=SPEC,..."`` mapping, a
    ``BaseChatModel``, a :class:`~masksearch.graphs.teacher.TeacherContext`, or ``"provenance"``.
    ``retriever``: a spec (``"bm25:DIR"``) or any ``BaseRetriever``.  Keyword options: see
    :func:`arun_cot` (``concurrency``, ``limit``, ``resume``, ``checkpoint_db``, ``accept``, ...).
    """
    from masksearch.utils.aio import run_sync

    return run_sync(arun_cot(input, out_dir, teacher, retriever, **kw))
