"""MemoryKeyCache: the in-process LRU of verified keys."""

from __future__ import annotations

import hashlib

from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.core.model import KeyGrant, Mode

from .support import FakeMonotonic, async_test


def _grant(key_id: str = "a1B2c3D4e5F6", *, revoked: bool = False, seq: int = 1) -> KeyGrant:
    return KeyGrant(
        key_id=key_id,
        account_id="acct_1",
        mode=Mode.LIVE,
        scopes=frozenset({"links:read"}),
        revoked=revoked,
        seq=seq,
        digest=hashlib.sha256(key_id.encode()).digest(),
    )


class TestGetAndPut:
    @async_test
    async def test_an_unknown_key_is_not_cached(self) -> None:
        """get() of a key never put is None."""
        assert await MemoryKeyCache().get("a1B2c3D4e5F6") is None

    @async_test
    async def test_put_then_get_returns_the_grant(self) -> None:
        """A grant put is what get() returns."""
        cache = MemoryKeyCache()
        grant = _grant()
        await cache.put(grant)
        assert await cache.get(grant.key_id) == grant

    @async_test
    async def test_a_later_put_replaces_the_grant(self) -> None:
        """Putting a key again caches the newer grant, whatever the older one said: which grant
        may decide is the change log's business, not the cache's."""
        cache = MemoryKeyCache()
        await cache.put(_grant(revoked=True, seq=2))
        newer = _grant(seq=1)
        await cache.put(newer)
        assert await cache.get("a1B2c3D4e5F6") == newer

    @async_test
    async def test_close_empties_the_cache(self) -> None:
        """After close() nothing is cached."""
        cache = MemoryKeyCache()
        await cache.put(_grant())
        await cache.close()
        assert await cache.get("a1B2c3D4e5F6") is None


class TestExpiry:
    @async_test
    async def test_an_active_grant_expires_after_the_ttl(self) -> None:
        """An active grant is served until its TTL runs out, then the key is looked up afresh."""
        clock = FakeMonotonic()
        cache = MemoryKeyCache(ttl_seconds=60, clock=clock)
        await cache.put(_grant())
        clock.advance(59.999)
        assert await cache.get("a1B2c3D4e5F6") is not None
        clock.advance(0.001)
        assert await cache.get("a1B2c3D4e5F6") is None

    @async_test
    async def test_a_revoked_grant_never_expires(self) -> None:
        """Revocation is permanent: a revoked grant outlives any TTL."""
        clock = FakeMonotonic()
        cache = MemoryKeyCache(ttl_seconds=60, clock=clock)
        await cache.put(_grant(revoked=True))
        clock.advance(365 * 24 * 3600)
        cached = await cache.get("a1B2c3D4e5F6")
        assert cached is not None and cached.revoked

    @async_test
    async def test_a_put_restarts_the_ttl(self) -> None:
        """Putting a key again gives it a whole new TTL."""
        clock = FakeMonotonic()
        cache = MemoryKeyCache(ttl_seconds=60, clock=clock)
        await cache.put(_grant())
        clock.advance(50)
        await cache.put(_grant())
        clock.advance(50)
        assert await cache.get("a1B2c3D4e5F6") is not None


class TestBound:
    @async_test
    async def test_holds_at_most_max_entries(self) -> None:
        """Past max_entries, the oldest entry is evicted."""
        cache = MemoryKeyCache(max_entries=2)
        for key_id in ("key_a", "key_b", "key_c"):
            await cache.put(_grant(key_id))
        assert await cache.get("key_a") is None
        assert await cache.get("key_b") is not None
        assert await cache.get("key_c") is not None

    @async_test
    async def test_evicts_the_least_recently_used(self) -> None:
        """A key read recently survives; the one unread longest is evicted."""
        cache = MemoryKeyCache(max_entries=2)
        await cache.put(_grant("key_a"))
        await cache.put(_grant("key_b"))
        await cache.get("key_a")
        await cache.put(_grant("key_c"))
        assert await cache.get("key_b") is None
        assert await cache.get("key_a") is not None
        assert await cache.get("key_c") is not None
