"""Prompted baselines and the methods the runner evaluates.

* **RAG-PE** (:class:`masksearch.agents.rag.RagPE`, re-exported here): retrieve the top-k passages for the question, answer in one model
  call with a prompt asking for a short answer in ``<answer>`` tags.  The run is saved as a
  :class:`~masksearch.trajectory.Trajectory` with one search step (the question as the query).
* **Agent-PE / any checkpoint** (:class:`AgentMethod`, i.e.
  :class:`masksearch.graphs.methods.StudentMethod`): the student graph with the given model (an
  untrained model gives Agent-PE; ``hf:PATH`` evaluates a trained checkpoint).
* **Teacher** (:class:`masksearch.graphs.methods.TeacherMethod`): the multi-agent teacher graph.

A method is an object with ``async __call__(example) -> Trajectory`` and a ``name``
(:class:`masksearch.graphs.methods.Method`); :func:`make_method` builds one from a name.
"""

from __future__ import annotations

from typing import Any

from masksearch.agents.rag import RAG_PE_SYSTEM_PROMPT, RAG_PE_USER_TEMPLATE, RagPE, asearch, extract_answer
from masksearch.errors import UnknownSpecError
from masksearch.graphs.methods import StudentMethod, TeacherMethod
from masksearch.utils.names import spec_name

METHODS = ("rag-pe", "agent", "teacher")
__all__ = ["METHODS", "RAG_PE_SYSTEM_PROMPT", "RAG_PE_USER_TEMPLATE", "AgentMethod", "RagPE", "StudentMethod",
           "TeacherMethod", "asearch", "extract_answer", "make_method", "spec_name"]

# the graph methods live with the graphs; training (cot) draws on the same ones
AgentMethod = StudentMethod


def make_method(name: str, model: Any, retriever: Any, **options: Any) -> Any:
    """``rag-pe`` | ``agent`` (alias ``agent-pe``, ``student``) | ``teacher`` -> a method object."""
    key = name.lower().replace("_", "-")
    if key in ("rag-pe", "rag", "ragpe"):
        allowed = {"k", "max_new_tokens", "info_max_tokens", "model_name", "retriever_name"}
        return RagPE(model, retriever, **{k: v for k, v in options.items() if k in allowed and v is not None})
    if key in ("agent", "agent-pe", "student"):
        return AgentMethod(model, retriever, **options)
    if key == "teacher":
        return TeacherMethod(model, retriever, **options)
    raise UnknownSpecError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
