"""Resumable JSONL: torn tails repaired, finished ids skipped, bad lines counted."""

from __future__ import annotations

import json

import pytest

from masksearch.utils.jsonl import ReadStats, ResumableJsonlWriter, in_shard, iter_jsonl, parse_shard


def test_iter_jsonl_counts_bad_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"id": 1, "q": "a"}\n{bad\n\n[1,2]\n{"id": 2}\n\xff\xfe\n{"id": 3, "q": "c"}\n')
    stats = ReadStats()
    recs = list(iter_jsonl(p, stats=stats, required=["q"]))
    assert [r["id"] for r in recs] == [1, 3]
    assert stats.read == 2
    assert stats.skipped == {"invalid_json": 1, "not_an_object": 1, "missing_field": 1, "undecodable": 1}
    assert "4 skipped" in stats.summary()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_resume_after_torn_write(tmp_path):
    p = tmp_path / "out.jsonl"
    with ResumableJsonlWriter(p) as w:
        for i in range(3):
            assert w.write({"id": f"r{i}", "v": i})
        assert not w.write({"id": "r1", "v": 99})  # duplicate refused
    with open(p, "a") as f:  # simulate a kill mid-write
        f.write('{"id": "r3", "v"')
    w = ResumableJsonlWriter(p)
    assert w.done == {"r0", "r1", "r2"}
    todo = [f"r{i}" for i in range(5) if f"r{i}" not in w]
    for rid in todo:
        w.write({"id": rid})
    w.close()
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["r0", "r1", "r2", "r3", "r4"]


def test_no_resume_starts_fresh(tmp_path):
    p = tmp_path / "out.jsonl"
    with ResumableJsonlWriter(p) as w:
        w.write({"id": "a"})
    with ResumableJsonlWriter(p, resume=False) as w:
        assert not w.done
        w.write({"id": "b"})
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == ["b"]


def test_shards_partition_indices():
    assert parse_shard(None) == (0, 1)
    assert parse_shard("1/3") == (1, 3)
    parts = [[i for i in range(10) if in_shard(i, (s, 3))] for s in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)
