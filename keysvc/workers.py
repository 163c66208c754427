"""Thread pools that keep blocking work off the event loop.

Database calls and argon2 each get their own bounded pool, so a burst of cold
look-ups queues behind itself and never behind, or in front of, the other.
argon2-cffi releases the GIL while hashing, so verification runs in parallel.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Workers:
    def __init__(self, *, db_threads: int = 8, hashing_threads: int | None = None) -> None:
        self._db = ThreadPoolExecutor(db_threads, thread_name_prefix="keysvc-db")
        self._hashing = ThreadPoolExecutor(
            hashing_threads or os.cpu_count() or 1, thread_name_prefix="keysvc-argon2"
        )

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._db, lambda: fn(*args, **kwargs)
        )

    async def hashing(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._hashing, lambda: fn(*args, **kwargs)
        )

    def close(self) -> None:
        self._db.shutdown(wait=True)
        self._hashing.shutdown(wait=True)
