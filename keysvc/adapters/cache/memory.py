"""The embedded default cache: a bounded in-process LRU of key grants, for a single replica."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from keysvc.core.model import KeyGrant


class MemoryKeyCache:
    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        ttl_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, KeyGrant]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock

    async def get(self, key_id: str) -> KeyGrant | None:
        entry = self._entries.get(key_id)
        if entry is None:
            return None
        expires, grant = entry
        # Revoked grants never expire: they answer REVOKED without a store read.
        if not grant.revoked and expires <= self._clock():
            del self._entries[key_id]
            return None
        self._entries.move_to_end(key_id)
        return grant

    async def put(self, grant: KeyGrant) -> None:
        self._entries[grant.key_id] = (self._clock() + self._ttl, grant)
        self._entries.move_to_end(grant.key_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()
