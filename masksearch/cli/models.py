"""``masksearch chat``: ask any model spec one question and print the reply."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="ask a model (any spec) one question and print its reply")
    p.add_argument("question", help="the question (one user message)")
    p.add_argument("--model", default="smollm2",
                   help="model spec: smollm2 | hf:<id|path> | openai:<m> | dashscope:<m> | vllm:<m>@<url>")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--system", default=None, help="an optional system message")
    from masksearch.cli import add_request_flags

    add_request_flags(p)
    p.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    from langchain_core.messages import HumanMessage, SystemMessage

    from masksearch.models import make_chat_model

    model = make_chat_model(args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    messages = ([SystemMessage(args.system)] if args.system else []) + [HumanMessage(args.question)]
    reply = model.invoke(messages)
    print(reply.content if isinstance(reply.content, str) else reply.content)
    return 0
