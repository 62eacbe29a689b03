"""The one record that flows through MaskSearch: :class:`Trajectory`.

Teacher runs produce it, export turns it into SFT rows, student runs and GRPO rollouts produce it,
evaluation scores it.  It is a plain dataclass tree with a lossless JSON round trip, so a
``trajectories.jsonl`` file written by one stage is read back by any other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal

Status = Literal["answered", "turn_cap", "malformed", "error", "running", "length"]


@dataclass
class Document:
    """A retrieved passage as the agent saw it."""

    id: str
    title: str = ""
    text: str = ""
    score: float | None = None

    @classmethod
    def from_langchain(cls, doc: Any) -> "Document":
        """Build from a LangChain ``Document`` (metadata carries ``id``/``title``/``score``)."""
        meta = dict(getattr(doc, "metadata", {}) or {})
        doc_id = meta.get("id") or getattr(doc, "id", None) or ""
        return cls(id=str(doc_id), title=str(meta.get("title", "")), text=doc.page_content,
                   score=meta.get("score"))


@dataclass
class Step:
    """One think/search turn: the thought, the queries issued and the documents returned.

    ``raw`` is the exact model output of the turn (for the student) or the role outputs (for the
    teacher); ``error`` records a failed search or a malformed output, shown to the agent as an
    observation instead of crashing the run.
    """

    thought: str = ""
    queries: list[str] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    raw: str = ""
    error: str | None = None
    # the exact <information> text appended to the conversation (so rendering is lossless)
    information: str | None = None


@dataclass
class Provenance:
    """Who made a trajectory: the graph, the models per role, the teacher's name, the source."""

    graph: str = ""  # "teacher", "student", "provenance", "rag-pe", ...
    teacher: str = ""  # named teacher or student that produced the run
    models: dict[str, str] = field(default_factory=dict)  # role -> model spec
    retriever: str = ""
    example_id: str = ""  # RAMP example id or benchmark question id
    source: str = ""  # "ramp", "hotpotqa", ...
    round: int | None = None  # self-evolving distillation round


@dataclass
class Trajectory:
    id: str
    question: str
    golden_answers: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    final_thought: str = ""
    final_raw: str = ""  # exact model output of the answering turn
    status: Status = "running"
    reason: str = ""  # why the run ended, when not a clean answer
    verdicts: dict[str, Any] = field(default_factory=dict)  # judge verdicts: {"string": {...}, "llm": {...}}
    rewards: dict[str, float] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    metadata: dict[str, Any] = field(default_factory=dict)  # mask_count, answer_match, ...
    llm_calls: list[dict[str, Any]] = field(default_factory=list)  # raw node-level calls (debugging)
    # Exact token ids the policy saw and produced (local models only): one list for the whole
    # conversation after the prompt, and a parallel mask (1 = model token, 0 = environment).
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    completion_mask: list[int] | None = None
    completion_logprobs: list[float] | None = None

    # ------------------------------------------------------------------ convenience
    @property
    def num_searches(self) -> int:
        return sum(1 for s in self.steps if s.queries)

    @property
    def num_queries(self) -> int:
        return sum(len(s.queries) for s in self.steps)

    @property
    def documents(self) -> list[Document]:
        return [d for s in self.steps for d in s.documents]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        steps = [
            Step(**{**s, "documents": [Document(**doc) for doc in s.get("documents", [])]})
            for s in d.pop("steps", [])
        ]
        prov = Provenance(**d.pop("provenance", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        traj = cls(steps=steps, provenance=prov, **d)
        if extra:
            traj.metadata.setdefault("extra", {}).update(extra)
        return traj

    @classmethod
    def from_json(cls, line: str) -> "Trajectory":
        return cls.from_dict(json.loads(line))


def write_trajectories(path: str, trajectories: Iterable[Trajectory], append: bool = True) -> int:
    """Append trajectories to a JSONL file; returns how many were written."""
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(t.to_json() + "\n")
            n += 1
    return n


def read_trajectories(path: str) -> Iterator[Trajectory]:
    """Read trajectories from JSONL, skipping (and counting on the iterator) bad lines."""
    from masksearch.utils.jsonl import iter_jsonl

    for rec in iter_jsonl(path):
        try:
            yield Trajectory.from_dict(rec)
        except TypeError:
            continue
