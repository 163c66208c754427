"""The embedded default cache: a bounded in-process LRU of key grants, for a single replica."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from keysvc.model import KeyGrant


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
        # The contents live and die with this object: one epoch for its lifetime.
        self._epoch = secrets.token_hex(8)

    async def get(self, key_id: str) -> KeyGrant | None:
        return self._get(key_id)

    def _get(self, key_id: str) -> KeyGrant | None:
        entry = self._entries.get(key_id)
        if entry is None:
            return None
        expires, grant = entry
        # Revocation markers never expire: revocation is permanent.
        if not grant.revoked and expires <= self._clock():
            del self._entries[key_id]
            return None
        self._entries.move_to_end(key_id)
        return grant

    async def epoch(self) -> str:
        return self._epoch

    async def fill(self, grant: KeyGrant, epoch: str) -> KeyGrant | None:
        # No await between the checks and the write: atomic on the event loop.
        if epoch != self._epoch:
            return None
        current = self._get(grant.key_id)
        if current is not None and current.revoked and not grant.revoked:
            return current
        self._put(grant)
        return grant

    async def revoke(self, grant: KeyGrant) -> None:
        current = self._get(grant.key_id)
        if current is not None and current.digest is not None:
            # Keeping the digest lets the revoked key be refused without argon2.
            grant = dataclasses.replace(grant, digest=current.digest)
        self._put(grant)

    def _put(self, grant: KeyGrant) -> None:
        self._entries[grant.key_id] = (self._clock() + self._ttl, grant)
        self._entries.move_to_end(grant.key_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()
