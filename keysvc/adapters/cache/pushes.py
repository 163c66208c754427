"""Pushed changes between replicas over Redis pub/sub (keysvc.ports.pushes).

The replica that made a change publishes the changed key ids on `{namespace}changes`; every
replica subscribes and, on any message, asks its change-log follower for a read now. What a
message says is not trusted, nor needed: the read that follows learns the change from the
database. A forged message costs one read of the log (reads come at most every 10 ms however
many arrive); a lost one delays nothing beyond the follower's interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keysvc.ports.metrics import NO_METRICS, Metrics

log = logging.getLogger(__name__)

# A lost subscription is retried this often; warnings about it come at most this often.
_RESUBSCRIBE_SECONDS = 1.0
_REPORT_EVERY_SECONDS = 60.0


class RedisChangePushes:
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "keysvc:",
        timeout_seconds: float = 0.25,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._channel = f"{namespace}changes"
        self._publisher = Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        # No read timeout: a subscriber waits for messages as long as there are none; Redis's
        # own PING (health_check_interval) finds a dead connection.
        self._subscriber = Redis.from_url(
            url, socket_connect_timeout=timeout_seconds, health_check_interval=10
        )
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported_at = float("-inf")

    def announce(self, key_ids: Sequence[str]) -> None:
        task = asyncio.ensure_future(self._publish(list(key_ids)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, key_ids: list[str]) -> None:
        try:
            await self._publisher.publish(self._channel, " ".join(key_ids))
        except (RedisError, OSError) as err:
            self._metrics.backend_error("redis")
            self._report(f"could not push a change to the other replicas: {type(err).__name__}")
            return
        self._metrics.push_sent("replicas", len(key_ids))

    async def listen(self, on_change: Callable[[], None]) -> None:
        """Calls `on_change` for each message, until cancelled; resubscribes after failures."""
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._metrics.push_received("replicas")
                            on_change()
            except (RedisError, OSError) as err:
                self._metrics.backend_error("redis")
                self._report(
                    f"not receiving pushed changes ({type(err).__name__}):"
                    " changes reach this replica at its next read of the change log"
                )
            await asyncio.sleep(_RESUBSCRIBE_SECONDS)

    def _report(self, message: str) -> None:
        now = time.monotonic()
        if now - self._reported_at >= _REPORT_EVERY_SECONDS:
            self._reported_at = now
            log.warning(message)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._publisher.aclose()
        await self._subscriber.aclose()
