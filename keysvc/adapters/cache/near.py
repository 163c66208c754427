"""A replica's own memory in front of the shared cache: a key this replica has decided before is
decided again without a round trip to Redis.

It is as safe as Redis itself, and for the same reason: no grant decides a request unless the
change log says nothing changed its key since the grant's position (keysvc.usecases.change_log),
wherever the grant was kept. A grant held here after its key was revoked, narrowed or otherwise
changed is stale by that rule the moment this replica reads the change, and at the latest one
lease after RevokeKey committed; the Authorizer then reads the key from the store and puts the
fresh grant here and in Redis. docs/revocation.md states the argument.

Reads fill this memory from Redis; writes go to both, this memory first, so that a write Redis
refuses (Unavailable, raised to the caller as before) still leaves this replica's own view
current. Without Redis (the embedded default) this memory is the whole cache.

It reports (keysvc.ports.metrics) each look-up in this memory and each one that reaches Redis,
hit or miss, and each Redis call that raised Unavailable (a backend error, not a miss).
"""

from __future__ import annotations

from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.core.errors import Unavailable
from keysvc.core.model import KeyGrant
from keysvc.ports.cache import KeyCache
from keysvc.ports.metrics import NO_METRICS, Metrics


class NearKeyCache:
    """`near` in front of `far` (None: `near` alone)."""

    def __init__(
        self, near: MemoryKeyCache, far: KeyCache | None, *, metrics: Metrics = NO_METRICS
    ) -> None:
        self._near = near
        self._far = far
        self._metrics = metrics

    async def get(self, key_id: str) -> KeyGrant | None:
        grant = await self._near.get(key_id)
        self._metrics.cache_lookup("memory", hit=grant is not None)
        if grant is not None or self._far is None:
            return grant
        try:
            grant = await self._far.get(key_id)
        except Unavailable:
            self._metrics.backend_error("redis")
            raise
        self._metrics.cache_lookup("redis", hit=grant is not None)
        if grant is not None:
            await self._near.put(grant)
        return grant

    async def put(self, grant: KeyGrant) -> None:
        await self._near.put(grant)
        if self._far is None:
            return
        try:
            await self._far.put(grant)
        except Unavailable:
            self._metrics.backend_error("redis")
            raise

    async def close(self) -> None:
        await self._near.close()
        if self._far is not None:
            await self._far.close()
