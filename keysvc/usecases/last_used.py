"""Records when keys were last used without writing SQL on every Authorize.

Uses are kept in memory (latest time per key) and flushed to the store in one
batch every interval and on shutdown. A failed flush keeps its batch for the
next one, so nothing recorded is lost while the database is briefly away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

log = logging.getLogger(__name__)

Flush = Callable[[Mapping[str, datetime]], Awaitable[None]]


class LastUsedRecorder:
    def __init__(self, flush: Flush, *, interval_seconds: float = 1.0) -> None:
        self._flush = flush
        self._interval = interval_seconds
        self._pending: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, key_id: str, at: datetime) -> None:
        previous = self._pending.get(key_id)
        if previous is None or at > previous:
            self._pending[key_id] = at

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return
            try:
                await self._flush(batch)
            except BaseException:
                # Put the batch back, also when cancelled mid-write by close(): writing
                # it twice is harmless, since last_used_at only moves forward.
                # A newer use recorded meanwhile wins.
                for key_id, at in batch.items():
                    self.record(key_id, at)
                raise

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="last-used-flusher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as err:
                log.warning("last-used flush failed, will retry: %s", err)

    async def close(self) -> None:
        """Stops the periodic flush and writes what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
