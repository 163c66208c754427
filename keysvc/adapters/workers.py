"""Thread pools that keep blocking work off the event loop.

Each kind of work has a bounded pool of its own, so that one kind queues behind itself
and never behind, or in front of, another: the admin RPCs' database calls; Authorize's
reads of keys; the change log's reads (one thread: a flood of look-ups can never delay
what revocation depends on); and argon2. argon2-cffi releases the GIL while hashing, so
verifications run in parallel.

What they report (keysvc.ports.metrics): every read of a key for Authorize (a cold look-up),
every database call that failed or timed out, and how many argon2 jobs the pool holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from keysvc.adapters import deadline
from keysvc.core.errors import Unavailable
from keysvc.ports.metrics import NO_METRICS, Metrics

P = ParamSpec("P")
T = TypeVar("T")


class ThreadWorkers:
    def __init__(
        self,
        *,
        db_threads: int = 4,
        lookup_threads: int = 8,
        hashing_threads: int | None = None,
        db_timeout_seconds: float = 5.0,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._db = ThreadPoolExecutor(db_threads, thread_name_prefix="keysvc-db")
        self._lookup = ThreadPoolExecutor(lookup_threads, thread_name_prefix="keysvc-lookup")
        self._feed = ThreadPoolExecutor(1, thread_name_prefix="keysvc-feed")
        self._hashing = ThreadPoolExecutor(
            hashing_threads or os.cpu_count() or 1, thread_name_prefix="keysvc-argon2"
        )
        self._db_timeout = db_timeout_seconds
        self._metrics = metrics
        # Every thread may hold a database connection at once.
        self.database_connections = db_threads + lookup_threads + 1

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `fn` on the admin RPCs' database pool; Unavailable if it takes longer than
        the timeout.

        A database that stops answering (a paused server) would otherwise hold the
        RPC forever. The thread may go on waiting; the store checks the deadline
        before committing, so what the caller was told stays true.
        """
        return await self._database(self._db, functools.partial(fn, *args, **kwargs))

    async def lookup(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As `db`, on the pool of Authorize's reads."""
        self._metrics.cold_lookup()
        return await self._database(self._lookup, functools.partial(fn, *args, **kwargs))

    async def feed(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As `db`, on the change log's own thread."""
        return await self._database(self._feed, functools.partial(fn, *args, **kwargs))

    async def _database(self, pool: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        context = contextvars.copy_context()
        context.run(deadline.set_for_call, self._db_timeout)
        future = asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(context.run, call)
        )
        try:
            async with asyncio.timeout(self._db_timeout):
                return await future
        except TimeoutError as err:
            self._metrics.backend_error("database")
            raise Unavailable("database did not answer in time") from err
        except Unavailable:
            self._metrics.backend_error("database")
            raise

    async def hashing(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self._metrics.hashing_queued(1)
        try:
            job = self._hashing.submit(fn, *args, **kwargs)
        except BaseException:
            self._metrics.hashing_queued(-1)
            raise
        # Counted out when the job is done, or cancelled before it started: not when its
        # caller gives up on it, since the pool's thread goes on hashing.
        job.add_done_callback(self._hashed)
        return await asyncio.wrap_future(job)

    def _hashed(self, job: Future[Any]) -> None:
        self._metrics.hashing_queued(-1)

    def close(self) -> None:
        for pool in (self._db, self._lookup, self._feed):
            pool.shutdown(wait=False, cancel_futures=True)
        self._hashing.shutdown(wait=True)
