"""The ``masksearch`` command line: thin faces over importable functions.

Each module in :data:`COMMAND_MODULES` defines ``register(subparsers)`` which adds its
subcommand(s) with ``set_defaults(func=...)``; heavy imports happen inside the handlers so
``masksearch --help`` stays fast.  A subcommand handler returns an exit code (or None for 0).
Errors a user can cause are raised as :class:`UserError` and printed as one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMAND_MODULES = [
    "masksearch.cli.models",     # chat
    "masksearch.cli.retrieval",  # index, search, serve-retriever
    "masksearch.cli.ramp",       # ramp
    "masksearch.cli.teacher",    # cot, graph
    "masksearch.cli.train",      # train sft|grpo, distill
    "masksearch.cli.eval",       # eval, report
    "masksearch.cli.quickstart", # quickstart
    "masksearch.cli.pipeline",   # pipeline
]


from masksearch.errors import MaskSearchError
from masksearch.utils.scrub import scrub


class UserError(MaskSearchError):
    """An error the user can fix; printed without a traceback."""


def add_request_flags(p: argparse.ArgumentParser) -> None:
    """``--request-timeout`` / ``--retries`` for commands that call remote (OpenAI-compatible) models;
    :func:`main` applies them with :func:`masksearch.models.remote.set_remote_defaults`."""
    p.add_argument("--request-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for a remote model's reply (default 300: fits a busy local server)")
    p.add_argument("--retries", type=int, default=None, metavar="N",
                   help="retries of a failed remote model request, with backoff and Retry-After (default 2)")


def _apply_request_flags(args: argparse.Namespace) -> None:
    t, r = getattr(args, "request_timeout", None), getattr(args, "retries", None)
    if t is None and r is None:
        return
    from masksearch.models.remote import set_remote_defaults

    try:
        set_remote_defaults(timeout=t, retries=r)
    except ValueError as e:
        raise UserError(str(e)) from None


def add_executor_args(p: argparse.ArgumentParser, what: str = "questions") -> None:
    """``--executor local|ray``, ``--ray-address``, ``--ray-workers`` (the job runner's executor)."""
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help=f"local (this process) or ray: spread the {what} over Ray workers, each building its "
                        "model and retriever once from their specs (needs the [ray] extra)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join ('auto', 'ray://HOST:10001'); default: start a local Ray")
    p.add_argument("--ray-workers", type=int, default=None,
                   help="Ray workers (actors); default: one per CPU of the cluster")


def executor_kwargs(args: argparse.Namespace) -> dict:
    """The executor options of a parsed command line, as keyword arguments of the job functions."""
    from masksearch.utils.jobs import executor_options

    return executor_options(getattr(args, "executor", None), getattr(args, "ray_address", None),
                            getattr(args, "ray_workers", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masksearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # subcommand module not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    if rest and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "accepts_extra", False):
        args.extra = rest
    try:
        _apply_request_flags(args)
        rc = args.func(args)
    except MaskSearchError as e:
        print(f"masksearch {args.command}: error: {scrub(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished records are kept and a rerun resumes", file=sys.stderr)
        return 130
    return int(rc or 0)


def entry() -> None:  # pragma: no cover - the console script
    """``masksearch``: run :func:`main`, then leave without native teardown.

    After long model runs (a checkpoint evaluated for 15 minutes, a GRPO run), the interpreter's
    final teardown sometimes aborted with "terminate called without an active exception" (exit
    134) although every result had been written, which breaks ``set -e`` pipelines. The command
    has finished its work by then: streams and logs are flushed and the process exits with the
    command's own status."""
    import logging
    import os

    rc = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe
            pass
    os._exit(rc)


if __name__ == "__main__":  # pragma: no cover
    entry()
