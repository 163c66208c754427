"""MemoryKeyCache: the in-process LRU of verified keys, and how revocation outranks fills."""

from __future__ import annotations

import hashlib

from keysvc.cache.memory import MemoryKeyCache
from keysvc.model import KeyGrant, Mode

from .support import FakeMonotonic, async_test


async def fill(cache: MemoryKeyCache, grant: KeyGrant) -> KeyGrant | None:
    return await cache.fill(grant, await cache.epoch())


def _grant(key_id: str = "a1B2c3D4e5F6", *, revoked: bool = False) -> KeyGrant:
    return KeyGrant(
        key_id=key_id,
        account_id="acct_1",
        mode=Mode.LIVE,
        scopes=frozenset({"links:read"}),
        revoked=revoked,
        digest=None if revoked else hashlib.sha256(key_id.encode()).digest(),
    )


class TestGetAndFill:
    @async_test
    async def test_an_unknown_key_is_not_cached(self) -> None:
        """get() of a key never filled is None."""
        assert await MemoryKeyCache().get("a1B2c3D4e5F6") is None

    @async_test
    async def test_fill_then_get_returns_the_grant(self) -> None:
        """A filled grant is what get() returns, and fill() says it is now cached."""
        cache = MemoryKeyCache()
        grant = _grant()
        assert await fill(cache, grant) == grant
        assert await cache.get(grant.key_id) == grant

    @async_test
    async def test_a_later_fill_replaces_an_active_grant(self) -> None:
        """Filling an active key again caches the newer grant."""
        cache = MemoryKeyCache()
        await fill(cache, _grant())
        newer = KeyGrant(
            "a1B2c3D4e5F6", "acct_1", Mode.LIVE, frozenset({"events:read"}), False, b"x"
        )
        assert await fill(cache, newer) == newer
        assert await cache.get("a1B2c3D4e5F6") == newer

    @async_test
    async def test_close_empties_the_cache(self) -> None:
        """After close() nothing is cached."""
        cache = MemoryKeyCache()
        await fill(cache, _grant())
        await cache.close()
        assert await cache.get("a1B2c3D4e5F6") is None


class TestRevocation:
    @async_test
    async def test_revoke_caches_the_marker(self) -> None:
        """After revoke() the key is cached as revoked."""
        cache = MemoryKeyCache()
        await fill(cache, _grant())
        await cache.revoke(_grant(revoked=True))
        cached = await cache.get("a1B2c3D4e5F6")
        assert cached is not None and cached.revoked

    @async_test
    async def test_a_stale_active_fill_after_revoke_returns_the_marker(self) -> None:
        """An active grant read before a revocation cannot replace the revocation marker."""
        cache = MemoryKeyCache()
        marker = _grant(revoked=True)
        await cache.revoke(marker)
        assert await fill(cache, _grant()) == marker
        assert await cache.get("a1B2c3D4e5F6") == marker

    @async_test
    async def test_a_revoked_fill_replaces_the_marker(self) -> None:
        """A revoked grant verified from the store may take the marker's place; it stays revoked."""
        cache = MemoryKeyCache()
        await cache.revoke(_grant(revoked=True))
        verified = KeyGrant("a1B2c3D4e5F6", "acct_1", Mode.LIVE, frozenset(), True, b"digest")
        assert await fill(cache, verified) == verified
        cached = await cache.get("a1B2c3D4e5F6")
        assert cached is not None and cached.revoked


class TestExpiry:
    @async_test
    async def test_an_active_grant_expires_after_the_ttl(self) -> None:
        """An active grant is served until its TTL runs out, then the key is looked up afresh."""
        clock = FakeMonotonic()
        cache = MemoryKeyCache(ttl_seconds=60, clock=clock)
        await fill(cache, _grant())
        clock.advance(59.999)
        assert await cache.get("a1B2c3D4e5F6") is not None
        clock.advance(0.001)
        assert await cache.get("a1B2c3D4e5F6") is None

    @async_test
    async def test_a_revocation_marker_never_expires(self) -> None:
        """Revocation is permanent: the marker outlives any TTL."""
        clock = FakeMonotonic()
        cache = MemoryKeyCache(ttl_seconds=60, clock=clock)
        await cache.revoke(_grant(revoked=True))
        clock.advance(365 * 24 * 3600)
        cached = await cache.get("a1B2c3D4e5F6")
        assert cached is not None and cached.revoked
        assert (await fill(cache, _grant())).revoked

    @async_test
    async def test_a_fill_restarts_the_ttl(self) -> None:
        """Filling a key again gives it a whole new TTL."""
        clock = FakeMonotonic()
        cache = MemoryKeyCache(ttl_seconds=60, clock=clock)
        await fill(cache, _grant())
        clock.advance(50)
        await fill(cache, _grant())
        clock.advance(50)
        assert await cache.get("a1B2c3D4e5F6") is not None


class TestBound:
    @async_test
    async def test_holds_at_most_max_entries(self) -> None:
        """Past max_entries, the oldest entry is evicted."""
        cache = MemoryKeyCache(max_entries=2)
        for key_id in ("key_a", "key_b", "key_c"):
            await fill(cache, _grant(key_id))
        assert await cache.get("key_a") is None
        assert await cache.get("key_b") is not None
        assert await cache.get("key_c") is not None

    @async_test
    async def test_evicts_the_least_recently_used(self) -> None:
        """A key read recently survives; the one unread longest is evicted."""
        cache = MemoryKeyCache(max_entries=2)
        await fill(cache, _grant("key_a"))
        await fill(cache, _grant("key_b"))
        await cache.get("key_a")
        await fill(cache, _grant("key_c"))
        assert await cache.get("key_b") is None
        assert await cache.get("key_a") is not None
        assert await cache.get("key_c") is not None


class TestEpoch:
    @async_test
    async def test_a_fill_under_another_epoch_caches_nothing(self) -> None:
        """A fill carrying an epoch the cache no longer has is refused and caches nothing."""
        cache = MemoryKeyCache()
        assert await cache.fill(_grant(), "an-older-epoch") is None
        assert await cache.get(_grant().key_id) is None

    @async_test
    async def test_the_epoch_is_stable_for_the_life_of_the_cache(self) -> None:
        """Two reads of the epoch of one cache agree; another cache has another epoch."""
        cache = MemoryKeyCache()
        assert await cache.epoch() == await cache.epoch()
        assert await cache.epoch() != await MemoryKeyCache().epoch()


class TestRevokeKeepsDigest:
    @async_test
    async def test_the_marker_keeps_the_digest_of_the_cached_grant(self) -> None:
        """Revoking a cached key keeps its digest, so the revoked key is refused without argon2."""
        cache = MemoryKeyCache()
        active = _grant()
        await fill(cache, active)
        await cache.revoke(_grant(revoked=True))
        cached = await cache.get(active.key_id)
        assert cached is not None and cached.revoked
        assert cached.digest == active.digest
