"""Authorize: decides whether a request carrying an API key may proceed.

The hot path (a key seen before) is parse, checksum, cache look-up, constant-time
digest compare and scope check: no SQL, no argon2. The cold path reads the key
from the store and verifies it with argon2 on the hashing pool, once per key and
secret however many requests ask at the same time, then fills the cache.

Hostile input stays cheap: a malformed key costs no store or cache access; a key id
found missing is remembered for a while; a wrong secret is remembered, and a key id
drawing many wrong secrets is throttled (keysvc.throttle).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta

from keysvc import hashing, keys, scopes
from keysvc.cache import KeyCache
from keysvc.errors import Unavailable
from keysvc.last_used import LastUsedRecorder
from keysvc.model import Decision, KeyGrant, Mode, Reason
from keysvc.service import Clock, utc_now
from keysvc.store import KeyStore, StoredKey
from keysvc.throttle import ExpiringSet, FailureThrottle, Throttled
from keysvc.workers import Workers

log = logging.getLogger(__name__)

_Flight = tuple[str, bytes]
_FILL_ATTEMPTS = 3


def _grant(stored: StoredKey, digest: bytes) -> KeyGrant:
    return KeyGrant(
        key_id=stored.key.id,
        account_id=stored.key.account_id,
        mode=stored.key.mode,
        scopes=frozenset(stored.key.scopes),
        revoked=stored.key.revoked_at is not None,
        digest=digest,
    )


class Authorizer:
    def __init__(
        self,
        store: KeyStore,
        cache: KeyCache,
        verifier: hashing.Verifier,
        workers: Workers,
        recorder: LastUsedRecorder,
        *,
        clock: Clock = utc_now,
        rejection_ttl_seconds: float = 60.0,
        rejection_max_entries: int = 100_000,
        unknown_key_ttl_seconds: float = 60.0,
        max_failures_per_key_id: int = 10,
        failure_window_seconds: float = 60.0,
        throttle_max_key_ids: int = 100_000,
        throttle_delay_seconds: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._cache = cache
        self._verifier = verifier
        self._workers = workers
        self._recorder = recorder
        self._clock = clock
        self._throttle_delay = throttle_delay_seconds
        self._sleep = sleep
        self._inflight: dict[_Flight, asyncio.Future[KeyGrant | None]] = {}
        # Key id and digest of secrets that failed verification, so that repeating
        # one costs no argon2 until it expires.
        self._rejected: ExpiringSet[_Flight] = ExpiringSet(
            ttl_seconds=rejection_ttl_seconds,
            max_entries=rejection_max_entries,
            monotonic=monotonic,
        )
        # Key ids the store does not have, so that a flood of one costs one store read per
        # TTL. Ids are drawn at random (71 bits): none is asked for before it exists.
        self._unknown: ExpiringSet[str] = ExpiringSet(
            ttl_seconds=unknown_key_ttl_seconds,
            max_entries=rejection_max_entries,
            monotonic=monotonic,
        )
        self._throttle = FailureThrottle(
            max_failures=max_failures_per_key_id,
            window_seconds=failure_window_seconds,
            max_key_ids=throttle_max_key_ids,
            monotonic=monotonic,
        )

    async def authorize(
        self,
        api_key: str,
        required_scopes: Iterable[str] = (),
        required_mode: Mode | None = None,
    ) -> Decision:
        required = scopes.required(required_scopes)
        value = keys.strip_bearer(api_key)
        if not value:
            return Decision(Reason.MISSING)
        parsed = keys.parse(value)
        if parsed is None:
            return Decision(Reason.MALFORMED)
        if parsed.key_id in self._unknown:
            return Decision(Reason.NOT_FOUND)
        digest = hashing.digest(parsed.raw)
        try:
            grant = await self._cache.get(parsed.key_id)
        except Unavailable:
            # Decide from the store instead; slower, never a guess.
            grant = None
        if grant is not None and grant.digest is not None:
            if not hmac.compare_digest(grant.digest, digest):
                # The cached digest was proven by argon2: any other secret is wrong.
                return await self._wrong_secret(parsed.key_id, digest)
            # Should the cache let the key go, guesses at it will not lock it out here.
            self._throttle.prove(parsed.key_id, digest)
            return self._decide(grant, required, required_mode)
        grant = await self._verify_cold(parsed, digest)
        if grant is None:
            await self._slow_down_guesses(parsed.key_id, digest)
            return Decision(Reason.NOT_FOUND)
        return self._decide(grant, required, required_mode)

    async def _wrong_secret(self, key_id: str, digest: bytes) -> Decision:
        """A wrong secret for a cached key: counted against the key id like a failed argon2."""
        if self._throttle.admit(key_id, digest):
            throttled = self._throttle.failed(key_id)
            if throttled is not None:
                self._warn(throttled)
        await self._slow_down_guesses(key_id, digest)
        return Decision(Reason.NOT_FOUND)

    async def _slow_down_guesses(self, key_id: str, digest: bytes) -> None:
        # Past the limit, refusals come late: the answer is the same, but a guesser waiting
        # on them stops taking the replica's time from everyone else's requests. The real
        # secret is never delayed (its digest is proven), nor is a key id without guesses.
        if self._throttle.refuses(key_id, digest):
            await self._sleep(self._throttle_delay)

    def _decide(
        self, grant: KeyGrant, required: frozenset[str], required_mode: Mode | None
    ) -> Decision:
        if grant.revoked:
            return Decision(Reason.REVOKED, grant)
        # The key authenticated, whatever the scopes say about this request.
        self._recorder.record(grant.key_id, self._clock())
        if required_mode is not None and grant.mode is not required_mode:
            return Decision(Reason.WRONG_MODE, grant)
        missing = required - grant.scopes
        if missing:
            return Decision(Reason.INSUFFICIENT_SCOPE, grant, tuple(sorted(missing)))
        return Decision(Reason.ALLOWED, grant)

    async def _verify_cold(self, parsed: keys.ParsedKey, digest: bytes) -> KeyGrant | None:
        flight = (parsed.key_id, digest)
        if flight in self._rejected or self._throttle.refuses(parsed.key_id, digest):
            return None
        future = self._inflight.get(flight)
        if future is None:
            future = asyncio.ensure_future(self._look_up(parsed, digest))
            self._inflight[flight] = future
            future.add_done_callback(lambda _: self._inflight.pop(flight, None))
        # Shielded: a caller that gives up does not cancel the others' verification.
        return await asyncio.shield(future)

    async def _look_up(self, parsed: keys.ParsedKey, digest: bytes) -> KeyGrant | None:
        # The epoch is read before the store: see KeyCache.fill.
        epoch = await self._epoch()
        stored = await self._workers.db(self._store.find, parsed.key_id)
        if stored is None:
            self._unknown.add(parsed.key_id)
            return None
        if not self._throttle.admit(parsed.key_id, digest):
            # Not remembered as rejected: it was refused unchecked, and may be the real key.
            return None
        # A key of the other mode is not the key presented: a wrong secret, minus argon2.
        valid = stored.key.mode is parsed.mode and await self._workers.hashing(
            self._verifier.verify, stored.verifier, parsed.raw
        )
        if not valid:
            self._rejected.add((parsed.key_id, digest))
            throttled = self._throttle.failed(parsed.key_id)
            if throttled is not None:
                self._warn(throttled)
            return None
        self._throttle.succeeded(parsed.key_id, digest)
        if self._verifier.needs_rehash(stored.verifier):
            await self._rehash(stored, parsed.raw)
        for _attempt in range(_FILL_ATTEMPTS):
            grant = _grant(stored, digest)
            await self.before_fill(grant)
            if epoch is None:
                return grant
            try:
                # If a revocation landed since the store was read, the cache holds its
                # marker and hands it back: the decision is made on that.
                filled = await self._cache.fill(grant, epoch)
            except Unavailable:
                return grant
            if filled is not None:
                return filled
            # The cache lost its contents (and maybe a revocation marker) since the
            # store was read: read it again under the new epoch.
            epoch = await self._epoch()
            refreshed = await self._workers.db(self._store.find, parsed.key_id)
            if refreshed is None:
                return None
            stored = refreshed
        # Decided on a store read newer than the request, and cached nowhere.
        return _grant(stored, digest)

    async def _epoch(self) -> str | None:
        try:
            return await self._cache.epoch()
        except Unavailable:
            return None

    async def before_fill(self, grant: KeyGrant) -> None:
        """Runs between the store read and the cache fill; tests pause here to race a revoke."""

    async def _rehash(self, stored: StoredKey, raw_key: str) -> None:
        # Best effort: the key is valid either way, and the next cold look-up retries.
        new = await self._workers.hashing(self._verifier.hash, raw_key)
        try:
            await self._workers.db(
                self._store.replace_verifier, stored.key.id, stored.verifier, new
            )
        except Unavailable:
            return
        log.info("key %s verifier rehashed with current argon2 parameters", stored.key.id)

    def _warn(self, throttled: Throttled) -> None:
        # Once per key id and window, never per attempt, and never with the secret.
        until = self._clock() + timedelta(seconds=throttled.remaining_seconds)
        log.warning(
            "key id %s: %d wrong secrets in the last %.0fs;"
            " refusing further unverified secrets until %s",
            throttled.key_id,
            throttled.failures,
            throttled.window_seconds,
            until.strftime("%Y-%m-%d %H:%M:%SZ"),
        )
