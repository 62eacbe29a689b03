"""Scripted chat models and an in-memory retriever for the teacher / export tests (no tests here).

The scripted model is for control-flow tests only: it answers each role from its own script, in
order, picking the role from the system prompt, so a test states exactly which branch it drives.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

ROLE_OF = {"You are the Planner": "planner", "You are the Rewriter": "rewriter", "You are the Observer": "observer",
           "You grade answers": "judge"}


class ScriptedChatModel(BaseChatModel):
    """Replies per role from ``scripts[role]`` (a list, consumed in order; the last reply repeats).

    ``raise_for`` names roles whose call raises; every call is logged in ``calls``.
    """

    scripts: dict[str, list[str]] = Field(default_factory=dict)
    raise_for: set[str] = Field(default_factory=set)
    calls: list[tuple[str, list[BaseMessage]]] = Field(default_factory=list)
    model_name: str = "scripted"

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _role(self, messages: list[BaseMessage]) -> str:
        sys = messages[0].content if messages else ""
        for key, role in ROLE_OF.items():
            if key in sys:
                return role
        return "unknown"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        role = self._role(messages)
        self.calls.append((role, messages))
        if role in self.raise_for:
            raise ConnectionError(f"{role} endpoint unreachable")
        script = self.scripts.get(role) or [""]
        n = sum(1 for r, _ in self.calls if r == role) - 1
        text = script[min(n, len(script) - 1)]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def role_calls(self, role: str) -> int:
        return sum(1 for r, _ in self.calls if r == role)


CORPUS = [
    ("p1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."),
    ("p2", "Gustave Eiffel", "Gustave Eiffel was a French civil engineer whose company built the Eiffel Tower."),
    ("p3", "Paris", "Paris is the capital and most populous city of France."),
    ("p4", "Statue of Liberty", "The Statue of Liberty was designed by Frederic Auguste Bartholdi and built by Gustave Eiffel."),
    ("p5", "Louvre", "The Louvre is the world's most-visited museum, in Paris."),
    ("p6", "Dijon", "Gustave Eiffel was born in Dijon in 1832."),
]


def _toks(s: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", s.lower()))


class MemoryRetriever(BaseRetriever):
    """Token-overlap retriever over a few passages; queries containing ``fail_word`` raise."""

    k: int = 3
    fail_word: str | None = None
    queries: list[str] = Field(default_factory=list)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        self.queries.append(query)
        if self.fail_word is not None and self.fail_word in query:
            raise RuntimeError("index offline")
        q = _toks(query)
        scored = sorted(((len(q & _toks(t + " " + x)), pid, t, x) for pid, t, x in CORPUS), key=lambda r: (-r[0], r[1]))
        return [Document(page_content=x, metadata={"id": pid, "title": t, "score": float(s)})
                for s, pid, t, x in scored[: self.k] if s > 0]
