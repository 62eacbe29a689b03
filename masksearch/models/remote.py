"""OpenAI-compatible endpoints (OpenAI, DashScope, vLLM, llama.cpp server) through langchain-openai.

Keys come from the environment only (``OPENAI_API_KEY``, ``DASHSCOPE_API_KEY``) and are never
logged. The OpenAI client retries a failed connection with exponential backoff (``max_retries``);
when it gives up, :class:`EndpointError` names the URL.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, AsyncIterator
from urllib.parse import urlparse

from langchain_openai import ChatOpenAI

from masksearch.errors import EndpointError, MissingKeyError

DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"


def _endpoint_error(base_url: str, retries: int, err: BaseException) -> EndpointError:
    return EndpointError(
        f"cannot reach the model endpoint {base_url} after {retries} retries with backoff "
        f"({type(err).__name__}: {err}); check that the server is running and the URL is right"
    )


def _auth_error(base_url: str, key_env: str | None, err: BaseException) -> MissingKeyError:
    hint = f"check {key_env}" if key_env else "check the server's API key setting"
    return MissingKeyError(f"the endpoint {base_url} refused the API key ({type(err).__name__}); {hint}")


class OpenAICompatibleChatModel(ChatOpenAI):
    """``ChatOpenAI`` whose connection and auth failures become one clear masksearch error."""

    key_env: str | None = None

    @property
    def _endpoint(self) -> str:
        return str(self.openai_api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL)

    def _translate(self, e: BaseException) -> BaseException:
        import openai

        if isinstance(e, (openai.APIConnectionError, openai.APITimeoutError)):
            return _endpoint_error(self._endpoint, int(self.max_retries or 0), e)
        if isinstance(e, openai.AuthenticationError):
            return _auth_error(self._endpoint, self.key_env, e)
        return e

    def _generate(self, *args: Any, **kwargs: Any):
        try:
            return super()._generate(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            t = self._translate(e)
            if t is e:
                raise
            raise t from e

    async def _agenerate(self, *args: Any, **kwargs: Any):
        try:
            return await super()._agenerate(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            t = self._translate(e)
            if t is e:
                raise
            raise t from e

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator:
        try:
            yield from super()._stream(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            t = self._translate(e)
            if t is e:
                raise
            raise t from e

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator:
        try:
            async for chunk in super()._astream(*args, **kwargs):
                yield chunk
        except Exception as e:  # noqa: BLE001
            t = self._translate(e)
            if t is e:
                raise
            raise t from e


def _normalise_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1`` (vLLM / llama.cpp serve under /v1)."""
    url = url.rstrip("/")
    if not urlparse(url).scheme:
        url = "http://" + url
    if urlparse(url).path in ("", "/"):
        url += "/v1"
    return url


def make_openai_compatible(provider: str, model: str, **options: Any) -> OpenAICompatibleChatModel:
    """Build the chat model for ``openai:``, ``dashscope:`` or ``vllm:`` (with ``base_url``)."""
    api_key = options.pop("api_key", None)
    base_url = options.pop("base_url", None)
    key_env: str | None
    if provider == "openai":
        key_env = "OPENAI_API_KEY"
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
    elif provider == "dashscope":
        key_env = "DASHSCOPE_API_KEY"
        base_url = base_url or DASHSCOPE_BASE_URL
    elif provider == "vllm":
        key_env = None
        if not base_url:
            raise ValueError("vllm needs a base URL: 'vllm:<model>@<base_url>'")
        base_url = _normalise_base_url(base_url)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(provider)
    if api_key is None:
        if key_env is None:
            api_key = os.environ.get("VLLM_API_KEY") or "EMPTY"  # vLLM accepts any key unless --api-key
        else:
            api_key = os.environ.get(key_env)
            if not api_key:
                raise MissingKeyError(
                    f"{key_env} is not set: the '{provider}:' model spec needs it. "
                    f"Export it first (export {key_env}=...), or use a local model spec such as 'smollm2'."
                )
    if "max_new_tokens" in options:  # our local-model option name -> OpenAI's
        options.setdefault("max_tokens", options.pop("max_new_tokens"))
    options.setdefault("max_retries", 3)
    options.setdefault("timeout", 60)
    for ignored in ("max_batch_size", "batch_wait_ms", "dtype", "device", "seed"):
        options.pop(ignored, None)
    return OpenAICompatibleChatModel(model=model, api_key=api_key, base_url=base_url, key_env=key_env,
                                     **options)
