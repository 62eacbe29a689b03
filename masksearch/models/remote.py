"""OpenAI-compatible endpoints (OpenAI, DashScope, vLLM, llama.cpp server) through langchain-openai.

Keys come from the environment only (``OPENAI_API_KEY``, ``DASHSCOPE_API_KEY``) and are never
logged. Every provider takes a base-URL override in its spec, ``PROVIDER:MODEL@URL``
(``dashscope:qwen-max@https://host/v1``, ``vllm:qwen@http://127.0.0.1:8081/v1``), or ``base_url=``.
The OpenAI client retries connection errors, timeouts, 408/409/429 (honouring ``Retry-After``) and
5xx with exponential backoff (``max_retries``, default :data:`DEFAULT_RETRIES`); the request
timeout is :data:`DEFAULT_TIMEOUT_S`.  When it gives up, one :class:`EndpointError` line names the
URL and the cause: refused ("cannot reach"), timed out, rate-limited, HTTP status, malformed reply.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, AsyncIterator
from urllib.parse import urlparse

from langchain_openai import ChatOpenAI

from masksearch.errors import EndpointError, EndpointTimeoutError, MaskSearchError, MissingKeyError
from masksearch.utils.scrub import register_secret, safe_text, scrub

DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"

# Request timeout and retries: settings with defaults that fit local servers (a CPU llama.cpp or
# vLLM server with 8 requests in flight decodes a few tokens/s per request, so a 500-token reply
# can take minutes).  Overridden per model (``timeout=``, ``max_retries=``), or for the whole
# process (and its subprocesses / Ray workers) by the environment, which the CLI's
# ``--request-timeout`` / ``--retries`` flags set.
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_RETRIES = 2
CONNECT_TIMEOUT_S = 10.0
TIMEOUT_ENV = "MASKSEARCH_REQUEST_TIMEOUT"
RETRIES_ENV = "MASKSEARCH_REQUEST_RETRIES"


def set_remote_defaults(timeout: float | None = None, retries: int | None = None) -> None:
    """Set the default request timeout (seconds) and retries of every OpenAI-compatible model built
    from now on, in this process and the processes it starts (``--request-timeout``, ``--retries``)."""
    if timeout is not None:
        if not timeout > 0:
            raise ValueError(f"the request timeout must be a positive number of seconds, got {timeout}")
        os.environ[TIMEOUT_ENV] = str(float(timeout))
    if retries is not None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        os.environ[RETRIES_ENV] = str(int(retries))


def remote_defaults() -> tuple[float, int]:
    """The (timeout seconds, retries) a new remote model gets unless told otherwise."""
    try:
        t = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        t = DEFAULT_TIMEOUT_S
    try:
        r = int(os.environ.get(RETRIES_ENV) or DEFAULT_RETRIES)
    except ValueError:
        r = DEFAULT_RETRIES
    return (t if t > 0 else DEFAULT_TIMEOUT_S), max(0, r)


def _short(text: Any, n: int = 200) -> str:
    """One scrubbed line of at most ``n`` characters."""
    line = " ".join(str(text or "").split())
    line = scrub(line)
    return line if len(line) <= n else line[: n - 1] + "…"


def _endpoint_error(base_url: str, retries: int, err: BaseException) -> EndpointError:
    """Connection failures: 'cannot reach' only when the connection was refused / not made."""
    import httpx

    cause = err.__cause__ or err.__context__
    if isinstance(cause, httpx.ConnectError) or "connect" in type(cause).__name__.lower():
        return EndpointError(
            f"cannot reach the model endpoint {base_url} (connection refused or no such host, "
            f"{retries} retries with backoff); check that the server is running and the URL is right")
    why = f"{type(cause).__name__}: {_short(cause)}" if cause is not None else _short(err)
    return EndpointError(f"the connection to the model endpoint {base_url} broke during the request after "
                         f"{retries} retries ({why}); the server may have crashed or restarted")


def _timeout_error(base_url: str, retries: int, timeout_s: float | None) -> EndpointTimeoutError:
    t = f"{timeout_s:g} s" if timeout_s else "the timeout"
    return EndpointTimeoutError(
        f"the model endpoint {base_url} timed out: no reply within {t} ({retries + 1} attempts). A slow "
        f"server is not a dead one: raise --request-timeout (or timeout=), or lower --concurrency")


def _auth_error(base_url: str, key_env: str | None, err: BaseException) -> MissingKeyError:
    hint = f"check {key_env}" if key_env else "check the server's API key setting"
    return MissingKeyError(f"the endpoint {base_url} refused the API key ({type(err).__name__}); {hint}")


def _status_error(base_url: str, retries: int, err: Any) -> EndpointError:
    code = getattr(err, "status_code", None)
    body = _short(getattr(err, "message", None) or err)
    if code == 429:
        return EndpointError(f"the model endpoint {base_url} is rate-limiting (HTTP 429) after {retries} "
                             f"retries honouring Retry-After: {body}; lower --concurrency or retry later")
    if code is not None and code >= 500:
        return EndpointError(f"the model endpoint {base_url} failed with HTTP {code} after {retries} "
                             f"retries: {body}")
    return EndpointError(f"the model endpoint {base_url} refused the request (HTTP {code}): {body}; check "
                         f"the model name and options")


def _malformed_error(base_url: str, what: str) -> EndpointError:
    return EndpointError(f"the model endpoint {base_url} sent a reply that is not a chat completion "
                         f"({_short(what)}); is the URL an OpenAI-compatible /v1 API?")


def _safe_result(result: Any, base_url: str) -> Any:
    """Outside text made safe once, where it enters: lone surrogates in replies become U+FFFD."""
    gens = getattr(result, "generations", None)
    if gens is None:
        return result
    if not gens:
        raise _malformed_error(base_url, "no choices in the reply")
    for i, g in enumerate(gens):
        msg = getattr(g, "message", None)
        if msg is not None and isinstance(msg.content, str):
            clean = safe_text(msg.content)
            if clean is not msg.content:
                from langchain_core.outputs import ChatGeneration

                gens[i] = ChatGeneration(message=msg.model_copy(update={"content": clean}),
                                         generation_info=g.generation_info)
    return result


class OpenAICompatibleChatModel(ChatOpenAI):
    """``ChatOpenAI`` whose every failure becomes one clear, scrubbed masksearch error line:
    refused connection ("cannot reach"), timeout ("timed out"), 429/5xx after the retries, other
    HTTP errors, a reply that is not JSON or has no choices.  Replies are made encodable."""

    key_env: str | None = None
    timeout_s: float | None = None
    # constrained decoding the endpoint offers: "json_schema" (llama.cpp, vLLM, OpenAI, DashScope
    # structured outputs: the teacher roles then answer in JSON schemas) or None (read tags)
    structured_output: str | None = "json_schema"

    @property
    def _endpoint(self) -> str:
        return scrub(str(self.openai_api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL))

    def _translate(self, e: BaseException) -> BaseException:
        import json

        import openai

        retries = int(self.max_retries or 0)
        if isinstance(e, MaskSearchError):
            return e
        if isinstance(e, openai.APITimeoutError):
            return _timeout_error(self._endpoint, retries, self.timeout_s)
        if isinstance(e, openai.APIConnectionError):
            return _endpoint_error(self._endpoint, retries, e)
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return _auth_error(self._endpoint, self.key_env, e)
        if isinstance(e, openai.APIStatusError):
            return _status_error(self._endpoint, retries, e)
        if isinstance(e, (openai.APIResponseValidationError, json.JSONDecodeError)):
            return _malformed_error(self._endpoint, f"{type(e).__name__}: {e}")
        if isinstance(e, (KeyError, IndexError, TypeError, AttributeError, ValueError)):
            return _malformed_error(self._endpoint, f"{type(e).__name__}: {e}")
        return e

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Every failure inside becomes one clear, scrubbed masksearch error (see ``_translate``)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001
            t = self._translate(e)
            if t is e:
                raise
            raise t from None

    @staticmethod
    def _safe_chunk(chunk: Any) -> Any:
        msg = getattr(chunk, "message", None)
        if msg is not None and isinstance(msg.content, str):
            msg.content = safe_text(msg.content)
        return chunk

    def _generate(self, *args: Any, **kwargs: Any):
        with self._errors():
            return _safe_result(super()._generate(*args, **kwargs), self._endpoint)

    async def _agenerate(self, *args: Any, **kwargs: Any):
        with self._errors():
            return _safe_result(await super()._agenerate(*args, **kwargs), self._endpoint)

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator:
        with self._errors():
            for chunk in super()._stream(*args, **kwargs):
                yield self._safe_chunk(chunk)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator:
        with self._errors():
            async for chunk in super()._astream(*args, **kwargs):
                yield self._safe_chunk(chunk)


def split_model_url(rest: str) -> tuple[str, str | None]:
    """``"MODEL@URL"`` -> (MODEL, URL); ``"MODEL"`` -> (MODEL, None).  The URL starts at the first
    ``@http://``/``@https://`` (so a URL with ``user:pass@`` credentials still parses), else at the
    last ``@``."""
    low = rest.lower()
    for marker in ("@http://", "@https://"):
        i = low.find(marker)
        if i > 0:
            return rest[:i].strip(), rest[i + 1:].strip()
    model, at, url = rest.rpartition("@")
    if at and model.strip() and url.strip():
        return model.strip(), url.strip()
    return rest.strip(), None


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
        base_url = base_url or os.environ.get("DASHSCOPE_BASE_URL") or DASHSCOPE_BASE_URL
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
    d_timeout, d_retries = remote_defaults()
    timeout = options.pop("timeout", None) or options.pop("request_timeout", None) or d_timeout
    retries = options.pop("max_retries", None)
    retries = d_retries if retries is None else int(retries)
    for ignored in ("max_batch_size", "batch_wait_ms", "dtype", "device", "seed"):
        options.pop(ignored, None)
    register_secret(api_key)  # a key given in Python is scrubbed like one from the environment
    import httpx

    t = float(timeout)
    http_timeout = httpx.Timeout(t, connect=min(CONNECT_TIMEOUT_S, t))
    if "http_async_client" not in options:
        # langchain-openai otherwise shares one cached async httpx client per (URL, timeout)
        # across models; its pooled connections belong to the event loop that opened them, so a
        # second ``asyncio.run`` (a later cot / eval stage) fails with "Event loop is closed".
        options["http_async_client"] = httpx.AsyncClient(timeout=http_timeout)
    return OpenAICompatibleChatModel(model=model, api_key=api_key, base_url=base_url, key_env=key_env,
                                     timeout=http_timeout, max_retries=retries, timeout_s=t, **options)
