"""Fault-injecting backends for the schedule explorer: a key store, a Redis, the worker pools
and a verifier, all in the explorer's event loop, each step taking a random stretch of virtual
time and each failing when a fault says so.

They implement the same ports as the real ones (keysvc.ports.store.KeyStore,
keysvc.ports.cache.KeyCache, keysvc.ports.workers.Workers, keysvc.core.hashing.Verifier), so
that the real Authorizer, KeyAdmin and ChangeLog run on them unchanged.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ParamSpec, TypeVar

from keysvc.adapters.cache.codec import GrantCodec
from keysvc.core.errors import Unavailable
from keysvc.core.hashing import Verifier
from keysvc.core.model import (
    Actor,
    ApiKey,
    AuditAction,
    AuditEvent,
    Change,
    ChangeKind,
    Cursor,
    KeyGrant,
    KeyStatus,
    KeyUpdate,
    Mode,
)
from keysvc.ports.store import Revocation, Roll, StoredKey, Update

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Faults:
    """What is broken right now; the explorer's fault task flips these."""

    store_down: bool = False
    # Extra virtual seconds each store call takes.
    store_slow: float = 0.0
    cache_down: bool = False
    cache_slow: float = 0.0
    # Replicas (by number) that can reach neither the cache nor the store.
    cut_off_from_cache: set[int] = field(default_factory=set)
    cut_off_from_store: set[int] = field(default_factory=set)


class FakeStore:
    """The database: keys, and the change log in commit order. Every method is one atomic step;
    the commit times it records are what the checker judges revocations by."""

    def __init__(self, loop_time: Callable[[], float]) -> None:
        self._time = loop_time
        self.keys: dict[str, StoredKey] = {}
        self.changes: list[Change] = []
        # key id -> virtual time its revocation committed / its creation committed / each
        # update that removed a scope committed, with the scopes it removed.
        self.revoked_at: dict[str, float] = {}
        self.created_at: dict[str, float] = {}
        self.narrowed_at: dict[str, list[tuple[float, frozenset[str]]]] = {}
        self._mac_key = b"explorer-mac-key-of-32-bytes!!!!"

    def _log(self, key_id: str, kind: ChangeKind) -> int:
        seq = len(self.changes) + 1
        self.changes.append(Change(seq, key_id, kind))
        return seq

    def insert(self, key: ApiKey, verifier: str, actor: Actor) -> int:
        self.keys[key.id] = StoredKey(key=key, verifier=verifier, seq=0)
        self.created_at[key.id] = self._time()
        return self._log(key.id, ChangeKind.CREATED)

    def revoke(
        self,
        account_id: str,
        key_id: str,
        at: datetime,
        actor: Actor,
        *,
        reason: str = "",
        action: AuditAction = AuditAction.KEY_REVOKED,
        source: str = "",
    ) -> Revocation | None:
        stored = self.keys.get(key_id)
        if stored is None or stored.key.account_id != account_id:
            return None
        if stored.key.revoked_at is not None:
            return Revocation(key=stored.key, seq=None)
        key = dataclasses.replace(stored.key, revoked_at=at, revocation_reason=reason or None)
        self.keys[key_id] = dataclasses.replace(stored, key=key)
        self.revoked_at[key_id] = self._time()
        return Revocation(key=key, seq=self._log(key_id, ChangeKind.REVOKED))

    def roll(
        self,
        account_id: str,
        key_id: str,
        new_key: ApiKey,
        verifier: str,
        until: datetime,
        actor: Actor,
    ) -> Roll | None:
        stored = self.keys.get(key_id)
        if stored is None or stored.key.account_id != account_id:
            return None
        old = stored.key
        if old.status_at(new_key.created_at) is not KeyStatus.ACTIVE:
            return Roll(old=old, rolled=old, key=None, seqs=())
        if until > new_key.created_at:
            raise NotImplementedError("the explorer rolls with no grace: a revocation")
        new_key = dataclasses.replace(new_key, scopes=old.scopes)
        seqs = (self.insert(new_key, verifier, actor),)
        revocation = self.revoke(account_id, key_id, new_key.created_at, actor, reason="rolled")
        assert revocation is not None and revocation.seq is not None
        return Roll(old=old, rolled=revocation.key, key=new_key, seqs=(*seqs, revocation.seq))

    def update(
        self, account_id: str, key_id: str, update: KeyUpdate, at: datetime, actor: Actor
    ) -> Update | None:
        stored = self.keys.get(key_id)
        if stored is None or stored.key.account_id != account_id:
            return None
        before = stored.key
        if before.status_at(at) is not KeyStatus.ACTIVE or set(update.fields) != {"scopes"}:
            return Update(before=before, after=before, seq=None)
        after = dataclasses.replace(before, scopes=update.scopes)
        if after == before:
            return Update(before=before, after=before, seq=None)
        self.keys[key_id] = dataclasses.replace(stored, key=after)
        removed = frozenset(before.scopes) - frozenset(after.scopes)
        if removed:
            self.narrowed_at.setdefault(key_id, []).append((self._time(), removed))
        return Update(before=before, after=after, seq=self._log(key_id, ChangeKind.UPDATED))

    def get(self, account_id: str, key_id: str) -> ApiKey | None:
        stored = self.keys.get(key_id)
        return stored.key if stored and stored.key.account_id == account_id else None

    def list(
        self,
        account_id: str,
        *,
        limit: int,
        after: Cursor | None,
        mode: Mode | None,
        status: KeyStatus | None,
        now: datetime,
    ) -> builtins.list[ApiKey]:
        raise NotImplementedError("the explorer lists no keys")

    def list_audit_events(
        self, account_id: str, *, limit: int, after: Cursor | None
    ) -> builtins.list[AuditEvent]:
        raise NotImplementedError("the explorer reads no audit trail")

    def ping(self) -> None:
        return None

    def find(self, key_id: str) -> StoredKey | None:
        stored = self.keys.get(key_id)
        if stored is None:
            return None
        return dataclasses.replace(stored, seq=len(self.changes))

    def changes_after(self, seq: int, *, limit: int) -> builtins.list[Change]:
        return self.changes[seq : seq + limit]

    def latest_changes(self, *, limit: int) -> builtins.list[Change]:
        changes = [c for c in self.changes if c.kind is not ChangeKind.CREATED]
        return changes[-limit:]

    def log_head(self) -> int:
        return len(self.changes)

    def key_ids(self, *, after: str, limit: int) -> builtins.list[str]:
        return sorted(k for k in self.keys if k > after)[:limit]

    def cache_mac_key(self) -> bytes:
        return self._mac_key

    def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        return None

    def replace_verifier(self, key_id: str, old: str, new: str) -> None:
        return None


class FakeRedis:
    """One Redis shared by the replicas, holding encoded grants, with a history of its states so
    that faults can bring an older one back."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.data: dict[str, bytes] = {}
        # Every state it has been in (copies), oldest first, and every value ever written.
        self.states: list[dict[str, bytes]] = []
        self.written: list[tuple[str, bytes]] = []

    def set(self, name: str, value: bytes) -> None:
        self.data[name] = value
        self.states.append(dict(self.data))
        self.written.append((name, value))

    def restart_empty(self) -> None:
        self.data = {}

    def restore_older(self) -> None:
        """A snapshot restored, or a failover to a replica that missed the latest writes."""
        if self.states:
            self.data = dict(self.rng.choice(self.states))

    def replay(self) -> None:
        """Someone with write access puts an old, authentic value back."""
        if self.written:
            name, value = self.rng.choice(self.written)
            self.data[name] = value

    def forge(self, name: str) -> None:
        self.data[name] = b"3" + self.rng.randbytes(40) + b"0" * 32


class FakeCache:
    """One replica's view of the FakeRedis, through the real codec, with the faults applied."""

    def __init__(
        self, redis: FakeRedis, codec: GrantCodec, faults: Faults, replica: int, delay: Delay
    ) -> None:
        self._redis = redis
        self._codec = codec
        self._faults = faults
        self._replica = replica
        self._delay = delay

    async def _reachable(self) -> None:
        await self._delay(self._faults.cache_slow)
        if self._faults.cache_down or self._replica in self._faults.cut_off_from_cache:
            raise Unavailable("cache unavailable")

    async def get(self, key_id: str) -> KeyGrant | None:
        await self._reachable()
        value = self._redis.data.get(f"grant:{key_id}")
        return None if value is None else self._codec.decode(key_id, value)

    async def put(self, grant: KeyGrant) -> None:
        await self._reachable()
        self._redis.set(f"grant:{grant.key_id}", self._codec.encode(grant))
        # The reply may be lost on the way back: written, but the caller hears a failure.
        await self._reachable()

    async def close(self) -> None:
        return None


class Delay:
    """A random stretch of virtual time: a network or disk at work, and a point where any other
    task may run."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    async def __call__(self, extra: float = 0.0) -> None:
        await asyncio.sleep(self._rng.choice((0.0, 0.0, 0.0005, 0.002, 0.01, 0.05)) + extra)


class FakeWorkers:
    """The worker pools, inline: a store call waits, runs as one atomic step, waits again. A
    down store fails it before the step; a slow one may fail it after, as a database timeout
    would tell a caller UNAVAILABLE about a write that committed."""

    database_connections = 1

    def __init__(self, faults: Faults, replica: int, delay: Delay, rng: random.Random) -> None:
        self._faults = faults
        self._replica = replica
        self._delay = delay
        self._rng = rng

    async def _store(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        await self._delay(self._faults.store_slow)
        if self._faults.store_down or self._replica in self._faults.cut_off_from_store:
            raise Unavailable("database unavailable")
        result = fn(*args, **kwargs)
        await self._delay(self._faults.store_slow)
        if self._faults.store_slow and self._rng.random() < 0.3:
            raise Unavailable("database did not answer in time")
        return result

    db = lookup = feed = _store

    async def hashing(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        await self._delay(0.03)  # argon2's time, during which anything may happen
        return fn(*args, **kwargs)

    def close(self) -> None:
        return None


class FakeVerifier(Verifier):
    """Stands in for argon2id (its cost is the FakeWorkers' hashing delay)."""

    def hash(self, raw_key: str) -> str:
        return "fake$" + hashlib.sha256(raw_key.encode()).hexdigest()

    def verify(self, verifier: str, raw_key: str) -> bool:
        return verifier == self.hash(raw_key)

    def needs_rehash(self, verifier: str) -> bool:
        return False
