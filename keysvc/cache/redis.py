"""The production cache: key grants in one Redis shared by every replica.

Layout, under a configurable prefix (default `keysvc:`):

    {prefix}grant:{key_id}  "A" or "R" (active / revoked) + JSON of the grant; TTL as a backstop
    {prefix}epoch           random id of this Redis's contents, made anew when they are lost

The grant holds the SHA-256 digest of the raw key, never anything reversible to it.

Why the epoch: a cold look-up reads the store, then fills the cache. If a
revocation lands in between, its marker makes the fill a no-op (the fill script
checks and writes atomically). But if Redis restarts without persistence in
between, the marker is gone; the epoch then differs from the one read before
the store read, the fill is refused, and the look-up reads the store again.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keysvc.cache.pipelined import PipelinedGet
from keysvc.errors import Unavailable
from keysvc.model import KeyGrant, Mode

log = logging.getLogger(__name__)

_ACTIVE = "A"
_REVOKED = "R"

# KEYS: grant, epoch. ARGV: epoch read before the store read, encoded grant, TTL in ms.
# Refuses (nil) when the epoch changed; keeps a revoked entry against an active fill
# and returns what is cached afterwards.
_FILL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return false
end
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 1) == 'R' and string.sub(ARGV[2], 1, 1) == 'A' then
  return current
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return ARGV[2]
"""

# KEYS: epoch. ARGV: a fresh random id, taken as the epoch if there is none yet.
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
"""

# KEYS: grant. ARGV: encoded revoked grant, TTL in ms. Keeps the digest of a cached
# grant, so that the revoked key is refused without argon2.
_REVOKE = """
local current = redis.call('GET', KEYS[1])
if current and string.find(current, '"d":null', 1, true) == nil then
  redis.call('SET', KEYS[1], 'R' .. string.sub(current, 2), 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


def encode(grant: KeyGrant) -> str:
    body = {
        "k": grant.key_id,
        "a": grant.account_id,
        "m": grant.mode.value,
        "s": sorted(grant.scopes),
        "d": grant.digest.hex() if grant.digest is not None else None,
    }
    return (_REVOKED if grant.revoked else _ACTIVE) + json.dumps(body, separators=(",", ":"))


def decode(value: str) -> KeyGrant:
    body = json.loads(value[1:])
    return KeyGrant(
        key_id=body["k"],
        account_id=body["a"],
        mode=Mode(body["m"]),
        scopes=frozenset(body["s"]),
        revoked=value[0] == _REVOKED,
        digest=bytes.fromhex(body["d"]) if body["d"] is not None else None,
    )


class RedisKeyCache:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keysvc:",
        timeout_seconds: float = 0.25,
        ttl_seconds: float = 3600.0,
        revoked_ttl_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            # One immediate retry on a dropped connection (a restarted Redis leaves stale
            # pooled ones); none on a timeout, which would only double the wait.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._prefix = prefix
        self._epoch_key = f"{prefix}epoch"
        self._ttl_ms = int(ttl_seconds * 1000)
        self._revoked_ttl_ms = int(revoked_ttl_seconds * 1000)
        # The hot path's GET skips redis-py where it can (see keysvc.cache.pipelined).
        self._lean = (
            PipelinedGet(url, timeout_seconds=timeout_seconds)
            if PipelinedGet.supports(url)
            else None
        )
        self._fill = self._redis.register_script(_FILL)
        self._epoch = self._redis.register_script(_EPOCH)
        self._revoke = self._redis.register_script(_REVOKE)

    def _grant_key(self, key_id: str) -> str:
        return f"{self._prefix}grant:{key_id}"

    async def _call(self, operation: Awaitable[Any]) -> Any:
        try:
            return await operation
        except (RedisError, OSError) as err:
            log.warning("cache unavailable: %s", type(err).__name__)
            raise Unavailable("cache unavailable") from err

    async def get(self, key_id: str) -> KeyGrant | None:
        if self._lean is not None:
            raw = await self._call(self._lean.get(self._grant_key(key_id)))
            return None if raw is None else decode(raw.decode())
        value = await self._call(self._redis.get(self._grant_key(key_id)))
        return None if value is None else decode(value)

    async def epoch(self) -> str:
        """The id of the cache's current contents; read it before reading the store."""
        value = await self._call(self._epoch(keys=[self._epoch_key], args=[secrets.token_hex(16)]))
        return cast(str, value)

    async def fill(self, grant: KeyGrant, epoch: str) -> KeyGrant | None:
        keys = [self._grant_key(grant.key_id), self._epoch_key]
        value = await self._call(self._fill(keys=keys, args=[epoch, encode(grant), self._ttl_ms]))
        return None if value is None else decode(value)

    async def revoke(self, grant: KeyGrant) -> None:
        keys = [self._grant_key(grant.key_id)]
        await self._call(self._revoke(keys=keys, args=[encode(grant), self._revoked_ttl_ms]))

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
        await self._redis.aclose()
