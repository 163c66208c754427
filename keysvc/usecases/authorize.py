"""Authorize: decides whether a request carrying an API key may proceed.

The hot path (a key seen before) is parse, checksum, cache look-up, constant-time digest
compare, a check that the grant is current, and the scope check: no SQL, no argon2. Every
other decision is made on the key as read from the store after the request arrived
(docs/revocation.md): reads of one key are shared only among requests that arrived before
the read started, and argon2 runs once per key and secret however many requests ask.

Hostile input stays cheap: a malformed key costs no store or cache access; a key id that
does not exist costs no store read (the change log knows every key id); a wrong secret is
remembered, and a key id drawing many wrong secrets is throttled (keysvc.usecases.throttle).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from keysvc.core import hashing, keys, networks, scopes
from keysvc.core.clock import Clock, utc_now
from keysvc.core.errors import Unavailable
from keysvc.core.model import Decision, KeyGrant, Mode, Reason
from keysvc.ports.cache import KeyCache
from keysvc.ports.store import KeyStore, StoredKey
from keysvc.ports.workers import Workers
from keysvc.usecases.change_log import ChangeLog
from keysvc.usecases.last_used import LastUsedRecorder
from keysvc.usecases.throttle import ExpiringSet, FailureThrottle, Throttled

log = logging.getLogger(__name__)

_Flight = tuple[str, bytes]


@dataclass
class _Reads:
    """One key's store reads: the one running, and the one that starts after it."""

    running: asyncio.Future[StoredKey | None] | None = None
    started: float = 0.0
    following: asyncio.Future[StoredKey | None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Authorizer:
    def __init__(
        self,
        store: KeyStore,
        cache: KeyCache,
        verifier: hashing.Verifier,
        workers: Workers,
        recorder: LastUsedRecorder,
        change_log: ChangeLog,
        *,
        clock: Clock = utc_now,
        rejection_ttl_seconds: float = 60.0,
        rejection_max_entries: int = 100_000,
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
        self._log = change_log
        self._clock = clock
        self._throttle_delay = throttle_delay_seconds
        self._sleep = sleep
        self._reads: dict[str, _Reads] = {}
        self._verifying: dict[_Flight, asyncio.Future[bool]] = {}
        # Key id and digest of secrets that failed verification, so that repeating
        # one costs no argon2 until it expires.
        self._rejected: ExpiringSet[_Flight] = ExpiringSet(
            ttl_seconds=rejection_ttl_seconds,
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
        client_ip: str = "",
    ) -> Decision:
        arrived = self._log.now()
        required = scopes.required(required_scopes)
        value = keys.strip_bearer(api_key)
        if not value:
            return Decision(Reason.MISSING)
        parsed = keys.parse(value)
        if parsed is None:
            return Decision(Reason.MALFORMED)
        digest = hashing.digest(parsed.raw_key)
        try:
            grant = await self._cache.get(parsed.key_id)
        except Unavailable:
            # Decide from the store instead; slower, never a guess.
            grant = None
        proven = False
        if grant is not None and grant.digest is not None:
            if not hmac.compare_digest(grant.digest, digest):
                # The cached digest was proven by argon2: any other secret is wrong.
                return await self._wrong_secret(parsed.key_id, digest)
            # Should the cache let the key go, guesses at it will not lock it out here.
            self._throttle.prove(parsed.key_id, digest)
            # A revocation is final; anything else decides only while it is current (an
            # expiry too: an update may have moved it since the grant was read).
            if grant.revoked or self._log.current(grant):
                return self._decide(grant, required, required_mode, client_ip)
            proven = True
        fresh = await self._read_and_verify(
            parsed.key_id, digest, arrived, parsed=None if proven else parsed
        )
        if fresh is None:
            await self._slow_down_guesses(parsed.key_id, digest)
            return Decision(Reason.NOT_FOUND)
        return self._decide(fresh, required, required_mode, client_ip)

    async def renew(self, key_id: str, digest: bytes) -> Decision:
        """The decision Authorize would give, with no required scope, on the key whose id is
        `key_id` and whose SHA-256 is `digest`, both proven by an earlier decision of this
        process (a session's Authorize): a new lease for a near cache, with no key sent.
        The caller vouches for the proof; nothing else may call this."""
        arrived = self._log.now()
        try:
            grant = await self._cache.get(key_id)
        except Unavailable:
            grant = None
        if (
            grant is not None
            and grant.digest is not None
            and hmac.compare_digest(grant.digest, digest)
            and (grant.revoked or self._log.current(grant))
        ):
            return self._decide(grant, frozenset(), None, "")
        fresh = await self._read_and_verify(key_id, digest, arrived, parsed=None)
        if fresh is None:
            return Decision(Reason.NOT_FOUND)
        return self._decide(fresh, frozenset(), None, "")

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
        self,
        grant: KeyGrant,
        required: frozenset[str],
        required_mode: Mode | None,
        client_ip: str,
    ) -> Decision:
        if grant.revoked:
            return Decision(Reason.REVOKED, grant)
        now = self._clock()
        if grant.expire_time is not None and grant.expire_time <= now:
            return Decision(Reason.EXPIRED, grant)
        # The key authenticated, whatever the address, mode and scopes say about this request.
        self._recorder.record(grant.key_id, now)
        lease = self._log.lease_remaining(grant)
        if grant.allowed_ips and not networks.allows(grant.allowed_ips, client_ip):
            return Decision(Reason.IP_NOT_ALLOWED, grant, lease_seconds=lease)
        if required_mode is not None and grant.mode is not required_mode:
            return Decision(Reason.WRONG_MODE, grant, lease_seconds=lease)
        missing = required - grant.scopes
        if missing:
            return Decision(
                Reason.INSUFFICIENT_SCOPE, grant, tuple(sorted(missing)), lease_seconds=lease
            )
        return Decision(Reason.ALLOWED, grant, lease_seconds=lease)

    async def _read_and_verify(
        self, key_id: str, digest: bytes, arrived: float, *, parsed: keys.ParsedKey | None
    ) -> KeyGrant | None:
        """The key's grant as stored now, if the secret is right; None if it is not (or
        the key does not exist). Caches what it read. `parsed` is the presented key, to
        verify; None when its digest is already proven against this key."""
        proven = parsed is None or self._throttle.is_proven(key_id, digest)
        if not proven and (
            (key_id, digest) in self._rejected or self._throttle.refuses(key_id, digest)
        ):
            return None
        if not await self._exists(key_id, arrived):
            return None
        stored = await self._read(key_id, arrived)
        if stored is None:
            return None
        if parsed is not None and not proven and not await self._verified(parsed, digest, stored):
            return None
        grant = KeyGrant.of(stored.key, seq=stored.seq, digest=digest)
        await self.before_fill(grant)
        # Without the cache, decided all the same: the grant came from the store.
        with contextlib.suppress(Unavailable):
            await self._cache.put(grant)
        return grant

    async def _exists(self, key_id: str, arrived: float) -> bool:
        """Whether the key id exists, by the change log as read after `arrived`: a key id
        nobody issued costs no store read."""
        if self._log.knows(key_id) or self._log.read_since(arrived):
            return self._log.knows(key_id)
        await self._log.read_after(arrived)
        return self._log.knows(key_id)

    async def _read(self, key_id: str, arrived: float) -> StoredKey | None:
        """The key as read by a store read that started after `arrived`.

        Requests for one key share reads, but a request never joins a read that started
        before it arrived: that read may predate a revocation the request must see. It
        waits for the next one instead, which starts when the running one ends.
        """
        reads = self._reads.setdefault(key_id, _Reads())
        if reads.running is not None and reads.started >= arrived:
            future = reads.running
        else:
            if reads.following is None:
                reads.following = asyncio.get_running_loop().create_future()
            future = reads.following
            if reads.running is None:
                self._start_read(key_id, reads)
        # Shielded: a caller that gives up does not cancel the others' read.
        return await asyncio.shield(future)

    def _start_read(self, key_id: str, reads: _Reads) -> None:
        future, reads.following = reads.following, None
        assert future is not None
        reads.running, reads.started = future, self._log.now()

        async def read() -> None:
            try:
                future.set_result(await self._workers.lookup(self._store.find, key_id))
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as err:  # handed to every waiter
                future.set_exception(err)
                # Retrieved here, so that a read nobody waits for any more logs nothing.
                future.exception()
            finally:
                reads.running = None
                if reads.following is not None:
                    self._start_read(key_id, reads)
                else:
                    self._reads.pop(key_id, None)

        task = asyncio.ensure_future(read())
        reads.tasks.add(task)
        task.add_done_callback(reads.tasks.discard)

    async def _verified(self, parsed: keys.ParsedKey, digest: bytes, stored: StoredKey) -> bool:
        """Whether the presented key matches the stored verifier: argon2 once per key id and
        secret, however many requests ask, whenever they arrived (a key's secret never
        changes, so the answer does not age)."""
        flight = (parsed.key_id, digest)
        # Decided while this request waited for its read: the answer does not age.
        if self._throttle.is_proven(parsed.key_id, digest):
            return True
        if flight in self._rejected:
            return False
        future = self._verifying.get(flight)
        if future is None:
            future = asyncio.ensure_future(self._verify(parsed, digest, stored))
            self._verifying[flight] = future
            future.add_done_callback(lambda _: self._verifying.pop(flight, None))
        return await asyncio.shield(future)

    async def _verify(self, parsed: keys.ParsedKey, digest: bytes, stored: StoredKey) -> bool:
        if not self._throttle.admit(parsed.key_id, digest):
            # Not remembered as rejected: it was refused unchecked, and may be the real key.
            return False
        # A key of the other mode is not the key presented: a wrong secret, minus argon2.
        valid = stored.key.mode is parsed.mode and await self._workers.hashing(
            self._verifier.verify, stored.verifier, parsed.raw_key
        )
        if not valid:
            self._rejected.add((parsed.key_id, digest))
            throttled = self._throttle.failed(parsed.key_id)
            if throttled is not None:
                self._warn(throttled)
            return False
        self._throttle.succeeded(parsed.key_id, digest)
        if self._verifier.needs_rehash(stored.verifier):
            await self._rehash(stored, parsed.raw_key)
        return True

    async def before_fill(self, grant: KeyGrant) -> None:
        """Runs between the store read and the cache fill; tests pause here to race a revoke."""

    async def _rehash(self, stored: StoredKey, raw_key: str) -> None:
        # Best effort: the key is valid either way, and the next cold look-up retries.
        new = await self._workers.hashing(self._verifier.hash, raw_key)
        try:
            await self._workers.lookup(
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
