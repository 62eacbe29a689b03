"""``masksearch index``, ``masksearch search`` and ``masksearch serve-retriever``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from masksearch.retrieval.kinds import INDEX_KINDS


def _non_negative_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (never split) or a positive number of words, got {v}")
    return v


def add_search_cache_args(parser: argparse.ArgumentParser) -> None:
    """``--search-cache PATH`` / ``--search-cache-mode`` (eval, cot): see masksearch.retrieval.cache."""
    parser.add_argument("--search-cache", default=None, metavar="PATH",
                        help="persistent search cache (one SQLite file) in front of the retriever; "
                             "record with read-write, replay with read-only")
    parser.add_argument("--search-cache-mode", default="read-write", choices=("read-write", "read-only", "off"),
                        help="read-write (default), read-only (replay: a query not in the cache is an "
                             "error, the retriever is not opened) or off")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="index a corpus for search (BM25 or dense)",
        description="Read a corpus (JSONL {id,title,text}, FlashRAG JSONL, DPR TSV, WikiExtractor folder, "
                    "folder of .txt pages, or hf:NAME[:CONFIG][@SPLIT]), chunk long texts and write an "
                    "index folder atomically (a killed build leaves nothing that loads).")
    p.add_argument("--corpus", required=True, help="corpus path (or hf:NAME for a Hugging Face dataset)")
    p.add_argument("--kind", default="bm25", choices=list(INDEX_KINDS))
    p.add_argument("--out", required=True, help="index folder to write (replaced if it holds an index)")
    p.add_argument("--format", default="auto", dest="fmt",
                   choices=["auto", "jsonl", "flashrag", "tsv", "wikiextractor", "textdir", "hf"])
    p.add_argument("--chunk-words", type=_non_negative_int, default=100,
                   help="split texts longer than 2x this into ~this many words (0: never split)")
    p.add_argument("--shard", default=None, help="i/n: index records i, i+n, ... only (0-based)")
    p.add_argument("--no-stem", action="store_true", help="bm25: no English stemming")
    p.add_argument("--no-stopwords", action="store_true", help="bm25: keep stop words")
    p.add_argument("--language", default="english", help="bm25: stemmer / stop-word language")
    p.add_argument("--batch-size", type=int, default=256, help="chroma: passages encoded per batch")
    p.add_argument("--no-progress", action="store_true")
    from masksearch.cli import add_executor_args

    add_executor_args(p, "parsing and chunking of the corpus (JSONL/FlashRAG; this process writes the index)")
    p.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search with any retriever spec and print the documents",
                       description="Run one or more queries against a retriever spec: bm25:DIR, chroma:DIR, "
                                   "hybrid:bm25:DIR+chroma:DIR, ddg, http://HOST:PORT, module.path:attr.")
    s.add_argument("query", nargs="+", help="query text (several queries run as one batch)")
    s.add_argument("--retriever", required=True, help="retriever spec")
    s.add_argument("-k", "--k", type=int, default=3, dest="k")
    s.add_argument("--max-tokens", type=int, default=512, help="budget of the formatted block per query")
    s.add_argument("--json", action="store_true", help="print JSON documents instead of the formatted block")
    s.set_defaults(func=cmd_search)

    v = sub.add_parser("serve-retriever", help="serve a retriever over HTTP (POST /retrieve, GET /health)",
                       description="FastAPI + uvicorn server in Search-R1's /retrieve shape; "
                                   "query it with the retriever spec http://HOST:PORT.")
    v.add_argument("--retriever", required=True, help="retriever spec to serve")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("-k", "--k", type=int, default=3, dest="k",
                   help="the default topk (a request without topk, or with topk null or 0, gets it)")
    v.add_argument("--max-queries", type=int, default=2560,
                   help="refuse larger batches (HTTP 413); the default takes Search-R1's 512 x 5")
    v.add_argument("--max-topk", type=int, default=100, help="refuse a larger topk (HTTP 422)")
    v.add_argument("--max-hits", type=int, default=None,
                   help="refuse a request whose queries x topk is larger (HTTP 413; default 20480)")
    v.add_argument("--max-body-mb", type=float, default=8.0, help="refuse a larger request body (HTTP 413)")
    v.add_argument("--max-in-flight", type=int, default=4,
                   help="batches searched and encoded at once; more wait (bounds the memory of big answers)")
    v.add_argument("--idle-timeout", type=float, default=30.0,
                   help="close a connection that sends nothing, or stalls mid-request, this many seconds")
    v.set_defaults(func=cmd_serve)


def _user_error(msg: str):
    from masksearch.cli import UserError

    return UserError(msg)


def cmd_index(args: argparse.Namespace) -> int:
    from masksearch.cli import executor_kwargs
    from masksearch.retrieval import build_index

    if not args.corpus.startswith("hf:") and not os.path.exists(args.corpus):
        raise _user_error(f"corpus not found: {args.corpus}")
    opts = {}
    if args.kind == "bm25":
        opts = dict(stem=not args.no_stem, stopwords=not args.no_stopwords, language=args.language)
    else:
        opts = dict(batch_size=args.batch_size)
    try:
        m = build_index(args.corpus, kind=args.kind, out=args.out, chunk_words=args.chunk_words,
                        shard=args.shard, progress=not args.no_progress, fmt=args.fmt, **opts,
                        **executor_kwargs(args))
    except ValueError as e:  # bad --shard, bad analyzer language
        raise _user_error(str(e)) from None
    print(f"indexed {m['count']} passages into {m['path']} ({args.kind}) in {m['build_s']:.1f}s; "
          f"{m['read_stats']}")
    print(f"search it: masksearch search --retriever {args.kind}:{m['path']} \"your query\"")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from masksearch.retrieval import make_retriever
    from masksearch.retrieval.tool import format_documents, search_with_retry

    r = make_retriever(args.retriever, k=args.k)
    results = search_with_retry(r, list(args.query), k=args.k, retries=1)
    for q, docs in zip(args.query, results):
        if args.json:
            print(json.dumps({"query": q, "documents": [{**d.metadata, "text": d.page_content} for d in docs]},
                             ensure_ascii=False))
        else:
            if len(args.query) > 1:
                print(f"## {q}")
            print(format_documents(docs, max_tokens=args.max_tokens))
    sys.stdout.flush()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from masksearch.retrieval import make_retriever
    from masksearch.retrieval.server import serve

    r = make_retriever(args.retriever, k=args.k)
    print(f"serving {args.retriever} on http://{args.host}:{args.port} (POST /retrieve, GET /health); "
          f"clients: make_retriever('http://{args.host}:{args.port}')", file=sys.stderr)
    opts = dict(default_topk=args.k, max_topk=args.max_topk, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                idle_timeout_s=args.idle_timeout, max_in_flight=args.max_in_flight)
    if args.max_hits:
        opts["max_hits"] = args.max_hits
    try:
        serve(r, host=args.host, port=args.port, max_queries=args.max_queries, **opts)
    except ValueError as e:
        raise _user_error(str(e)) from None
    return 0
