"""``masksearch chat`` (ask any model spec one question) and ``masksearch serve-model`` (llama.cpp)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="ask a model (any spec) one question and print its reply")
    p.add_argument("question", help="the question (one user message)")
    p.add_argument("--model", default="smollm2",
                   help="model spec: smollm2 | hf:<id|path> | llamacpp:<qwen2.5-coder-0.5b|...|path.gguf> | openai:<m> | "
                        "dashscope:<m> | vllm:<m>@<url>")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--system", default=None, help="an optional system message")
    from masksearch.cli import add_request_flags

    add_request_flags(p)
    p.set_defaults(func=_chat)

    s = sub.add_parser("serve-model", help="serve a GGUF (embedded Qwen spec or any path) with llama.cpp, OpenAI-compatible",
                       description="Run a llama.cpp server (xllamacpp) on an embedded GGUF "
                                   "(qwen2.5-coder-0.5b, qwen2.5-coder-1.5b) or any .gguf file. Ask it with "
                                   "--model vllm:NAME@http://127.0.0.1:PORT/v1. Ctrl-C stops it.")
    s.add_argument("model", help="qwen2.5-coder-0.5b | qwen2.5-coder-1.5b | PATH.gguf")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--parallel", type=int, default=4, help="parallel slots (requests decoded together)")
    s.add_argument("--ctx-size", type=int, default=None, help="total context shared by the slots (default 4096 per slot)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    s.add_argument("--poll", type=int, default=0, help="llama.cpp busy-wait level 0-100 (0: sleep; best on a shared machine)")
    s.add_argument("--alias", default=None, help="model name reported by /v1/models (default: the spec's name)")
    s.set_defaults(func=_serve_model)


def _chat(args: argparse.Namespace) -> int:
    from langchain_core.messages import HumanMessage, SystemMessage

    from masksearch.models import make_chat_model

    model = make_chat_model(args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    messages = ([SystemMessage(args.system)] if args.system else []) + [HumanMessage(args.question)]
    reply = model.invoke(messages)
    print(reply.content if isinstance(reply.content, str) else reply.content)
    return 0


def _serve_model(args: argparse.Namespace) -> int:
    from masksearch.models.llamacpp import serve

    serve(args.model, port=args.port, host=args.host, n_parallel=args.parallel, n_ctx=args.ctx_size,
          n_threads=args.threads, alias=args.alias, poll=args.poll)
    return 0
