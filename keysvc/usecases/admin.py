"""The admin use cases: create, get, list, roll, update and revoke keys, revoke leaked ones,
and read the audit trail of who did what to them. Knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from keysvc.core import hashing, keys, networks, pagination, scopes, validation
from keysvc.core.clock import Clock, utc_now
from keysvc.core.errors import FailedPrecondition, NotFound, Unavailable
from keysvc.core.model import (
    Actor,
    ApiKey,
    AuditAction,
    AuditPage,
    Change,
    ChangeKind,
    CreatedKey,
    Cursor,
    KeyGrant,
    KeyPage,
    KeyStatus,
    KeyUpdate,
    LeakedKey,
    LeakOutcome,
    Mode,
    RolledKey,
)
from keysvc.ports.cache import KeyCache
from keysvc.ports.metrics import NO_METRICS, Metrics
from keysvc.ports.pushes import NO_ANNOUNCER, ChangeAnnouncer
from keysvc.ports.store import KeyIdTaken, KeyStore
from keysvc.ports.workers import Workers
from keysvc.usecases.change_log import ChangeLog

log = logging.getLogger(__name__)


class KeyAdmin:
    def __init__(
        self,
        store: KeyStore,
        cache: KeyCache,
        verifier: hashing.Verifier,
        workers: Workers,
        change_log: ChangeLog,
        clock: Clock = utc_now,
        *,
        announcer: ChangeAnnouncer = NO_ANNOUNCER,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._store = store
        self._cache = cache
        self._verifier = verifier
        self._workers = workers
        self._log = change_log
        self._clock = clock
        self._announcer = announcer
        self._metrics = metrics

    def now(self) -> datetime:
        """The time keysvc judges expiry by."""
        return self._clock()

    async def create_key(
        self,
        account_id: str,
        name: str,
        mode: Mode,
        requested_scopes: Iterable[str],
        actor: Actor,
        *,
        expire_time: datetime | None = None,
        allowed_ips: Iterable[str] = (),
    ) -> CreatedKey:
        """Creates a key, recording in the same transaction that `actor` created it."""
        account_id = validation.account_id(account_id)
        name = validation.name(name)
        granted = scopes.grantable(requested_scopes)
        expire_time = validation.expire_time(expire_time, self._clock())
        allowed = networks.normalized(allowed_ips)
        for _attempt in range(3):
            key_id = keys.new_key_id()
            raw_key = keys.generate(mode, key_id)
            key = ApiKey(
                id=key_id,
                account_id=account_id,
                name=name,
                prefix=keys.display_prefix(mode, key_id),
                mode=mode,
                scopes=granted,
                created_at=self._clock(),
                expire_time=expire_time,
                allowed_ips=allowed,
            )
            verifier = await self._workers.hashing(self._verifier.hash, raw_key)
            try:
                seq = await self._workers.db(self._store.insert, key, verifier, actor)
            except KeyIdTaken:
                continue
            self._log.note([Change(seq, key.id, ChangeKind.CREATED)])
            log.info(
                "key created id=%s account=%s mode=%s scopes=%s by=%s",
                key.id,
                account_id,
                mode.value,
                ",".join(granted),
                actor.name,
            )
            await self._warm_cache(KeyGrant.of(key, seq=seq, digest=hashing.digest(raw_key)))
            return CreatedKey(key=key, raw_key=raw_key)
        raise Unavailable("could not draw an unused key id; try again")

    async def _warm_cache(self, grant: KeyGrant) -> None:
        # The first Authorize of a new key is then as fast as every later one.
        try:
            await self._cache.put(grant)
        except Unavailable:
            log.warning("cache unavailable: key %s will be verified on first use", grant.key_id)

    async def get_key(self, account_id: str, key_id: str) -> ApiKey:
        account_id = validation.account_id(account_id)
        key_id = validation.key_id(key_id)
        key = await self._workers.db(self._store.get, account_id, key_id)
        if key is None:
            raise NotFound(f"no key {key_id} in account {account_id}")
        return key

    async def list_keys(
        self,
        account_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        mode: Mode | None = None,
        status: KeyStatus | None = None,
    ) -> KeyPage:
        account_id = validation.account_id(account_id)
        limit = validation.page_size(page_size)
        after = pagination.decode(page_token, pagination.KEYS)
        rows = await self._workers.db(
            self._store.list,
            account_id,
            limit=limit + 1,
            after=after,
            mode=mode,
            status=status,
            now=self._clock(),
        )
        page, token = pagination.page_of(
            rows, limit, pagination.KEYS, lambda key: Cursor(key.created_at, key.id)
        )
        return KeyPage(keys=page, next_page_token=token)

    async def list_audit_events(
        self, account_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> AuditPage:
        """The account's key creations and revocations, newest first, revoked keys' included."""
        account_id = validation.account_id(account_id)
        limit = validation.page_size(page_size)
        after = pagination.decode(page_token, pagination.AUDIT_EVENTS)
        rows = await self._workers.db(
            self._store.list_audit_events, account_id, limit=limit + 1, after=after
        )
        page, token = pagination.page_of(
            rows, limit, pagination.AUDIT_EVENTS, lambda event: Cursor(event.occurred_at, event.id)
        )
        return AuditPage(events=page, next_page_token=token)

    async def revoke_key(
        self, account_id: str, key_id: str, actor: Actor, *, reason: str = ""
    ) -> ApiKey:
        """Revokes for good, recording that `actor` did (and why) if the key was still active.
        Returns only once no replica can allow the key to a request that arrives afterwards,
        whatever any cache holds (docs/revocation.md)."""
        account_id = validation.account_id(account_id)
        key_id = validation.key_id(key_id)
        reason = validation.reason(reason)
        revocation = await self._workers.db(
            self._store.revoke, account_id, key_id, self._clock(), actor, reason=reason
        )
        if revocation is None:
            raise NotFound(f"no key {key_id} in account {account_id}")
        # From here the revocation is in the change log: in force on every replica within
        # the lease, whether or not this call gets to return.
        committed = self._log.now()
        key = revocation.key
        if revocation.seq is not None:
            self._changed(revocation.seq, key.id, ChangeKind.REVOKED)
            log.info("key revoked id=%s account=%s by=%s", key.id, account_id, actor.name)
        await self._recache(key, revocation.seq)
        # Also on a repeated revoke: the first one's caller may have given up before this
        # wait, and this one's answer makes the same promise.
        await self._wait_out(committed)
        return key

    async def roll_key(
        self, account_id: str, key_id: str, grace: timedelta, actor: Actor
    ) -> RolledKey:
        """A new key in the old one's place; the old one keeps working for `grace` (never
        longer than it would have anyway), or is revoked at once when `grace` is 0. Returns
        once no replica allows the old key past its new end (docs/revocation.md)."""
        account_id = validation.account_id(account_id)
        key_id = validation.key_id(key_id)
        grace = validation.grace(grace)
        for _attempt in range(3):
            now = self._clock()
            # Name, scopes and the rest come from the old key, inside the store's transaction.
            template = await self.get_key(account_id, key_id)
            new_id = keys.new_key_id()
            raw_key = keys.generate(template.mode, new_id)
            new_key = dataclasses.replace(
                template,
                id=new_id,
                prefix=keys.display_prefix(template.mode, new_id),
                created_at=now,
                last_used_at=None,
                revoked_at=None,
                revocation_reason=None,
            )
            verifier = await self._workers.hashing(self._verifier.hash, raw_key)
            try:
                roll = await self._workers.db(
                    self._store.roll, account_id, key_id, new_key, verifier, now + grace, actor
                )
            except KeyIdTaken:
                continue
            if roll is None:
                raise NotFound(f"no key {key_id} in account {account_id}")
            if roll.key is None:
                raise FailedPrecondition(
                    f"key {key_id} is {roll.old.status_at(now).value}: only an active key can"
                    " be rolled; create a new key instead"
                )
            committed = self._log.now()
            created_seq, *old_seq = roll.seqs
            self._changed(created_seq, roll.key.id, ChangeKind.CREATED)
            if old_seq:
                kind = ChangeKind.REVOKED if roll.rolled.revoked_at else ChangeKind.UPDATED
                self._changed(old_seq[0], key_id, kind)
            log.info(
                "key rolled id=%s new=%s account=%s grace=%ss by=%s",
                key_id,
                roll.key.id,
                account_id,
                f"{grace.total_seconds():g}",
                actor.name,
            )
            await self._warm_cache(
                KeyGrant.of(roll.key, seq=created_seq, digest=hashing.digest(raw_key))
            )
            if old_seq:
                await self._recache(roll.rolled, old_seq[0])
            # Also when this roll left the old key as it was: a change another call made to
            # it may still be within its lease, and this answer makes the same promise.
            await self._wait_out(committed)
            return RolledKey(key=roll.key, raw_key=raw_key, rolled=roll.rolled)
        raise Unavailable("could not draw an unused key id; try again")

    async def update_key(
        self, account_id: str, key_id: str, update: KeyUpdate, actor: Actor
    ) -> ApiKey:
        """Changes the fields `update` names. A change that narrows what the key may do holds
        on every replica once this returns, as a revocation does (docs/revocation.md)."""
        account_id = validation.account_id(account_id)
        key_id = validation.key_id(key_id)
        now = self._clock()
        update = dataclasses.replace(
            update,
            name=validation.name(update.name) if "name" in update.fields else "",
            scopes=scopes.grantable(update.scopes) if "scopes" in update.fields else (),
            allowed_ips=(
                networks.normalized(update.allowed_ips) if "allowed_ips" in update.fields else ()
            ),
            expire_time=(
                validation.expire_time(update.expire_time, now)
                if "expire_time" in update.fields
                else None
            ),
        )
        result = await self._workers.db(self._store.update, account_id, key_id, update, now, actor)
        if result is None:
            raise NotFound(f"no key {key_id} in account {account_id}")
        status = result.before.status_at(now)
        if status is not KeyStatus.ACTIVE:
            raise FailedPrecondition(
                f"key {key_id} is {status.value}: a revoked or expired key cannot be changed"
            )
        committed = self._log.now()
        if result.seq is None:
            # Nothing to change: another call may have made this very change a moment ago and
            # still be waiting out its lease; this answer makes the same promise.
            await self._wait_out(committed)
            return result.after
        self._changed(result.seq, key_id, ChangeKind.UPDATED)
        log.info(
            "key updated id=%s account=%s fields=%s by=%s",
            key_id,
            account_id,
            ",".join(sorted(update.fields)),
            actor.name,
        )
        await self._recache(result.after, result.seq)
        if narrows(result.before, result.after):
            await self._wait_out(committed)
        return result.after

    async def revoke_leaked_keys(
        self, raw_keys: Sequence[str], source: str, actor: Actor
    ) -> list[LeakedKey]:
        """Revokes every real key among `raw_keys`, in any account, as leaked from `source`.
        A key counts only with its right secret: a string carrying a real key id and another
        secret revokes nothing. Returns once none of the revoked keys is allowed anywhere."""
        raw_keys = validation.leaked_keys(list(raw_keys))
        source = validation.source(source)
        results = await asyncio.gather(
            *(self._revoke_leaked(raw_key, source, actor) for raw_key in raw_keys)
        )
        committed = [at for _, at in results if at is not None]
        if committed:
            await self._wait_out(max(committed))
        return [leaked for leaked, _ in results]

    async def _revoke_leaked(
        self, value: str, source: str, actor: Actor
    ) -> tuple[LeakedKey, float | None]:
        parsed = keys.parse(keys.strip_bearer(value))
        if parsed is None:
            return LeakedKey(prefix="", outcome=LeakOutcome.NOT_FOUND), None
        prefix = keys.display_prefix(parsed.mode, parsed.key_id)
        stored = await self._workers.db(self._store.find, parsed.key_id)
        if (
            stored is None
            or stored.key.mode is not parsed.mode
            or not await self._workers.hashing(
                self._verifier.verify, stored.verifier, parsed.raw_key
            )
        ):
            return LeakedKey(prefix=prefix, outcome=LeakOutcome.NOT_FOUND), None
        key = stored.key
        found = LeakedKey(
            prefix=prefix,
            outcome=LeakOutcome.ALREADY_REVOKED,
            key_id=key.id,
            account_id=key.account_id,
        )
        if key.status_at(self._clock()) is not KeyStatus.ACTIVE:
            return found, None
        revocation = await self._workers.db(
            self._store.revoke,
            key.account_id,
            key.id,
            self._clock(),
            actor,
            reason="leaked",
            action=AuditAction.KEY_LEAK_REVOKED,
            source=source,
        )
        if revocation is None or revocation.seq is None:
            return found, None
        committed = self._log.now()
        self._changed(revocation.seq, key.id, ChangeKind.REVOKED)
        log.warning(
            "key revoked as leaked id=%s account=%s by=%s", key.id, key.account_id, actor.name
        )
        await self._recache(revocation.key, revocation.seq)
        return dataclasses.replace(found, outcome=LeakOutcome.REVOKED), committed

    def _changed(self, seq: int, key_id: str, kind: ChangeKind) -> None:
        """Applies a change this replica made to its own change log: it decides by it at once,
        and tells the other replicas to read the log now (for speed only)."""
        self._log.note([Change(seq, key_id, kind)])
        if kind is not ChangeKind.CREATED:
            self._announcer.announce([key_id])

    async def _wait_out(self, committed: float) -> None:
        """Returns once no cache anywhere trusts what it read before `committed`."""
        started = self._log.now()
        await self._log.wait_out(committed)
        self._metrics.revocation_wait(self._log.now() - started)

    async def _recache(self, key: ApiKey, seq: int | None) -> None:
        """Puts the key's new state in the cache, so that replicas use it at once rather than
        when they next read the change log. Only speed depends on it."""
        try:
            cached = await self._cache.get(key.id)
            digest = cached.digest if cached is not None else None
            await self._cache.put(KeyGrant.of(key, seq=seq or self._log.cursor, digest=digest))
        except Unavailable:
            log.warning("cache unavailable: key %s is decided from the change log", key.id)


def narrows(before: ApiKey, after: ApiKey) -> bool:
    """Whether `after` forbids anything `before` allowed: a scope removed, an address range
    removed (or a first one added to a key usable from anywhere), an earlier expiry."""
    if set(before.scopes) - set(after.scopes):
        return True
    if after.allowed_ips and (
        not before.allowed_ips or set(before.allowed_ips) - set(after.allowed_ips)
    ):
        return True
    if after.expire_time is not None:
        return before.expire_time is None or after.expire_time < before.expire_time
    return False
