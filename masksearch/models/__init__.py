"""Chat models by spec: the embedded SmolLM2, any local HF causal LM, OpenAI-compatible endpoints.

``make_chat_model(spec="smollm2", **options) -> BaseChatModel``:

- ``"smollm2"``: the embedded SmolLM2-135M-Instruct (materialised once into the cache);
- ``"hf:<hub id or local path>"``: any causal LM through transformers;
- ``"llamacpp:<name | path.gguf>"``: a llama.cpp server (started on first use, one per process) on
  an embedded GGUF (``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``; the bare names work too) or
  any GGUF file, and the OpenAI-compatible chat model on it (:mod:`masksearch.models.llamacpp`);
- ``"openai:<model>"`` (``OPENAI_API_KEY``), ``"dashscope:<model>"`` (``DASHSCOPE_API_KEY``),
  ``"vllm:<model>@<base_url>"`` (no key): OpenAI-compatible endpoints; every one of them takes
  ``@<base_url>`` (``dashscope:qwen-max@https://host/v1``), and ``base_url=`` overrides;
- a ``BaseChatModel`` object: returned as is.

Local models are :class:`LocalChatModel` (batched, token ids and log-probs); heavy imports
(torch, transformers, openai) happen only when a model of that kind is built.
"""

from __future__ import annotations

from typing import Any

from masksearch.errors import UnknownSpecError
from masksearch.utils.scrub import scrub

__all__ = ["make_chat_model", "LocalChatModel", "Generation", "materialize_embedded", "VALID_SPECS"]

VALID_SPECS = (
    "'smollm2' (embedded SmolLM2-135M-Instruct), 'hf:<hub id or local path>', "
    "'llamacpp:qwen2.5-coder-0.5b|qwen2.5-coder-1.5b|<path.gguf>', 'openai:<model>', "
    "'dashscope:<model>', 'vllm:<model>@<base_url>', or a LangChain BaseChatModel object"
)


def make_chat_model(spec: Any = "smollm2", **options: Any):
    """Return a LangChain chat model for ``spec`` (see the module docstring for the forms)."""
    from langchain_core.language_models.chat_models import BaseChatModel

    if isinstance(spec, BaseChatModel):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownSpecError(f"unknown model spec {spec!r}; valid forms: {VALID_SPECS}")
    s = spec.strip()
    prefix, _, rest = s.partition(":")
    if s in ("smollm2", "embedded") or (prefix == "hf" and rest.strip()):
        from masksearch.models.local import LocalChatModel

        return LocalChatModel.from_spec(s, **options)
    from masksearch.models.gguf import gguf_spec

    if (prefix == "llamacpp" and rest.strip()) or gguf_spec(s) is not None:
        from masksearch.models.llamacpp import make_llamacpp_chat_model

        return make_llamacpp_chat_model(rest.strip() if prefix == "llamacpp" else s, **options)
    if prefix in ("openai", "dashscope", "vllm") and rest.strip():
        from masksearch.models.remote import make_openai_compatible, split_model_url

        # every OpenAI-compatible provider takes the same base-URL override: PROVIDER:MODEL@URL
        model, url = split_model_url(rest)
        if url:
            options.setdefault("base_url", url)
        elif prefix == "vllm" and not options.get("base_url"):
            raise UnknownSpecError(f"bad vllm spec {scrub(spec)!r}: use 'vllm:<model>@<base_url>', e.g. "
                                   f"'vllm:Qwen/Qwen2.5-7B-Instruct@http://localhost:8000/v1'; valid forms: {VALID_SPECS}")
        if not model:
            raise UnknownSpecError(f"bad model spec {scrub(spec)!r}: no model name before '@'; valid forms: {VALID_SPECS}")
        return make_openai_compatible(prefix, model, **options)
    raise UnknownSpecError(f"unknown model spec {spec!r}; valid forms: {VALID_SPECS}")


def __getattr__(name: str):  # lazy: importing masksearch.models must not import torch
    if name in ("LocalChatModel", "Generation"):
        from masksearch.models import local

        return getattr(local, name)
    if name == "materialize_embedded":
        from masksearch.models.embedded import materialize_embedded

        return materialize_embedded
    raise AttributeError(name)
