"""The graphs under LangGraph Studio and the LangGraph server.

Fast tests (scripted models, a tiny retriever): the input/output/context schemas build and need
only a question; spec strings resolve once per process, off the event loop; the student pauses
before ``search``, takes edited queries and resumes, and forks from an earlier checkpoint (what
Studio's interrupt and time-travel buttons do).

The slow test starts a real ``langgraph dev`` on a free 127.0.0.1 port in a temporary folder and
drives it with the LangGraph SDK: the three assistants, the student and the teacher on the embedded
model with their default contexts (small budgets), streamed events, a thread's state read back, a
fork edited to search through the shared BM25 index, its queries edited again before ``search``
and the run resumed, the student's graph as Studio draws it, and the teacher's input schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.memory import InMemorySaver

from masksearch.graphs import resources
from masksearch.utils.net import free_port
from masksearch.graphs.rag import RagContext, build_rag_graph
from masksearch.graphs.student import StudentContext, build_student_graph
from masksearch.graphs.teacher import TeacherContext, build_teacher_graph

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_student_graph import TinyRetriever  # noqa: E402

BUILDS: list[str] = []  # thread names of the factory calls below


def tiny_retriever_factory(k: int = 3) -> TinyRetriever:
    """A ``module:attr`` retriever spec for the tests: ``test_studio:tiny_retriever_factory``."""
    BUILDS.append(threading.current_thread().name)
    return TinyRetriever()


SPEC = "test_studio:tiny_retriever_factory"


class BatchedRetriever(TinyRetriever):
    """Takes ``k`` per call, as every masksearch retriever does (``search_many``)."""

    def search_many(self, queries, k):
        return [self.invoke(q)[:k] for q in queries]


def batched_retriever_factory(k: int = 3) -> BatchedRetriever:
    BUILDS.append(threading.current_thread().name)
    return BatchedRetriever()


class Replies(BaseChatModel):
    """Replies in order (the last one repeats)."""

    replies: list[str]
    n: int = 0

    @property
    def _llm_type(self) -> str:
        return "replies"

    def _generate(self, messages, stop=None, run_manager=None, **kw) -> ChatResult:
        text = self.replies[min(self.n, len(self.replies) - 1)]
        self.n += 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


SEARCH = "<think>I should look it up.</think>\n<search>capital of France</search>"
ANSWER = "<think>The documents say so.</think>\n<answer>Paris</answer>"


# ------------------------------------------------------------------------------ schemas
@pytest.mark.parametrize("build", [build_student_graph, build_teacher_graph, build_rag_graph])
def test_schemas_build_and_a_question_is_enough(build):
    g = build()
    inp = g.get_input_jsonschema()
    assert inp["required"] == ["question"]  # typing_extensions.TypedDict: builds on 3.10-3.12 too
    assert inp["properties"]["golden_answers"]["type"] == "array"
    out = g.get_output_jsonschema()
    assert {"answer", "status"} <= set(out["properties"])
    ctx = g.get_context_jsonschema()["properties"]
    model_key = "models" if "models" in ctx else "model"
    assert ctx[model_key]["default"] == resources.DEFAULT_MODEL
    assert ctx["retriever"]["default"] == resources.SHARED_BM25
    json.dumps(g.get_context_jsonschema())  # JSON all the way: what Studio renders as a form


def test_contexts_default_to_json_values():
    for cls in (StudentContext, TeacherContext, RagContext):
        c = cls()
        json.dumps({k: v for k, v in vars(c).items()})  # every default is JSON
        assert c.retriever == resources.SHARED_BM25


# ------------------------------------------------------------------------------ resolving specs
async def test_specs_resolve_once_per_process_off_the_event_loop():
    resources.clear_cache()
    BUILDS.clear()
    loop_thread = threading.current_thread().name
    a, b = await asyncio.gather(resources.aresolve_retriever(SPEC, 3), resources.aresolve_retriever(SPEC, 3))
    assert a is b and isinstance(a, TinyRetriever)
    assert len(BUILDS) == 1 and BUILDS[0] != loop_thread  # built once, in a worker thread
    assert await resources.aresolve_retriever(SPEC, 3) is a and len(BUILDS) == 1
    obj = TinyRetriever()
    assert await resources.aresolve_retriever(obj) is obj  # objects pass through untouched
    model = Replies(replies=["x"])
    assert resources.resolve_model(model, {"max_new_tokens": 3}) is model


def test_one_index_serves_every_k_and_one_model_every_generation_setting():
    resources.clear_cache()
    BUILDS.clear()
    batched = "test_studio:batched_retriever_factory"
    assert resources.resolve_retriever(batched, 3) is resources.resolve_retriever(batched, 5)
    assert len(BUILDS) == 1  # k travels with every search_many call: one object for all
    assert resources.resolve_retriever(SPEC, 3) is not resources.resolve_retriever(SPEC, 5)
    assert resources.resolve_retriever(SPEC, 3) is resources.resolve_retriever(SPEC, 3)
    assert len(BUILDS) == 3  # a plain retriever keeps its constructor's k: one per k


@pytest.mark.slow
def test_a_local_model_is_loaded_once_whatever_its_generation_options():
    short = resources.resolve_model("smollm2", {"max_new_tokens": 8})
    plain = resources.resolve_model("smollm2")
    assert short is not plain and short.model is plain.model and short.tokenizer is plain.tokenizer
    assert short.max_new_tokens == 8 and plain.max_new_tokens != 8
    assert resources.resolve_model("smollm2", {"max_new_tokens": 8}) is short
    reply = short.invoke("Say hello.")
    assert 0 < reply.usage_metadata["output_tokens"] <= 8


def test_unknown_spec_is_one_clear_error_and_a_run_records_it():
    from masksearch.data.qa import QAExample
    from masksearch.errors import UnknownSpecError
    from masksearch.graphs.student import run_student

    with pytest.raises(UnknownSpecError, match="unknown retriever spec"):
        resources.resolve_retriever("nonsense-retriever")
    ex = QAExample(id="q", question="What is the capital of France?", golden_answers=["Paris"])
    traj = run_student(ex, StudentContext(model=Replies(replies=[ANSWER]), retriever="nonsense-retriever"))
    assert traj.status == "error" and "unknown retriever spec" in traj.reason
    assert traj.provenance.retriever == "nonsense-retriever"


async def test_student_runs_from_a_json_context_and_a_question():
    g = build_student_graph()
    out = await g.ainvoke({"question": "What is the capital of France?"},
                          context={"model": Replies(replies=[SEARCH, ANSWER]), "retriever": SPEC, "k": 2})
    assert out["status"] == "answered" and out["answer"] == "Paris"
    assert out["steps"][0]["queries"] == ["capital of France"]
    assert out["example"]["golden_answers"] == [] and out["example"]["id"]  # gold optional, id made
    assert out["messages"][1] == {"role": "user", "content": "What is the capital of France?"}


async def test_rag_graph_answers_from_the_retrieved_passages():
    model = Replies(replies=["<answer>Paris</answer>"])
    out = await build_rag_graph().ainvoke({"question": "What is the capital of France?", "golden_answers": ["Paris"]},
                                          context=RagContext(model=model, retriever=SPEC, k=2))
    assert out["answer"] == "Paris" and out["status"] == "answered"
    assert [d["title"] for d in out["steps"][0]["documents"]][0] == "Paris"
    assert "Paris is the capital" in out["steps"][0]["information"]


# ------------------------------------------------------------------------------ Studio's debugging
async def test_student_pauses_before_search_takes_edited_queries_and_resumes():
    retriever = TinyRetriever()
    retriever.calls = []
    g = build_student_graph(checkpointer=InMemorySaver())
    ctx = StudentContext(model=Replies(replies=[SEARCH, ANSWER]), retriever=retriever, k=1)
    config = {"configurable": {"thread_id": "pause"}}
    await g.ainvoke({"question": "What is the capital of Germany?"}, config, context=ctx, interrupt_before=["search"])
    paused = await g.aget_state(config)
    assert paused.next == ("search",) and paused.values["pending"]["queries"] == ["capital of France"]
    assert retriever.calls == []  # nothing searched yet
    edited = {**paused.values["pending"], "queries": ["capital of Germany"]}
    config2 = await g.aupdate_state(paused.config, {"pending": edited})
    assert (await g.aget_state(config2)).next == ("search",)  # the edit routes to search again
    out = await g.ainvoke(None, config2, context=ctx)
    assert retriever.calls == ["capital of Germany"]
    assert out["steps"][0]["queries"] == ["capital of Germany"]
    assert out["steps"][0]["documents"][0]["title"] == "Berlin"
    assert out["status"] == "answered"


async def test_student_time_travel_forks_from_an_earlier_checkpoint():
    retriever = TinyRetriever()
    retriever.calls = []
    g = build_student_graph(checkpointer=InMemorySaver())
    ctx = StudentContext(model=Replies(replies=[SEARCH, ANSWER, ANSWER]), retriever=retriever, k=1)
    config = {"configurable": {"thread_id": "fork"}}
    first = await g.ainvoke({"question": "What is the capital of Italy?"}, config, context=ctx)
    history = [s async for s in g.aget_state_history(config)]
    before_search = next(s for s in history if s.next == ("search",))
    fork = await g.aupdate_state(before_search.config, {"pending": {**before_search.values["pending"],
                                                                    "queries": ["capital city of Italy"]}})
    forked = await g.ainvoke(None, fork, context=ctx)
    assert first["steps"][0]["queries"] == ["capital of France"]
    assert forked["steps"][0]["queries"] == ["capital city of Italy"]
    assert forked["steps"][0]["documents"][0]["title"] == "Rome"
    # the original run is still in the thread's history
    assert any(s.values.get("steps") == first["steps"] for s in [s async for s in g.aget_state_history(config)])


# ------------------------------------------------------------------------------ the real server

@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):
    """``langgraph dev`` on a free loopback port, run from a temporary folder (its
    ``.langgraph_api/`` goes there), serving the checkout's ``langgraph.json`` graphs."""
    cli = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which("langgraph")
    if cli is None:
        pytest.fail('langgraph-cli is not installed: pip install "langgraph-cli[inmem]" (the dev extra has it)')
    work = tmp_path_factory.mktemp("studio")
    cfg = json.loads((ROOT / "langgraph.json").read_text())
    cfg["dependencies"] = [str(ROOT)]
    (work / "langgraph.json").write_text(json.dumps(cfg))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false"}
    env.pop("LANGSMITH_API_KEY", None)
    had_api_dir = (ROOT / ".langgraph_api").exists()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([cli, "dev", "--config", str(work / "langgraph.json"), "--host", "127.0.0.1",
                             "--port", str(port), "--no-browser", "--no-reload"],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.flush()
            pytest.fail("langgraph dev did not start:\n" + (work / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield {"url": url, "work": work}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log.close()
    assert (work / ".langgraph_api").is_dir()  # the server's files went to the temporary folder...
    assert had_api_dir or not (ROOT / ".langgraph_api").exists()  # ...and nothing into the checkout


STUDENT_CTX = {"max_new_tokens": 16, "max_turns": 1, "k": 2, "info_max_tokens": 96}
TEACHER_CTX = {"max_turns": 1, "k": 2, "max_queries": 2, "n_queries": 1, "info_max_tokens": 96,
               "model_options": {"max_new_tokens": 24}}
FINAL = {"answered", "turn_cap", "malformed", "length"}  # never "error"


@pytest.mark.slow
async def test_langgraph_server_runs_the_graphs_through_the_sdk(studio_server):
    from langgraph_sdk import get_client

    client = get_client(url=studio_server["url"])
    assistants = {a["graph_id"]: a for a in await client.assistants.search()}
    assert set(assistants) == {"student", "teacher", "rag-pe"}

    # the teacher's input schema: a question, gold answers optional (Studio's input form)
    schemas = await client.assistants.get_schemas(assistants["teacher"]["assistant_id"])
    assert schemas["input_schema"]["required"] == ["question"]
    assert "golden_answers" in schemas["input_schema"]["properties"]
    assert schemas["context_schema"]["properties"]["models"]["default"] == "smollm2"

    # what Studio's graph view draws: the same nodes and edges as docs/img/student_graph.png
    drawn = await client.assistants.get_graph(assistants["student"]["assistant_id"])
    assert {n["id"] for n in drawn["nodes"]} == {"__start__", "policy", "search", "__end__"}
    edges = {(e["source"], e["target"], bool(e.get("conditional"))) for e in drawn["edges"]}
    local = build_student_graph().get_graph()
    assert edges == {(e.source, e.target, bool(e.conditional)) for e in local.edges}

    # the student on the embedded model, default context plus small budgets, events streamed
    question = "Who wrote the novel Dune?"
    thread = await client.threads.create()
    tid = thread["thread_id"]
    events, last = [], None
    async for ev in client.runs.stream(tid, "student", input={"question": question}, context=STUDENT_CTX,
                                       stream_mode=["updates", "values"]):
        events.append(ev.event)
        if ev.event == "values":
            last = ev.data
        assert ev.event != "error", ev.data
    assert events[0] == "metadata" and "updates" in events and last is not None
    assert last["status"] in FINAL, last.get("reason")
    assert last["messages"][1] == {"role": "user", "content": question}
    gen = sum(last["completion_mask"])  # the exact token stream came back through JSON
    assert 0 < gen <= 2 * STUDENT_CTX["max_new_tokens"]
    state = await client.threads.get_state(tid)
    assert state["next"] == [] and state["values"] == last

    # time travel: fork the checkpoint after the first policy turn into a search (the untrained
    # model never asks for one); the fork stands before `search`; edit its queries there, resume
    # (the real shared BM25 index answers)
    history = await client.threads.get_history(tid, limit=20)
    after_first = next(s for s in history if s["metadata"].get("step") == 1)
    pending = {"thought": "I should search.", "queries": ["Dune novel"], "eos": False,
               "raw": "<think>I should search.</think>\n<search>Dune novel</search>"}
    await client.threads.update_state(tid, {"status": "running", "final_requested": False, "pending": pending},
                                      as_node="policy", checkpoint=after_first["checkpoint"])
    state = await client.threads.get_state(tid)
    assert state["next"] == ["search"] and state["values"]["pending"]["queries"] == ["Dune novel"]
    await client.threads.update_state(tid, {"pending": {**pending, "queries": ["Frank Herbert Dune"]}})
    assert (await client.threads.get_state(tid))["next"] == ["search"]  # the edit routes to search again
    done = await client.runs.wait(tid, "student", input=None, context=STUDENT_CTX)
    assert done["steps"][-1]["queries"] == ["Frank Herbert Dune"]
    assert done["steps"][-1]["documents"]  # retrieved from the shared corpus's BM25 index
    assert any("<information>" in m["content"] for m in done["messages"] if m["role"] == "user")
    assert done["status"] in FINAL

    # the teacher on the embedded model in every role, a question only
    tthread = await client.threads.create()
    nodes = []
    async for ev in client.runs.stream(tthread["thread_id"], "teacher", input={"question": question},
                                       context=TEACHER_CTX, stream_mode="updates"):
        assert ev.event != "error", ev.data
        if ev.event == "updates":
            nodes += list(ev.data)
    assert nodes[0] == "planner" and nodes[-1] == "judge"
    tstate = (await client.threads.get_state(tthread["thread_id"]))["values"]
    assert tstate["status"] in FINAL and "Blocking" not in tstate.get("reason", ""), tstate.get("reason")
    assert tstate["verdicts"]["string"]["em"] == 0  # no gold given: nothing to match

    # the RAG-PE baseline, default context
    rag = await client.runs.wait(None, "rag-pe", input={"question": question}, context={"max_new_tokens": 8})
    assert rag["steps"][0]["documents"] and rag["steps"][0]["queries"] == [question]
    assert rag["status"] in FINAL
