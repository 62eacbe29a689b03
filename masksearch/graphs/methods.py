"""Methods over the graphs: ``async (example) -> Trajectory``.

A *method* is the one shape in which the project answers a question: an object with a ``name`` and
``async __call__(example) -> Trajectory``.  The job runner (:mod:`masksearch.utils.jobs`) runs any
method over a file of questions, locally or on Ray workers; training (``cot``) and evaluation
(``eval``) both draw their methods from here and from the two graph-free ones beside their layers:

* :class:`StudentMethod` - the student graph (Agent-PE with an untrained model, any checkpoint);
* :class:`TeacherMethod` - the multi-agent teacher graph;
* ``RagPE`` (:mod:`masksearch.agents.rag`) - one search, one model call;
* ``ProvenanceMethod`` (:mod:`masksearch.training.provenance`) - the LLM-free teacher.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Awaitable, Callable, Protocol

from masksearch.trajectory import Trajectory
from masksearch.utils.names import spec_name


class Method(Protocol):
    """``async (example) -> Trajectory`` with a ``name``."""

    name: str

    def __call__(self, example: Any) -> Awaitable[Trajectory]: ...


MethodFn = Callable[[Any], Awaitable[Trajectory]]


def accepted_options(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options a context class (dataclass or plain) accepts; the rest are dropped."""
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
    else:
        names = set(inspect.signature(cls).parameters)
    return {k: v for k, v in options.items() if k in names and v is not None}


class StudentMethod:
    """The student graph: Agent-PE with an untrained model, or a trained checkpoint."""

    name = "agent"

    def __init__(self, model: Any, retriever: Any, k: int = 3, max_turns: int = 4, model_name: str | None = None,
                 retriever_name: str | None = None, **options: Any):
        from masksearch.graphs.student import StudentContext

        opts = {"model": model, "retriever": retriever, "k": k, "max_turns": max_turns, **options}
        self.context = StudentContext(**accepted_options(StudentContext, opts))
        self.model_name = model_name or spec_name(model)
        self.retriever_name = retriever_name or spec_name(retriever)

    async def __call__(self, example: Any) -> Trajectory:
        from masksearch.graphs.student import arun_student

        traj = await arun_student(example, self.context)
        traj.metadata.setdefault("answer_match", example.answer_match)
        if not traj.provenance.models:
            traj.provenance.models = {"policy": self.model_name}
        if not traj.provenance.retriever:
            traj.provenance.retriever = self.retriever_name
        return traj


class TeacherMethod:
    """The multi-agent teacher graph as a method.

    Give ``context`` (a ``TeacherContext``) or the ``model``/``retriever`` and context options.
    ``graph``: a compiled teacher graph (e.g. with a checkpointer; runs are then threads
    ``"<thread_prefix>:<id>"``).  ``record_retriever``: a name written into every trajectory's
    provenance (``cot`` records the retriever spec)."""

    name = "teacher"

    def __init__(self, model: Any = None, retriever: Any = None, k: int = 3, max_turns: int = 4,
                 model_name: str | None = None, retriever_name: str | None = None, *, context: Any = None,
                 graph: Any = None, thread_prefix: str | None = None, record_retriever: str | None = None,
                 **options: Any):
        from masksearch.graphs import teacher as tg

        if context is None:
            opts = {"models": model, "retriever": retriever, "k": k, "max_turns": max_turns, **options}
            context = tg.TeacherContext(**accepted_options(tg.TeacherContext, opts))
        elif retriever is not None:
            context.retriever = retriever
        self.context, self.graph, self.thread_prefix = context, graph, thread_prefix
        self.model_name = model_name or spec_name(model)
        self.retriever_name = retriever_name or spec_name(retriever)
        self.record_retriever = record_retriever

    def teacher_name(self) -> str:
        return self.context.teacher_name()

    async def __call__(self, example: Any) -> Trajectory:
        from masksearch.graphs.teacher import arun_teacher

        ex_id = getattr(example, "id", None)
        thread = f"{self.thread_prefix}:{ex_id}" if self.thread_prefix else None
        traj = await arun_teacher(example, self.context, graph=self.graph, thread_id=thread)
        if self.record_retriever:
            traj.provenance.retriever = self.record_retriever
        answer_match = getattr(example, "answer_match", None)
        if answer_match is not None:
            traj.metadata.setdefault("answer_match", answer_match)
        return traj


__all__ = ["Method", "MethodFn", "StudentMethod", "TeacherMethod", "accepted_options"]
