"""Nothing a user points at is destroyed: index --out, resume, job identity, locks, bad corpora."""

from __future__ import annotations

import json
import time

import pytest

from masksearch.errors import JobLockedError, JobMismatchError, MaskSearchError
from masksearch.retrieval import build_index
from masksearch.retrieval.corpus import CorpusError, chunk_text, read_corpus
from masksearch.utils.jsonl import ReadStats, ResumableJsonlWriter, iter_jsonl


def _corpus(tmp_path, n=30):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"id": f"d{i}", "title": f"T{i}", "text": f"word{i} alpha beta gamma. " * 10})
                         + "\n" for i in range(n)))
    return p


# ------------------------------------------------------------------ 1. index --out
def test_index_refuses_folder_with_someone_elses_manifest(tmp_path):
    x = tmp_path / "x"
    (x / "src").mkdir(parents=True)
    (x / "manifest.json").write_text('{"name": "app"}')
    (x / "src" / "app.js").write_text("keep")
    with pytest.raises(MaskSearchError, match="not a masksearch index"):
        build_index(str(_corpus(tmp_path)), out=x, progress=False)
    assert (x / "src" / "app.js").read_text() == "keep"


def test_index_replaces_its_own_index(tmp_path):
    c = _corpus(tmp_path)
    m1 = build_index(str(c), out=tmp_path / "idx", progress=False)
    m2 = build_index(str(c), out=tmp_path / "idx", progress=False)
    assert m1["count"] == m2["count"] == 30


@pytest.mark.parametrize("content", [b"", b"{bad\n[1]\n", '{"id":"a","text":"x"}\n'.encode("utf-16")])
def test_index_on_empty_all_bad_or_utf16_corpus_is_an_error(tmp_path, content):
    c = tmp_path / "bad.jsonl"
    c.write_bytes(content)
    with pytest.raises(MaskSearchError, match="nothing to index|UTF-16"):
        build_index(str(c), out=tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx").exists()


def test_utf8_bom_keeps_the_first_record(tmp_path):
    c = tmp_path / "bom.jsonl"
    c.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "title": "A", "text": "first"}\n{"id": "b", "text": "second"}\n')
    assert [p.id for p in read_corpus(c)] == ["a", "b"]


def test_negative_chunk_words_is_rejected(tmp_path):
    from masksearch.cli import main

    with pytest.raises(CorpusError, match="chunk_words"):
        list(read_corpus(_corpus(tmp_path), chunk_words=-5))
    with pytest.raises(SystemExit):
        main(["index", "--corpus", str(_corpus(tmp_path)), "--out", str(tmp_path / "i"), "--chunk-words", "-5"])


def test_lone_surrogate_in_corpus_is_made_safe(tmp_path):
    c = tmp_path / "s.jsonl"
    c.write_text('{"id": "a", "title": "T\\ud800", "text": "bad \\udfff text"}\n')
    (p,) = list(read_corpus(c))
    p.text.encode("utf-8")
    assert "\ufffd" in p.text and "\ufffd" in p.title


def test_chunking_a_4mb_line_without_sentence_ends_is_linear():
    big = "word " * 800_000  # 4 MB, no sentence end
    t0 = time.perf_counter()
    pieces = chunk_text(big, 100)
    dt = time.perf_counter() - t0
    assert sum(len(p.split()) for p in pieces) == 800_000
    assert dt < 10, dt  # quadratic took ~48 s; linear is ~1 s on a busy machine


# ------------------------------------------------------------------ 2. resume
def test_bad_line_in_the_middle_keeps_every_record_after_it(tmp_path):
    p = tmp_path / "out.jsonl"
    with ResumableJsonlWriter(p, job={"command": "t"}) as w:
        for i in range(3000):
            w.write({"id": i})
    lines = p.read_text().splitlines()
    lines[99] = "{this is not json"
    p.write_text("\n".join(lines) + "\n" + '{"id": 30')  # plus a torn tail
    w = ResumableJsonlWriter(p, job={"command": "t"})
    assert len(w.done) == 2999 and w.bad_lines == 1 and w.repaired_tail
    w.close()
    text = p.read_text()
    assert "{this is not json" in text and '{"id": 2999}' in text and not text.endswith('{"id": 30')
    assert sum(1 for _ in iter_jsonl(p, stats=ReadStats())) == 2999


def test_resume_refuses_a_user_file_and_keeps_it(tmp_path):
    n = tmp_path / "n.txt"
    n.write_text("my notes\n")
    for resume in (True, False):
        with pytest.raises(JobMismatchError, match="not a masksearch output"):
            ResumableJsonlWriter(n, job={"command": "ramp"}, resume=resume)
    assert n.read_text() == "my notes\n"
    assert not (tmp_path / "n.txt.job.json").exists()


def test_never_writes_into_an_input(tmp_path):
    c = _corpus(tmp_path)
    before = c.read_bytes()
    with pytest.raises(JobMismatchError, match="input"):
        ResumableJsonlWriter(c, inputs=[c])
    assert c.read_bytes() == before


def test_another_seed_on_the_same_out_is_refused(tmp_path):
    p = tmp_path / "o.jsonl"
    with ResumableJsonlWriter(p, job={"command": "ramp", "seed": 0}) as w:
        w.write({"id": "a"})
    with pytest.raises(JobMismatchError, match="seed: 0 there, 1 now"):
        ResumableJsonlWriter(p, job={"command": "ramp", "seed": 1})
    with ResumableJsonlWriter(p, job={"command": "ramp", "seed": 1}, resume=False) as w:  # start over
        assert not w.done


def test_second_concurrent_writer_is_refused(tmp_path):
    p = tmp_path / "o.jsonl"
    w = ResumableJsonlWriter(p, job={"command": "ramp"})
    with pytest.raises(JobLockedError, match="another masksearch run"):
        ResumableJsonlWriter(p, job={"command": "ramp"})
    w.close()
    ResumableJsonlWriter(p, job={"command": "ramp"}).close()  # free again


def test_ramp_cli_refuses_notes_corpus_and_other_seed(tmp_path, capsys, corpus_path):
    from masksearch.cli import main

    c = tmp_path / "c.jsonl"
    with open(corpus_path, encoding="utf-8") as f:
        c.write_text("".join(next(f) for _ in range(200)), encoding="utf-8")
    corpus_before = c.read_bytes()
    notes = tmp_path / "n.txt"
    notes.write_text("my notes\n")
    assert main(["ramp", "--corpus", str(c), "--out", str(notes), "--n", "3", "--no-progress"]) == 2
    assert notes.read_text() == "my notes\n"
    assert main(["ramp", "--corpus", str(c), "--out", str(c), "--n", "3", "--no-progress"]) == 2
    assert c.read_bytes() == corpus_before
    out = tmp_path / "r.jsonl"
    assert main(["ramp", "--corpus", str(c), "--out", str(out), "--n", "3", "--no-progress"]) == 0
    assert main(["ramp", "--corpus", str(c), "--out", str(out), "--n", "3", "--no-progress", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "not a masksearch output" in err and "input of this job" in err and "seed" in err
    assert len(out.read_text().splitlines()) == 3


def test_second_ramp_on_the_same_out_reports_the_lock(tmp_path, capsys, corpus_path):
    from masksearch.cli import main
    from masksearch.utils.jsonl import input_fingerprint

    c = tmp_path / "c.jsonl"
    with open(corpus_path, encoding="utf-8") as f:
        c.write_text("".join(next(f) for _ in range(100)), encoding="utf-8")
    out = tmp_path / "r.jsonl"
    job = {"command": "ramp", "strategy": "rules", "seed": 0, "shard": "0/1", "input": input_fingerprint(c)}
    first = ResumableJsonlWriter(out, job=job, inputs=[c])  # a first run still writing
    try:
        assert main(["ramp", "--corpus", str(c), "--out", str(out), "--n", "3", "--no-progress"]) == 2
    finally:
        first.close()
    assert "another masksearch run" in capsys.readouterr().err
    assert main(["ramp", "--corpus", str(c), "--out", str(out), "--n", "3", "--no-progress"]) == 0
