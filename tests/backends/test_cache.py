"""The KeyCache contract, held by both caches: the in-process one and Redis."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import redis

from keysvc.cache import KeyCache
from keysvc.cache.memory import MemoryKeyCache
from keysvc.cache.redis import RedisKeyCache
from keysvc.errors import Unavailable
from keysvc.model import KeyGrant, Mode
from tests.services import SharedRedis, free_port
from tests.unit.support import async_test


def _grant(key_id: str = "a1B2c3D4e5F6", *, revoked: bool = False, digest: bool = True) -> KeyGrant:
    return KeyGrant(
        key_id=key_id,
        account_id="acct_1",
        mode=Mode.LIVE,
        scopes=frozenset({"links:read", "sessions:write"}),
        revoked=revoked,
        digest=hashlib.sha256(key_id.encode()).digest() if digest else None,
    )


@pytest.fixture(params=["memory", "redis"])
def open_cache(request: pytest.FixtureRequest) -> Iterator[Callable[[], AsyncIterator[KeyCache]]]:
    """Opens a cache of the kind under test; Redis ones share a prefix of this test's own."""
    prefix = ""
    if request.param == "redis":
        shared: SharedRedis = request.getfixturevalue("shared_redis")
        prefix = f"{shared.prefix}cache-{secrets.token_hex(4)}:"

    @asynccontextmanager
    async def opened() -> AsyncIterator[KeyCache]:
        cache: KeyCache
        if request.param == "memory":
            cache = MemoryKeyCache()
        else:
            cache = RedisKeyCache(shared.url, prefix=prefix)
        try:
            yield cache
        finally:
            await cache.close()

    yield opened


async def _fill(cache: KeyCache, grant: KeyGrant) -> KeyGrant | None:
    return await cache.fill(grant, await cache.epoch())


class TestGetAndFill:
    @async_test
    async def test_a_key_never_filled_is_not_cached(self, open_cache) -> None:
        """get() of a key nobody filled is None."""
        async with open_cache() as cache:
            assert await cache.get("zzzzzzzzzzzz") is None

    @async_test
    async def test_a_filled_grant_comes_back_whole(self, open_cache) -> None:
        """A filled grant is returned by fill() and then by get(), digest and scopes included."""
        async with open_cache() as cache:
            grant = _grant()
            assert await _fill(cache, grant) == grant
            assert await cache.get(grant.key_id) == grant


class TestRevocationOutranksFills:
    @async_test
    async def test_an_active_fill_after_a_revoke_returns_the_marker(self, open_cache) -> None:
        """A stale active grant filled after the revocation is refused, and the marker returned."""
        async with open_cache() as cache:
            await cache.revoke(_grant(revoked=True, digest=False))
            returned = await _fill(cache, _grant())
            assert returned is not None and returned.revoked
            cached = await cache.get(_grant().key_id)
            assert cached is not None and cached.revoked

    @async_test
    async def test_a_revoke_keeps_the_cached_digest(self, open_cache) -> None:
        """Revoking a cached key keeps its digest, so the revoked key is refused without argon2."""
        async with open_cache() as cache:
            active = _grant()
            await _fill(cache, active)
            await cache.revoke(_grant(revoked=True, digest=False))
            cached = await cache.get(active.key_id)
            assert cached is not None and cached.revoked and cached.digest == active.digest

    @async_test
    async def test_a_verified_revoked_grant_replaces_a_bare_marker(self, open_cache) -> None:
        """A revoked grant with its digest may replace a marker that had none."""
        async with open_cache() as cache:
            await cache.revoke(_grant(revoked=True, digest=False))
            verified = _grant(revoked=True)
            assert await _fill(cache, verified) == verified

    @async_test
    async def test_a_fill_under_an_old_epoch_caches_nothing(self, open_cache) -> None:
        """A fill carrying an epoch the cache no longer has is refused (None) and caches nothing."""
        async with open_cache() as cache:
            assert await cache.fill(_grant(), "not-the-current-epoch") is None
            assert await cache.get(_grant().key_id) is None


class TestRedisLayout:
    @pytest.fixture
    def shared(self, shared_redis: SharedRedis) -> SharedRedis:
        return shared_redis

    @async_test
    async def test_entries_expire_as_a_backstop(self, shared: SharedRedis) -> None:
        """Active grants and revocation markers both carry a TTL, the markers the longer one."""
        prefix = f"{shared.prefix}ttl-{secrets.token_hex(4)}:"
        cache = RedisKeyCache(shared.url, prefix=prefix, ttl_seconds=60, revoked_ttl_seconds=600)
        try:
            await _fill(cache, _grant("activeKey001"))
            await cache.revoke(_grant("revokedKey01", revoked=True, digest=False))
        finally:
            await cache.close()
        client = redis.Redis.from_url(shared.url)
        try:
            assert 0 < client.pttl(f"{prefix}grant:activeKey001") <= 60_000
            assert 60_000 < client.pttl(f"{prefix}grant:revokedKey01") <= 600_000
        finally:
            client.close()

    @async_test
    async def test_losing_the_contents_changes_the_epoch(self, shared: SharedRedis) -> None:
        """When Redis loses its contents (a restart), its epoch changes: old fills are refused."""
        prefix = f"{shared.prefix}epoch-{secrets.token_hex(4)}:"
        cache = RedisKeyCache(shared.url, prefix=prefix)
        client = redis.Redis.from_url(shared.url)
        try:
            before = await cache.epoch()
            client.delete(*client.keys(f"{prefix}*"))
            assert await cache.epoch() != before
            assert await cache.fill(_grant(), before) is None
            assert await cache.get(_grant().key_id) is None
        finally:
            await cache.close()
            client.close()


class TestRedisUnreachable:
    @async_test
    async def test_every_operation_raises_unavailable(self) -> None:
        """With nothing listening, each operation raises Unavailable instead of a Redis error."""
        cache = RedisKeyCache(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2)
        try:
            with pytest.raises(Unavailable):
                await cache.get("a1B2c3D4e5F6")
            with pytest.raises(Unavailable):
                await cache.epoch()
            with pytest.raises(Unavailable):
                await cache.fill(_grant(), "epoch")
            with pytest.raises(Unavailable):
                await cache.revoke(_grant(revoked=True))
        finally:
            await cache.close()
