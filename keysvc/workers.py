"""Thread pools that keep blocking work off the event loop.

Database calls and argon2 each get their own bounded pool, so a burst of cold
look-ups queues behind itself and never behind, or in front of, the other.
argon2-cffi releases the GIL while hashing, so verification runs in parallel.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from keysvc import deadline
from keysvc.errors import Unavailable

P = ParamSpec("P")
T = TypeVar("T")


class Workers:
    def __init__(
        self,
        *,
        db_threads: int = 8,
        hashing_threads: int | None = None,
        db_timeout_seconds: float = 5.0,
    ) -> None:
        self._db = ThreadPoolExecutor(db_threads, thread_name_prefix="keysvc-db")
        self._hashing = ThreadPoolExecutor(
            hashing_threads or os.cpu_count() or 1, thread_name_prefix="keysvc-argon2"
        )
        self._db_timeout = db_timeout_seconds

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `fn` on the database pool; Unavailable if it takes longer than the timeout.

        A database that stops answering (a paused server) would otherwise hold the
        RPC forever. The thread may go on waiting; the store checks the deadline
        before committing, so what the caller was told stays true.
        """
        context = contextvars.copy_context()
        context.run(deadline.set_for_call, self._db_timeout)
        call = functools.partial(context.run, functools.partial(fn, *args, **kwargs))
        future = asyncio.get_running_loop().run_in_executor(self._db, call)
        try:
            return await asyncio.wait_for(future, self._db_timeout)
        except TimeoutError as err:
            raise Unavailable("database did not answer in time") from err

    async def hashing(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._hashing, call)

    def close(self) -> None:
        self._db.shutdown(wait=False, cancel_futures=True)
        self._hashing.shutdown(wait=True)
