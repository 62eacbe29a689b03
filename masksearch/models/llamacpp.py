"""A real llama.cpp server (the ``xllamacpp`` wheel) for any GGUF, and the teacher specs on it.

* :func:`serve` runs ``xllamacpp.Server(CommonParams)`` in this process until SIGINT/SIGTERM: an
  OpenAI-compatible API (``/v1/chat/completions`` with ``response_format`` JSON schemas,
  ``/v1/models``, ``/health``), ``n_parallel`` slots with continuous batching and prompt caching.
  ``masksearch serve-model SPEC --port P`` is its command-line face.
* :class:`LlamaCppServer` starts that command in a **subprocess** (so it can be killed, and a
  crash of the native server never takes the caller down), polls ``/health`` until the model is
  loaded and yields the base URL; it is a context manager.
* :func:`server_metrics` reads the server's ``/metrics`` counters: prompt tokens evaluated (the
  prompt cache's hits are not counted) and tokens generated, the two places a CPU teacher's time goes.
* :func:`shared_server` keeps one server per (model, slots, context, threads) for the whole
  process, stopped at exit: the ``llamacpp:<name|path.gguf>`` model spec uses it, so a teacher spec
  starts its own server on first use.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from masksearch.errors import MaskSearchError
from masksearch.utils.net import free_port

DEFAULT_PARALLEL = 4
DEFAULT_CTX_PER_SLOT = 4096


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def serve(model: str | os.PathLike, *, port: int = 8080, host: str = "127.0.0.1",
          n_parallel: int = DEFAULT_PARALLEL, n_ctx: int | None = None, n_threads: int | None = None,
          alias: str | None = None, poll: int = 0, stop: threading.Event | None = None) -> None:
    """Serve ``model`` (an embedded GGUF name or a ``.gguf`` path) until SIGINT/SIGTERM or ``stop``.

    ``n_ctx`` is the total context, shared by the ``n_parallel`` slots (default 4096 per slot).
    ``poll`` is llama.cpp's busy-wait level (0-100): the default 0 lets worker threads sleep, which
    on a machine shared with other jobs keeps them from spinning away each other's cores (with
    llama.cpp's default of 50, 2 threads on a loaded 2-core machine decoded 0.2 tokens/s).
    """
    from masksearch.models.gguf import resolve_gguf

    path = resolve_gguf(model)
    try:
        import xllamacpp
    except ImportError:
        raise MaskSearchError("llama.cpp is not installed: pip install --no-deps xllamacpp==2026.10.11549 "
                              "(make setup installs it)") from None
    n_parallel = max(1, int(n_parallel))
    threads = int(n_threads or default_threads())
    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    p.n_parallel = n_parallel
    p.n_ctx = int(n_ctx or DEFAULT_CTX_PER_SLOT * n_parallel)
    p.port = int(port)
    p.hostnames = [host]
    for cpu in (p.cpuparams, p.cpuparams_batch):
        cpu.n_threads = threads
        cpu.poll = poll  # 0: threads sleep instead of spinning between ops (a shared, busy machine)
    p.model_alias = {alias or Path(str(model)).name}
    p.endpoint_metrics = True  # /metrics: prompt tokens evaluated vs. generated (see server_metrics)
    stop = stop or threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        server = xllamacpp.Server(p)  # returns once the model is loaded and the port is listening
        print(f"[serve-model] {path} at http://{host}:{port}/v1 ({n_parallel} slots, n_ctx {p.n_ctx}, "
              f"{threads} threads); Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            pass
        # (the native server's threads are left to the process exit: ``masksearch serve-model``
        # leaves with os._exit, and waiting for a destructor mid-generation could hang)
        server.listening_address  # noqa: B018 - keep the object alive until here
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the server gets SIGTERM when the process that started it dies (no orphan servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass
    os.setpgrp()  # own process group: a Ctrl-C aimed at the parent's group is handled by stop()


class LlamaCppServer:
    """A llama.cpp server in a subprocess; ``with LlamaCppServer("qwen2.5-coder-0.5b") as url: ...``.

    ``url`` is ``http://HOST:PORT/v1`` (what an OpenAI client takes); :meth:`start` raises a
    :class:`MaskSearchError` with the server log's tail if it exits or is not ready within
    ``startup_timeout`` seconds.
    """

    def __init__(self, model: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 n_parallel: int = DEFAULT_PARALLEL, n_ctx: int | None = None, n_threads: int | None = None,
                 startup_timeout: float = 600.0, nice: int = 0) -> None:
        self.model = str(model)
        self.host = host
        self.port = port
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout = startup_timeout
        self.nice = nice
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines() if self.log_path else []
        except OSError:
            lines = []
        return "\n".join(lines[-n:])

    def start(self) -> "LlamaCppServer":
        if self.alive():
            return self
        from masksearch.models.gguf import resolve_gguf
        from masksearch.paths import home

        path = resolve_gguf(self.model)  # assemble / check here: errors are raised in this process
        self.port = self.port or free_port(self.host)
        logs = home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"llamacpp-{self.port}-", suffix=".log", dir=logs)
        self.log_path = Path(name)
        cmd = [sys.executable, "-m", "masksearch.cli", "serve-model", str(path), "--host", self.host,
               "--port", str(self.port), "--parallel", str(self.n_parallel), "--alias", Path(self.model).name]
        if self.n_ctx:
            cmd += ["--ctx-size", str(self.n_ctx)]
        if self.n_threads:
            cmd += ["--threads", str(self.n_threads)]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice)] + cmd
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise MaskSearchError(f"the llama.cpp server for {self.model} exited (code {code}) before it "
                                      f"was ready; its log ({self.log_path}) ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.root + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass  # not listening yet, or 503 while loading
            if time.monotonic() > deadline:
                self.stop()
                raise MaskSearchError(f"the llama.cpp server for {self.model} was not ready after "
                                      f"{self.startup_timeout:.0f} s; its log ends:\n{self.log_tail()}")
            time.sleep(0.25)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> str:
        return self.start().url

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LlamaCppServer({self.model!r}, url={self.url if self.port else None!r}, alive={self.alive()})"


METRICS = {  # llama.cpp's Prometheus counters -> our names
    "llamacpp:prompt_tokens_total": "prompt_tokens_evaluated",
    "llamacpp:prompt_tokens_cached_total": "prompt_tokens_cached",
    "llamacpp:prompt_seconds_total": "prompt_seconds",
    "llamacpp:tokens_predicted_total": "tokens_generated",
    "llamacpp:tokens_predicted_seconds_total": "generation_seconds",
    "llamacpp:n_decode_total": "decode_calls",
}


def server_metrics(url: str, timeout: float = 10.0) -> dict[str, float]:
    """The counters of a llama.cpp server's ``/metrics`` (``url`` is its root or its ``/v1``).

    ``prompt_tokens_evaluated`` counts only prompt tokens the model computed; the tokens served
    from the prompt cache are ``prompt_tokens_cached``. The ``*_seconds`` sums are per request and
    overlap when slots decode together. Raises :class:`MaskSearchError` when the server does not
    answer.
    """
    root = url[:-3] if url.rstrip("/").endswith("/v1") else url
    root = root.rstrip("/")
    try:
        with urllib.request.urlopen(root + "/metrics", timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise MaskSearchError(f"no /metrics from the llama.cpp server at {root}: {e}") from None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        if name in METRICS:
            try:
                out[METRICS[name]] = float(value)
            except ValueError:
                continue
    return out


_SHARED: dict[tuple, LlamaCppServer] = {}
_LOCK = threading.Lock()


def shared_server(model: str, *, n_parallel: int = DEFAULT_PARALLEL, n_ctx: int | None = None,
                  n_threads: int | None = None, **kw: Any) -> LlamaCppServer:
    """One started server per (model, slots, context, threads) in this process; stopped at exit.
    A server that died is started again (on the same port)."""
    key = (str(model), int(n_parallel), n_ctx, n_threads)
    with _LOCK:
        srv = _SHARED.get(key)
        if srv is None:
            srv = _SHARED[key] = LlamaCppServer(model, n_parallel=n_parallel, n_ctx=n_ctx,
                                                n_threads=n_threads, **kw)
        if not srv.alive():
            srv.start()
        return srv


@atexit.register
def _stop_shared() -> None:
    for srv in list(_SHARED.values()):
        try:
            srv.stop(5)
        except Exception:  # noqa: BLE001
            pass


def make_llamacpp_chat_model(model: str, **options: Any):
    """The ``llamacpp:<name|path>`` spec: a shared llama.cpp server for ``model`` (started on first
    use) and the OpenAI-compatible chat model on it. Server options: ``n_parallel``, ``n_ctx``,
    ``n_threads``, ``server_nice``; the rest go to the chat model (``max_tokens``, ``timeout``...)."""
    from masksearch.models.remote import make_openai_compatible

    srv_kw = {k: options.pop(k) for k in ("n_parallel", "n_ctx", "n_threads") if options.get(k) is not None}
    for k in ("n_parallel", "n_ctx", "n_threads"):
        options.pop(k, None)
    nice = options.pop("server_nice", 0)
    srv = shared_server(model, nice=nice, **srv_kw)
    from masksearch.models.remote import TIMEOUT_ENV

    # A local CPU server with every slot busy decodes slowly: a long reply must not look dead.
    # (--request-timeout / MASKSEARCH_REQUEST_TIMEOUT, when set, wins over this default.)
    if options.get("timeout") is None and not os.environ.get(TIMEOUT_ENV):
        options["timeout"] = 900.0
    options.setdefault("max_retries", 1)
    if "max_new_tokens" not in options:
        options.setdefault("max_tokens", 256)
    chat = make_openai_compatible("vllm", Path(model).name, base_url=srv.url, **options)
    return chat
