"""Running async code from sync callers."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code.

    Plain ``asyncio.run`` when no loop is running; when one is (Jupyter, an async caller), the
    coroutine runs on a fresh loop in a worker thread, so the sync API works in notebooks too.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


__all__: list[Any] = ["run_sync"]
