"""What keysvc counts about itself, as the use cases and adapters report it.

keysvc.adapters.metrics implements it with prometheus-client (served with --metrics-listen);
NO_METRICS, the default everywhere, counts nothing, so that tests and the schedule explorer
need no registry.
"""

from __future__ import annotations

from typing import Literal, Protocol

# Where a grant was looked up: the replica's own memory (the whole cache of the embedded
# default), or the shared cache behind it (Redis).
CacheLevel = Literal["memory", "redis"]
# What failed: the database, or Redis.
Backend = Literal["database", "redis"]
# Which way a pushed change travelled: to other replicas (Redis pub/sub), or to Guards over
# their session streams.
PushChannel = Literal["replicas", "sessions"]


class Metrics(Protocol):
    def decision(self, reason: str, seconds: float, *, transport: str) -> None:
        """An Authorize decision (`reason` as keysvc.core.model.Reason names it, its value or
        its name; "unavailable" when no decision could be made), and how long it took;
        `transport` is "unary" or "session"."""

    def cache_lookup(self, level: CacheLevel, *, hit: bool) -> None:
        """A grant looked up at `level`, found or not."""

    def cold_lookup(self) -> None:
        """A key read from the database for Authorize."""

    def hashing_queued(self, delta: int) -> None:
        """argon2 jobs waiting for or running on the pool: +1 when one is submitted, -1 when
        it is done (called from the pool's thread then)."""

    def revocation_wait(self, seconds: float) -> None:
        """How long a narrowing change (RevokeKey, ...) waited out the lease before returning."""

    def push_sent(self, channel: PushChannel, count: int = 1) -> None:
        """Changes pushed on `channel`."""

    def push_received(self, channel: PushChannel, count: int = 1) -> None:
        """Changes received from `channel`."""

    def backend_error(self, backend: Backend) -> None:
        """A call to `backend` that failed or timed out."""


class NoMetrics:
    """Counts nothing."""

    def decision(self, reason: str, seconds: float, *, transport: str) -> None:
        pass

    def cache_lookup(self, level: CacheLevel, *, hit: bool) -> None:
        pass

    def cold_lookup(self) -> None:
        pass

    def hashing_queued(self, delta: int) -> None:
        pass

    def revocation_wait(self, seconds: float) -> None:
        pass

    def push_sent(self, channel: PushChannel, count: int = 1) -> None:
        pass

    def push_received(self, channel: PushChannel, count: int = 1) -> None:
        pass

    def backend_error(self, backend: Backend) -> None:
        pass


NO_METRICS: Metrics = NoMetrics()
