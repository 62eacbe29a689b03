"""Benchmark loaders: shared names, shared/FlashRAG JSONL, and each original format on small files."""

import json

import pytest

from masksearch.data.benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    benchmark_name,
    flatten_fanout_answer,
    load_benchmark,
)
from masksearch.utils.jsonl import ReadStats


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_shared_benchmarks_by_short_name(name, bench_path):
    exs = load_benchmark(name, limit=5)
    assert len(exs) == 5
    first = json.loads(bench_path(BENCHMARKS[name]).open().readline())
    assert exs[0].id == first["id"] and exs[0].question == first["question"]
    assert exs[0].golden_answers == first["golden_answers"]
    assert exs[0].answer_match == ("all" if name == "fanoutqa" else "any")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("nosuchbench")


def test_benchmark_name_from_path(bench_path):
    assert benchmark_name(bench_path("2wikimultihopqa")) == "2wiki"
    assert benchmark_name("2wikimultihopqa") == "2wiki"
    assert benchmark_name("/tmp/my_questions.jsonl") == "my_questions"


def test_flashrag_jsonl(tmp_path):
    p = tmp_path / "nq.jsonl"
    p.write_text(json.dumps({"id": "test_0", "question": "who?", "golden_answers": ["A", "B"],
                             "metadata": {"type": "x"}}) + "\n" + "not json\n")
    stats = ReadStats()
    exs = load_benchmark(p, stats=stats)
    assert [(e.id, e.golden_answers, e.answer_match) for e in exs] == [("test_0", ["A", "B"], "any")]
    assert exs[0].metadata["type"] == "x"
    assert stats.skipped["invalid_json"] == 1


def test_hotpotqa_and_2wiki_original_json(tmp_path):
    p = tmp_path / "hotpot_dev_distractor_v1.json"
    p.write_text(json.dumps([
        {"_id": "5a8b", "question": "Which magazine was started first?", "answer": "Arthur's Magazine",
         "type": "comparison", "level": "medium", "supporting_facts": [["Arthur's Magazine", 0]], "context": []},
        {"_id": "bad", "question": "no answer"},
    ]))
    stats = ReadStats()
    exs = load_benchmark(p, stats=stats)
    assert len(exs) == 1 and exs[0].id == "5a8b" and exs[0].golden_answers == ["Arthur's Magazine"]
    assert exs[0].metadata["level"] == "medium"
    assert stats.n_skipped == 1

    w = tmp_path / "dev.json"
    w.write_text(json.dumps([{"_id": "8813", "type": "compositional", "question": "Who is the mother of X?",
                              "answer": "Jane", "evidences": [["X", "mother", "Jane"]], "context": []}]))
    (ex,) = load_benchmark(w)
    assert (ex.id, ex.golden_answers, ex.answer_match, ex.source) == ("8813", ["Jane"], "any", "2wiki")


def test_musique_original_jsonl(tmp_path):
    p = tmp_path / "musique_ans_v1.0_dev.jsonl"
    p.write_text(json.dumps({"id": "2hop__1", "question": "Who founded it?", "answer": "Baring",
                             "answer_aliases": ["Francis Baring", "Baring"], "answerable": True,
                             "paragraphs": []}) + "\n")
    (ex,) = load_benchmark(p)
    assert ex.id == "2hop__1" and ex.golden_answers == ["Baring", "Francis Baring"]
    assert ex.answer_match == "any" and ex.metadata["answerable"] is True


def test_fanoutqa_original_json_flattened(tmp_path):
    p = tmp_path / "fanout-final-dev.json"
    p.write_text(json.dumps([
        {"id": "f1", "question": "Box office of the films?", "answer": {"Film A": "$1 billion", "Film B": "$2 billion"},
         "decomposition": []},
        {"id": "f2", "question": "Which are EU members?", "answer": ["France", "Spain"], "decomposition": []},
        {"id": "f3", "question": "Is it true?", "answer": True, "decomposition": []},
    ]))
    exs = load_benchmark(p)
    assert exs[0].golden_answers == ["Film A", "$1 billion", "Film B", "$2 billion"]
    assert exs[0].answer_match == "all" and exs[0].metadata["answer_struct"]["Film A"] == "$1 billion"
    assert exs[1].golden_answers == ["France", "Spain"]
    assert exs[2].golden_answers == ["yes"]
    assert flatten_fanout_answer({"a": [1, 2], "b": {"c": False}}) == ["a", "1", "2", "b", "c", "no"]


def test_freshqa_original_csv_with_preamble(tmp_path):
    p = tmp_path / "FreshQA_v05272024.csv"
    answers = ",".join(f"answer_{i}" for i in range(10))
    p.write_text(
        "FreshQA,,,\n"
        "\"Note: answers change weekly\",,,\n"
        f"id,split,question,false_premise,fact_type,{answers},note\n"
        f"1,test,Who is the CEO of Twitter?,FALSE,fast-changing,Linda Yaccarino,Yaccarino,,,,,,,,,\n"
        f"2,dev,,FALSE,fast-changing,x,,,,,,,,,,\n"
        "\n"
    )
    stats = ReadStats()
    exs = load_benchmark(p, stats=stats)
    assert len(exs) == 1
    ex = exs[0]
    assert ex.id == "freshqa_1" and ex.golden_answers == ["Linda Yaccarino", "Yaccarino"]
    assert ex.metadata["fact_type"] == "fast-changing" and ex.metadata["split"] == "test"
    assert stats.n_skipped == 1


def test_limit_and_generated_ids(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps({"question": f"q{i}?", "golden_answers": [str(i)]}) + "\n" for i in range(5)))
    exs = load_benchmark(p, limit=3)
    assert [e.id for e in exs] == ["mine-0", "mine-1", "mine-2"]


def test_ramp_files_evaluate_like_any_benchmark(tmp_path):
    from masksearch.data.benchmarks import load_benchmark

    p = tmp_path / "heldout.jsonl"
    p.write_text('{"id": "r1", "question": "Fill [mask] and [mask].", "answers": ["1945", "Berlin"], "mask_count": 2}\n')
    (ex,) = load_benchmark(str(p))
    assert ex.golden_answers == ["1945", "Berlin"] and ex.answer_match == "ordered"
    assert ex.metadata["mask_count"] == 2
