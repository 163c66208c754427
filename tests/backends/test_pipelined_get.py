"""The hot path's pipelined GET: every reply to its own request, and failures that heal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from keysvc.adapters.cache.pipelined import PipelinedGet
from tests.services import PrivateRedis, free_port
from tests.unit.support import async_test

TIMEOUT = 0.3


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def _store(url: str, values: dict[str, bytes]) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.mset(values)
    finally:
        client.close()


class TestPipelining:
    @async_test
    async def test_concurrent_gets_each_get_their_own_value(
        self, private_redis: PrivateRedis
    ) -> None:
        """500 GETs in flight at once on one connection each receive their own key's value."""
        values = {f"k{n}": f"value-{n}".encode() * (n % 7 + 1) for n in range(500)}
        _store(private_redis.url, values)
        lean = PipelinedGet(private_redis.url, timeout_seconds=TIMEOUT)
        try:
            replies = await asyncio.gather(*(lean.get(key) for key in values))
        finally:
            await lean.close()
        assert dict(zip(values, replies, strict=True)) == values

    @async_test
    async def test_a_missing_key_is_none_and_a_large_value_whole(
        self, private_redis: PrivateRedis
    ) -> None:
        """A key Redis lacks reads as None; a value larger than one socket read arrives whole."""
        large = bytes(range(256)) * 2048
        _store(private_redis.url, {"large": large})
        lean = PipelinedGet(private_redis.url, timeout_seconds=TIMEOUT)
        try:
            assert await lean.get("missing") is None
            assert await lean.get("large") == large
        finally:
            await lean.close()


class TestConnectionSetUp:
    @async_test
    async def test_password_and_database_from_the_url(self, tmp_path: Path) -> None:
        """A URL's password authenticates the connection and its path selects the database."""
        server = PrivateRedis(tmp_path, password="s3cret")
        server.start()
        try:
            url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
            _store(url, {"in-three": b"yes"})
            lean = PipelinedGet(url, timeout_seconds=TIMEOUT)
            wrong = PipelinedGet(
                f"redis://:nope@127.0.0.1:{server.port}/3", timeout_seconds=TIMEOUT
            )
            try:
                assert await lean.get("in-three") == b"yes"
                with pytest.raises(ConnectionError):
                    await wrong.get("in-three")
            finally:
                await lean.close()
                await wrong.close()
        finally:
            server.kill()

    def test_only_plain_redis_urls_are_taken(self) -> None:
        """TLS, sockets and URLs with options stay with redis-py."""
        assert PipelinedGet.supports("redis://127.0.0.1:6379/0")
        assert not PipelinedGet.supports("rediss://cache.internal:6379/0")
        assert not PipelinedGet.supports("unix:///run/redis.sock")
        assert not PipelinedGet.supports("redis://127.0.0.1:6379/0?protocol=3")


class TestFailures:
    @async_test
    async def test_nothing_listening_fails_at_once(self) -> None:
        """With nothing on the port, a GET fails with a ConnectionError, not a hang."""
        lean = PipelinedGet(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=TIMEOUT)
        with pytest.raises(ConnectionError):
            await lean.get("k")

    @async_test
    async def test_a_paused_redis_times_out_then_heals(self, private_redis: PrivateRedis) -> None:
        """GETs to a paused Redis fail with TimeoutError in bounded time; after it resumes,
        the next GET reconnects and succeeds."""
        _store(private_redis.url, {"k": b"v"})
        lean = PipelinedGet(private_redis.url, timeout_seconds=TIMEOUT)
        try:
            assert await lean.get("k") == b"v"
            private_redis.pause()
            started = time.monotonic()
            try:
                results = await asyncio.gather(
                    *(lean.get("k") for _ in range(10)), return_exceptions=True
                )
            finally:
                private_redis.resume()
            assert all(isinstance(r, TimeoutError) for r in results), results
            assert time.monotonic() - started < 5 * TIMEOUT
            assert await lean.get("k") == b"v"
        finally:
            await lean.close()

    @async_test
    async def test_a_restarted_redis_is_found_again(self, private_redis: PrivateRedis) -> None:
        """After Redis is killed, a GET fails; once it is back, the next GET succeeds."""
        lean = PipelinedGet(private_redis.url, timeout_seconds=TIMEOUT)
        try:
            assert await lean.get("k") is None
            private_redis.kill()
            with pytest.raises(ConnectionError):
                await lean.get("k")
            private_redis.start()
            _store(private_redis.url, {"k": b"after"})
            assert await lean.get("k") == b"after"
        finally:
            await lean.close()
