"""The KeyCache contract, held by every cache: the in-process one, Redis, and a replica's memory
in front of Redis; what the Redis one does with values it did not write; and what the memory in
front of Redis keeps."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import redis

from keysvc.adapters.cache.codec import GrantCodec
from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.adapters.cache.near import NearKeyCache
from keysvc.adapters.cache.redis import RedisKeyCache
from keysvc.core.errors import Unavailable
from keysvc.core.model import KeyGrant, Mode
from keysvc.ports.cache import KeyCache
from tests.services import SharedRedis, free_port
from tests.unit.support import async_test

CODEC = GrantCodec(secrets.token_bytes(32))
OpenCache = Callable[[], AbstractAsyncContextManager[KeyCache]]


def _grant(
    key_id: str = "a1B2c3D4e5F6", *, revoked: bool = False, digest: bool = True, seq: int = 7
) -> KeyGrant:
    return KeyGrant(
        key_id=key_id,
        account_id="acct_1",
        mode=Mode.LIVE,
        scopes=frozenset({"links:read", "sessions:write"}),
        revoked=revoked,
        seq=seq,
        digest=hashlib.sha256(key_id.encode()).digest() if digest else None,
    )


@pytest.fixture(params=["memory", "redis", "memory in front of redis"])
def open_cache(request: pytest.FixtureRequest) -> Iterator[OpenCache]:
    """Opens a cache of the kind under test; Redis ones share a prefix of this test's own."""
    prefix = ""
    if request.param != "memory":
        shared: SharedRedis = request.getfixturevalue("shared_redis")
        prefix = f"{shared.prefix}cache-{secrets.token_hex(4)}:"

    @asynccontextmanager
    async def opened() -> AsyncIterator[KeyCache]:
        cache: KeyCache
        if request.param == "memory":
            cache = MemoryKeyCache()
        elif request.param == "redis":
            cache = RedisKeyCache(shared.url, CODEC, namespace=prefix)
        else:
            cache = NearKeyCache(
                MemoryKeyCache(), RedisKeyCache(shared.url, CODEC, namespace=prefix)
            )
        try:
            yield cache
        finally:
            await cache.close()

    yield opened


class TestGetAndPut:
    @async_test
    async def test_a_key_never_put_is_not_cached(self, open_cache: OpenCache) -> None:
        """get() of a key nothing was put for is None."""
        async with open_cache() as cache:
            assert await cache.get("a1B2c3D4e5F6") is None

    @async_test
    async def test_a_grant_comes_back_whole(self, open_cache: OpenCache) -> None:
        """Every field of a grant, its seq and digest included, comes back as it was put."""
        async with open_cache() as cache:
            for grant in (_grant(), _grant("revokedKey01", revoked=True, digest=False)):
                await cache.put(grant)
                assert await cache.get(grant.key_id) == grant

    @async_test
    async def test_a_put_replaces_what_the_key_had(self, open_cache: OpenCache) -> None:
        """The latest put wins: which grant may decide is for the change log to say."""
        async with open_cache() as cache:
            await cache.put(_grant(revoked=True, seq=9))
            await cache.put(_grant(seq=3))
            assert await cache.get("a1B2c3D4e5F6") == _grant(seq=3)


class TestRedis:
    @pytest.fixture
    def prefix(self, shared_redis: SharedRedis) -> str:
        return f"{shared_redis.prefix}redis-{secrets.token_hex(4)}:"

    @async_test
    async def test_entries_expire_as_a_bound(self, shared_redis: SharedRedis, prefix: str) -> None:
        """Active and revoked grants both carry a TTL, the revoked ones the longer one."""
        cache = RedisKeyCache(
            shared_redis.url, CODEC, namespace=prefix, ttl_seconds=60, revoked_ttl_seconds=600
        )
        try:
            await cache.put(_grant("activeKey001"))
            await cache.put(_grant("revokedKey01", revoked=True, digest=False))
        finally:
            await cache.close()
        client = redis.Redis.from_url(shared_redis.url)
        try:
            assert 0 < client.pttl(f"{prefix}grant:activeKey001") <= 60_000
            assert 60_000 < client.pttl(f"{prefix}grant:revokedKey01") <= 600_000
        finally:
            client.close()

    @pytest.mark.parametrize(
        "value",
        [
            # The layout before grants were authenticated, and a made-up grant in this one.
            b'A{"k":"a1B2c3D4e5F6","a":"acct_x","m":"live","s":["links:write"],"d":null}',
            b'3{"k":"a1B2c3D4e5F6","a":"acct_x","m":"live","s":["links:write"],"r":false,'
            b'"q":99,"d":null}' + b"0" * 32,
            GrantCodec(secrets.token_bytes(32)).encode(_grant()),
        ],
        ids=["old layout", "forged tag", "another deployment's"],
    )
    @async_test
    async def test_a_value_keysvc_did_not_write_is_a_miss(
        self,
        shared_redis: SharedRedis,
        prefix: str,
        value: bytes,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Whatever else sits under keysvc's prefix is no grant, and is reported in the log."""
        client = redis.Redis.from_url(shared_redis.url)
        client.set(f"{prefix}grant:a1B2c3D4e5F6", value)
        client.close()
        cache = RedisKeyCache(shared_redis.url, CODEC, namespace=prefix)
        try:
            with caplog.at_level(logging.WARNING, logger="keysvc.adapters.cache.redis"):
                assert await cache.get("a1B2c3D4e5F6") is None
        finally:
            await cache.close()
        assert "did not authenticate" in caplog.text

    @async_test
    async def test_reports_of_unauthentic_values_are_rate_limited(
        self, shared_redis: SharedRedis, prefix: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Whoever writes to the cache cannot flood the log: one report a minute, counted."""
        client = redis.Redis.from_url(shared_redis.url)
        for n in range(20):
            client.set(f"{prefix}grant:forgedKey{n:03d}", b"3{}" + b"0" * 32)
        client.close()
        cache = RedisKeyCache(shared_redis.url, CODEC, namespace=prefix)
        try:
            with caplog.at_level(logging.WARNING, logger="keysvc.adapters.cache.redis"):
                for n in range(20):
                    assert await cache.get(f"forgedKey{n:03d}") is None
        finally:
            await cache.close()
        assert caplog.text.count("did not authenticate") == 1


class TestRedisUnreachable:
    @async_test
    async def test_every_operation_raises_unavailable(self) -> None:
        """With nothing listening, each operation raises Unavailable instead of a Redis error."""
        cache = RedisKeyCache(f"redis://127.0.0.1:{free_port()}/0", CODEC, timeout_seconds=0.2)
        try:
            with pytest.raises(Unavailable):
                await cache.get("a1B2c3D4e5F6")
            with pytest.raises(Unavailable):
                await cache.put(_grant())
        finally:
            await cache.close()


class TestMemoryInFrontOfRedis:
    @pytest.fixture
    def prefix(self, shared_redis: SharedRedis) -> str:
        return f"{shared_redis.prefix}near-{secrets.token_hex(4)}:"

    @async_test
    async def test_a_grant_read_from_redis_is_kept_in_memory(
        self, shared_redis: SharedRedis, prefix: str
    ) -> None:
        """A grant another replica put in Redis is read once; later reads need no Redis."""
        other = RedisKeyCache(shared_redis.url, CODEC, namespace=prefix)
        try:
            await other.put(_grant())
        finally:
            await other.close()
        cache = NearKeyCache(
            MemoryKeyCache(), RedisKeyCache(shared_redis.url, CODEC, namespace=prefix)
        )
        try:
            assert await cache.get("a1B2c3D4e5F6") == _grant()
            client = redis.Redis.from_url(shared_redis.url)
            client.delete(f"{prefix}grant:a1B2c3D4e5F6")
            client.close()
            assert await cache.get("a1B2c3D4e5F6") == _grant()
        finally:
            await cache.close()

    @async_test
    async def test_a_put_reaches_redis_and_memory(
        self, shared_redis: SharedRedis, prefix: str
    ) -> None:
        """What this replica puts, the other replicas read from Redis."""
        cache = NearKeyCache(
            MemoryKeyCache(), RedisKeyCache(shared_redis.url, CODEC, namespace=prefix)
        )
        other = RedisKeyCache(shared_redis.url, CODEC, namespace=prefix)
        try:
            await cache.put(_grant(revoked=True, seq=9))
            assert await other.get("a1B2c3D4e5F6") == _grant(revoked=True, seq=9)
        finally:
            await cache.close()
            await other.close()

    @async_test
    async def test_a_put_redis_refuses_still_updates_memory(self) -> None:
        """With Redis unreachable, a put raises Unavailable, and this replica keeps what it put:
        its own view of a key it just revoked is never the older one."""
        far = RedisKeyCache(f"redis://127.0.0.1:{free_port()}/0", CODEC, timeout_seconds=0.2)
        near = MemoryKeyCache()
        await near.put(_grant(seq=3))
        cache = NearKeyCache(near, far)
        try:
            with pytest.raises(Unavailable):
                await cache.put(_grant(revoked=True, seq=9))
            assert await cache.get("a1B2c3D4e5F6") == _grant(revoked=True, seq=9)
        finally:
            await cache.close()
