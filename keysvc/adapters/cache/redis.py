"""The production cache: key grants in one Redis shared by every replica.

Layout, under a configurable namespace (default `keysvc:`):

    {namespace}grant:{key_id}  the grant, authenticated (keysvc.adapters.cache.codec); a TTL
                               bounds memory only

Nothing in Redis is trusted: a value that does not authenticate is a miss, and an authentic
one decides a request only while the change log says it is current (keysvc.usecases.change_log).
So Redis may restart, be restored from a snapshot, fail over to a lagging replica, evict,
or be written by someone else, and still never get a revoked key allowed.

Every call goes through redis-py, with hiredis parsing the replies. A hot Authorize never gets
here (a replica's memory answers it, keysvc.adapters.cache.near), so Redis is read only for keys
this replica has not decided recently; a hand-written pipelined GET, three times cheaper per
call, saved nothing measurable there (docs/benchmark.md, "The Redis client").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keysvc.adapters.cache.codec import GrantCodec
from keysvc.core.errors import Unavailable
from keysvc.core.model import KeyGrant

log = logging.getLogger(__name__)

# Entries that do not authenticate are reported at most this often, with a count: whoever
# writes them must not be able to flood the log.
_REPORT_EVERY_SECONDS = 60.0


class RedisKeyCache:
    def __init__(
        self,
        url: str,
        codec: GrantCodec,
        *,
        namespace: str = "keysvc:",
        timeout_seconds: float = 0.25,
        ttl_seconds: float = 3600.0,
        revoked_ttl_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            # One immediate retry on a dropped connection (a restarted Redis leaves stale
            # pooled ones); none on a timeout, which would only double the wait.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            # redis-py's default, said out loud: a connection per call in flight, and a call
            # beyond them fails at once (Unavailable: decided as with Redis unreachable) rather
            # than queue. Its blocking pool starves the callers it makes wait.
            max_connections=100,
        )
        self._codec = codec
        self._namespace = namespace
        self._ttl_ms = int(ttl_seconds * 1000)
        self._revoked_ttl_ms = int(revoked_ttl_seconds * 1000)
        self._unauthentic = 0
        self._reported_at = float("-inf")

    def _grant_key(self, key_id: str) -> str:
        return f"{self._namespace}grant:{key_id}"

    async def _call(self, operation: Awaitable[Any]) -> Any:
        try:
            return await operation
        except (RedisError, OSError) as err:
            log.warning("cache unavailable: %s", type(err).__name__)
            raise Unavailable("cache unavailable") from err

    async def get(self, key_id: str) -> KeyGrant | None:
        name = self._grant_key(key_id)
        value = await self._call(self._redis.get(name))
        if value is None:
            return None
        grant = self._codec.decode(key_id, value)
        if grant is None:
            # Written by something other than this deployment's keysvc: a miss, replaced
            # by the next look-up's grant.
            self._report_unauthentic(key_id)
        return grant

    def _report_unauthentic(self, key_id: str) -> None:
        self._unauthentic += 1
        now = time.monotonic()
        if now - self._reported_at < _REPORT_EVERY_SECONDS:
            return
        log.warning(
            "%d cache entries did not authenticate (the latest for key id %s) and were"
            " ignored: is something else writing to keysvc's Redis namespace?",
            self._unauthentic,
            key_id,
        )
        self._unauthentic = 0
        self._reported_at = now

    async def put(self, grant: KeyGrant) -> None:
        ttl = self._revoked_ttl_ms if grant.revoked else self._ttl_ms
        value = self._codec.encode(grant)
        await self._call(self._redis.set(self._grant_key(grant.key_id), value, px=ttl))

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
