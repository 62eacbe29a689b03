"""One scrubber for every string written or printed; one cleaner for outside text."""

from __future__ import annotations

import json

from masksearch.errors import EndpointError, MaskSearchError
from masksearch.utils.jsonl import ResumableJsonlWriter, write_jsonl
from masksearch.utils.names import spec_name
from masksearch.utils.scrub import register_secret, safe_text, scrub, scrub_obj

KEY = "zz-env-key-0123456789abcdef"


def test_env_keys_auth_values_and_url_credentials(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    s = scrub(f"failed: {KEY} | Authorization: Bearer abcdefghijkl | {{'authorization': 'Basic dXNlcjpwYXNz'}} "
              f"| https://bob:hunter22@host:8000/v1 | https://h/v1?api_key=qwertyuiop&x=1 | sk-proj-ABCDEFGHIJKLMNOP")
    for secret in (KEY, "abcdefghijkl", "dXNlcjpwYXNz", "hunter22", "bob:", "qwertyuiop", "ABCDEFGHIJKLMNOP"):
        assert secret not in s, secret
    assert "https://***@host:8000/v1" in s and "Bearer ***" in s and "x=1" in s


def test_ordinary_text_is_left_alone():
    text = "The key: Mozart was born in 1756. Token recall 0.5; see https://en.wikipedia.org/wiki/Mozart"
    assert scrub(text) == text


def test_registered_secret_and_nested_objects():
    register_secret("explicit-key-998877")
    assert scrub_obj({"a": ["x explicit-key-998877"], "explicit-key-998877": 1}) == {"a": ["x ***"], "***": 1}


def test_errors_jsonl_and_spec_names_are_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert KEY not in str(EndpointError(f"echo {KEY}")) and KEY not in str(MaskSearchError(f"x {KEY}"))
    assert spec_name("vllm:m@http://u:secretpw@h/v1") == "vllm:m@http://***@h/v1"
    p = tmp_path / "o.jsonl"
    with ResumableJsonlWriter(p) as w:
        w.write({"id": "a", "reason": f"HTTP 500: {KEY}"})
    write_jsonl(tmp_path / "b.jsonl", [{"id": "b", "url": "http://u:secretpw@h"}])
    assert KEY not in p.read_text() and "secretpw" not in (tmp_path / "b.jsonl").read_text()


def test_safe_text_and_writer_survive_lone_surrogates(tmp_path):
    assert safe_text("ok") == "ok" and safe_text("a\ud800b\x00") == "a\ufffdb"
    assert safe_text("\U0001F600") == "\U0001F600"
    p = tmp_path / "o.jsonl"
    with ResumableJsonlWriter(p) as w:
        assert w.write({"id": "a", "text": "reply \ud800"})
    assert json.loads(p.read_text())["text"] == "reply \ufffd"
