"""The runner end to end: scripted chat model + in-memory retriever (fast), then the embedded model
with BM25 over the shared corpus (slow). Resume, failures, concurrency, HTML view and CLI included."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever

from masksearch.eval.runner import run_eval
from masksearch.eval.view import trajectory_html, write_view

PASSAGES = {
    "Paris": "Paris is the capital and largest city of France.",
    "Berlin": "Berlin is the capital of Germany.",
    "Madrid": "Madrid is the capital of Spain.",
    "Rome": "Rome is the capital of Italy.",
}
COUNTRIES = {"France": "Paris", "Germany": "Berlin", "Spain": "Madrid", "Italy": "Rome"}


class DictRetriever(BaseRetriever):
    """Returns the passages that mention a capitalised query word (title order)."""

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return self.search_many([query], 3)[0]

    def search_many(self, queries: list[str], k: int) -> list[list[LCDocument]]:
        out = []
        for q in queries:
            words = set(re.findall(r"\b[A-Z]\w+", q)) - {"What"}
            hits = [LCDocument(page_content=t, metadata={"id": f"p-{title}", "title": title, "score": 1.0})
                    for title, t in PASSAGES.items() if words & set(re.findall(r"\w+", t))]
            out.append(hits[:k])
        return out


class ScriptedModel(BaseChatModel):
    """Answers from the documents in its prompt; searches first when used as an agent.

    Counts calls and the most calls in flight at once; ``fail_on`` makes questions containing the
    string raise.
    """

    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    fail_on: str | None = None

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _reply(self, messages: list[BaseMessage]) -> str:
        text = "\n".join(str(m.content) for m in messages if m.type != "system")
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("scripted failure")
        m = re.search(r"What is the capital of (\w+)\?", text)
        country = m.group(1) if m else None
        has_docs = "Doc 1" in text or "<information>" in text
        if not has_docs:  # the agent's first turn: search
            return f"<think>I should look it up.</think>\n<search>capital {country}</search>"
        if country in COUNTRIES and PASSAGES[COUNTRIES[country]] in text.replace("\n", " "):
            return f"<think>Found it.</think>\n<answer>{COUNTRIES[country]}</answer>"
        return "<think>Not found.</think>\n<answer>unknown</answer>"

    def _generate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        self.calls += 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=self._reply(messages)))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            content = self._reply(messages)
        finally:
            self.in_flight -= 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=content))])


@pytest.fixture
def questions(tmp_path):
    p = tmp_path / "capitals.jsonl"
    rows = [{"id": f"c{i}", "question": f"What is the capital of {c}?", "golden_answers": [a, f"{a} city"]}
            for i, (c, a) in enumerate(COUNTRIES.items())]
    rows.append({"id": "c4", "question": "What is the capital of Atlantis?", "golden_answers": ["Poseidonis"]})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _preds(path):
    return [json.loads(line) for line in open(path)]


def test_rag_pe_end_to_end_scores_and_saves_trajectories(questions, tmp_path):
    model = ScriptedModel()
    res = run_eval("rag-pe", model=model, retriever=DictRetriever(), data=[str(questions)], concurrency=5,
                   out_dir=tmp_path / "run", progress=False, label="RAG-PE (scripted)")
    b = res["benchmarks"]["capitals"]
    assert b["n"] == 5 and b["failed"] == 0
    assert b["metrics"]["em"] == pytest.approx(4 / 5)
    assert b["metrics"]["token_recall"] == pytest.approx(4 / 5)
    assert res["avg"]["token_recall"] == pytest.approx(4 / 5)
    assert model.calls == 5 and model.max_in_flight > 1  # questions really ran concurrently

    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["label"] == "RAG-PE (scripted)" and on_disk["method"] == "rag-pe"
    preds = {r["id"]: r for r in _preds(tmp_path / "run" / "capitals" / "predictions.jsonl")}
    assert preds["c0"]["prediction"] == "Paris" and preds["c0"]["metrics"]["em"] == 1.0
    # no documents -> the scripted model searches instead of answering: no answer, status malformed
    assert preds["c4"]["prediction"] is None and preds["c4"]["status"] == "malformed"
    assert preds["c4"]["metrics"]["token_recall"] == 0.0
    traj = preds["c0"]["trajectory"]
    assert traj["provenance"]["graph"] == "rag-pe"
    assert len(traj["steps"]) == 1 and traj["steps"][0]["queries"] == ["What is the capital of France?"]
    assert [d["title"] for d in traj["steps"][0]["documents"]][0] in PASSAGES
    assert "<information>" in traj["steps"][0]["information"]


def test_resume_skips_finished_and_repairs_torn_tail(questions, tmp_path):
    out = tmp_path / "run"
    run_eval("rag-pe", model=ScriptedModel(), retriever=DictRetriever(), data=[str(questions)], out_dir=out,
             progress=False)
    pred = out / "capitals" / "predictions.jsonl"
    lines = pred.read_text().splitlines(keepends=True)
    pred.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # crash mid-write of the 4th record
    model = ScriptedModel()
    res = run_eval("rag-pe", model=model, retriever=DictRetriever(), data=[str(questions)], out_dir=out,
                   progress=False)
    assert model.calls == 2  # only the torn and the missing question ran again
    assert res["benchmarks"]["capitals"]["n"] == 5 and res["benchmarks"]["capitals"]["ran"] == 2
    ids = [r["id"] for r in _preds(pred)]
    assert sorted(ids) == ["c0", "c1", "c2", "c3", "c4"] and len(ids) == len(set(ids))
    assert res["benchmarks"]["capitals"]["metrics"]["em"] == pytest.approx(4 / 5)


def test_failed_question_is_counted_not_written_and_retried(questions, tmp_path):
    out = tmp_path / "run"
    res = run_eval("rag-pe", model=ScriptedModel(fail_on="Germany"), retriever=DictRetriever(),
                   data=[str(questions)], out_dir=out, progress=False)
    b = res["benchmarks"]["capitals"]
    assert b["failed"] == 1 and b["n"] == 4 and "scripted failure" in next(iter(b["failures"]))
    model = ScriptedModel()
    res = run_eval("rag-pe", model=model, retriever=DictRetriever(), data=[str(questions)], out_dir=out,
                   progress=False)
    assert model.calls == 1 and res["benchmarks"]["capitals"]["n"] == 5


def test_agent_method_runs_the_student_graph(questions, tmp_path):
    model = ScriptedModel()
    res = run_eval("agent", model=model, retriever=DictRetriever(), data=[str(questions)], limit=3,
                   concurrency=3, out_dir=tmp_path / "agent", progress=False)
    b = res["benchmarks"]["capitals"]
    assert b["n"] == 3 and b["metrics"]["em"] == 1.0 and b["avg_searches"] == pytest.approx(1.0)
    rec = _preds(tmp_path / "agent" / "capitals" / "predictions.jsonl")[0]
    steps = rec["trajectory"]["steps"]
    assert steps and steps[0]["queries"][0].startswith("capital ")
    assert rec["trajectory"]["provenance"]["graph"] == "student"


def test_view_html_shows_queries_documents_and_escapes(questions, tmp_path):
    run_eval("rag-pe", model=ScriptedModel(), retriever=DictRetriever(), data=[str(questions)], out_dir=tmp_path / "r",
             progress=False)
    pred = tmp_path / "r" / "capitals" / "predictions.jsonl"
    n = write_view(pred, tmp_path / "view.html", ids=["c0", "c4"])
    page = (tmp_path / "view.html").read_text()
    assert n == 2 and page.startswith("<!doctype html>")
    assert "What is the capital of France?" in page and "Paris is the capital and largest city" in page
    assert "What is the capital of Germany?" not in page
    rec = _preds(pred)[0]
    rec["prediction"] = "<script>alert(1)</script>"
    assert "<script>" not in trajectory_html(rec) and "&lt;script&gt;" in trajectory_html(rec)


def test_cli_eval_and_report(questions, tmp_path, monkeypatch, capsys):
    from masksearch.cli import main
    import masksearch.eval.runner as runner

    monkeypatch.setattr(runner, "_resolve_model", lambda m: ScriptedModel())
    monkeypatch.setattr(runner, "_resolve_retriever", lambda r: DictRetriever())
    rc = main(["eval", "--method", "rag-pe", "--model", "scripted", "--retriever", "dict:", "--data", str(questions),
               "--out", str(tmp_path / "cli"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "capitals" in out and "token_recall= 80.0" in out
    assert (tmp_path / "cli" / "capitals" / "view.html").exists()
    rc = main(["report", str(tmp_path / "cli"), "--out", str(tmp_path / "rep"), "--views"])
    assert rc == 0
    assert "80.0" in (tmp_path / "rep" / "table.md").read_text()
    assert list((tmp_path / "rep" / "views").glob("*.html"))
    # user errors are one line, exit code 2
    assert main(["eval", "--method", "rag-pe", "--out", str(tmp_path / "x"), "--retriever", "dict:"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", "--method", "nope", "--retriever", "dict:", "--data", str(questions),
                 "--out", str(tmp_path / "y"), "--no-progress"]) == 2


@pytest.mark.slow
def test_runner_with_embedded_model_and_bm25(embedded_model, bm25_dir, tmp_path):
    """The real stack: smollm2 (batched) + BM25 over the shared corpus, both methods, resume."""
    from masksearch.retrieval import make_retriever

    retriever = make_retriever(f"bm25:{bm25_dir}")
    for method in ("rag-pe", "agent"):
        out = tmp_path / method
        res = run_eval(method, model=embedded_model, retriever=retriever, benchmarks=["hotpotqa"], limit=2,
                       concurrency=2, out_dir=out, progress=False, max_new_tokens=48, max_turns=2)
        b = res["benchmarks"]["hotpotqa"]
        assert b["n"] == 2 and b["failed"] == 0, b
        recs = _preds(out / "hotpotqa" / "predictions.jsonl")
        for r in recs:
            assert set(r["metrics"]) >= {"em", "f1", "token_recall", "cover_em"}
            assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())
        if method == "rag-pe":
            docs = recs[0]["trajectory"]["steps"][0]["documents"]
            assert len(docs) == 3 and all(d["id"].startswith("wiki-") for d in docs)
        # resume: nothing left to run, nothing duplicated
        res2 = run_eval(method, model=embedded_model, retriever=retriever, benchmarks=["hotpotqa"], limit=2,
                        concurrency=2, out_dir=out, progress=False, max_new_tokens=48, max_turns=2)
        assert res2["benchmarks"]["hotpotqa"]["ran"] == 0 and len(_preds(out / "hotpotqa" / "predictions.jsonl")) == 2
