"""The admin use cases: create, get, list and revoke keys, and read the audit trail of who
created and revoked them. Knows nothing of gRPC."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from keysvc.core import hashing, keys, pagination, scopes, validation
from keysvc.core.clock import Clock, utc_now
from keysvc.core.errors import NotFound, Unavailable
from keysvc.core.model import (
    Actor,
    ApiKey,
    AuditPage,
    Change,
    ChangeKind,
    CreatedKey,
    Cursor,
    KeyGrant,
    KeyPage,
    KeyStatus,
    Mode,
)
from keysvc.ports.cache import KeyCache
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
    ) -> None:
        self._store = store
        self._cache = cache
        self._verifier = verifier
        self._workers = workers
        self._log = change_log
        self._clock = clock

    async def create_key(
        self,
        account_id: str,
        name: str,
        mode: Mode,
        requested_scopes: Iterable[str],
        actor: Actor,
    ) -> CreatedKey:
        """Creates a key, recording in the same transaction that `actor` created it."""
        account_id = validation.account_id(account_id)
        name = validation.name(name)
        granted = scopes.grantable(requested_scopes)
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
            self._store.list, account_id, limit=limit + 1, after=after, mode=mode, status=status
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

    async def revoke_key(self, account_id: str, key_id: str, actor: Actor) -> ApiKey:
        """Revokes for good, recording that `actor` did if the key was still active. Returns
        only once no replica can allow the key to a request that arrives afterwards, whatever
        any cache holds (docs/revocation.md)."""
        account_id = validation.account_id(account_id)
        key_id = validation.key_id(key_id)
        revocation = await self._workers.db(
            self._store.revoke, account_id, key_id, self._clock(), actor
        )
        if revocation is None:
            raise NotFound(f"no key {key_id} in account {account_id}")
        # From here the revocation is in the change log: in force on every replica within
        # the lease, whether or not this call gets to return.
        committed = self._log.now()
        key = revocation.key
        if revocation.seq is not None:
            self._log.note([Change(revocation.seq, key.id, ChangeKind.REVOKED)])
            log.info("key revoked id=%s account=%s by=%s", key.id, account_id, actor.name)
        await self._mark_revoked(key, revocation.seq)
        # Also on a repeated revoke: the first one's caller may have given up before this
        # wait, and this one's answer makes the same promise.
        await self._log.wait_out(committed)
        return key

    async def _mark_revoked(self, key: ApiKey, seq: int | None) -> None:
        """Puts the revocation in the cache, so that replicas refuse the key at once rather
        than when they next read the change log. Only speed depends on it."""
        try:
            cached = await self._cache.get(key.id)
            digest = cached.digest if cached is not None else None
            await self._cache.put(KeyGrant.of(key, seq=seq or self._log.cursor, digest=digest))
        except Unavailable:
            log.warning("cache unavailable: key %s is refused from the change log", key.id)
