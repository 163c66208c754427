"""Where keys and their audit trail live: the KeyStore interface the use cases depend on.

Implementations are synchronous; the service runs them on a worker pool so that
the event loop never waits on the database.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from keysvc.core.model import (
    Actor,
    ApiKey,
    AuditAction,
    AuditEvent,
    Change,
    Cursor,
    KeyStatus,
    KeyUpdate,
    Mode,
)


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key together with its argon2id verifier, as the cold path of Authorize reads it.

    `seq` is the change log's head in the same snapshot: the key's state reflects every
    change logged up to it, and none after.
    """

    key: ApiKey
    verifier: str
    seq: int


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked key as stored, and the position of its revocation in the change log; `seq`
    is None when the key was revoked already, by an earlier call."""

    key: ApiKey
    seq: int | None


@dataclass(frozen=True, slots=True)
class Roll:
    """What a roll did: the old key before and after it, the new key, and the positions of
    their changes in the change log. `key` is None (and nothing was written) when the old
    key was not active."""

    old: ApiKey
    rolled: ApiKey
    key: ApiKey | None
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """A key before and after an update; `seq` is None when nothing was written (the key
    was not active, or the update changed nothing)."""

    before: ApiKey
    after: ApiKey
    seq: int | None


class KeyIdTaken(Exception):
    """A new key's id collides with a stored one (vanishingly rare); the caller draws another."""


class KeyStore(Protocol):
    def insert(self, key: ApiKey, verifier: str, actor: Actor) -> int:
        """Stores a new key, its key_created event by `actor` at the key's created_at, and
        its change, in one transaction; returns the change's seq. Raises KeyIdTaken on an
        id collision."""

    def get(self, account_id: str, key_id: str) -> ApiKey | None: ...

    def list(
        self,
        account_id: str,
        *,
        limit: int,
        after: Cursor | None,
        mode: Mode | None,
        status: KeyStatus | None,
        now: datetime,
    ) -> list[ApiKey]:
        """The account's keys newest first, starting after `after`; `status` as of `now`."""

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
        """Marks the key revoked at `at` with `reason` unless it already is, and only then
        records its `action` event by `actor` (with `source`, else `reason`) and its change,
        in the same transaction. None when the account has no such key."""

    def roll(
        self,
        account_id: str,
        key_id: str,
        new_key: ApiKey,
        verifier: str,
        until: datetime,
        actor: Actor,
    ) -> Roll | None:
        """In one transaction, if the old key is active at `new_key.created_at`: stores
        `new_key` with the old key's name, mode, scopes, allowed IPs and expiry; makes the old
        key expire at `until` unless it expires sooner anyway, or revokes it (reason "rolled")
        when `until` is not after the roll; records the roll and the creation, and logs both
        changes. None when the account has no such key; raises KeyIdTaken on an id collision."""

    def update(
        self, account_id: str, key_id: str, update: KeyUpdate, at: datetime, actor: Actor
    ) -> Update | None:
        """Applies `update` to the key if it is active at `at` and the update changes anything,
        recording the changed fields and logging the change, in one transaction. None when
        the account has no such key."""

    def list_audit_events(
        self, account_id: str, *, limit: int, after: Cursor | None
    ) -> builtins.list[AuditEvent]:
        """The account's audit events newest first, starting after `after`."""

    def find(self, key_id: str) -> StoredKey | None:
        """The key with this id in any account, for verifying a presented key."""

    def changes_after(self, seq: int, *, limit: int) -> builtins.list[Change]:
        """Up to `limit` changes logged after `seq`, oldest first."""

    def latest_changes(self, *, limit: int) -> builtins.list[Change]:
        """The `limit` most recent changes other than creations (or every one, if fewer),
        oldest first: what can make a cached grant stale."""

    def log_head(self) -> int:
        """The seq of the latest change logged (0 when none is)."""

    def key_ids(self, *, after: str, limit: int) -> builtins.list[str]:
        """Up to `limit` key ids greater than `after`, in order: every key, page by page."""

    def cache_mac_key(self) -> bytes:
        """The key that authenticates grants in the shared cache."""

    def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        """Moves each key's last_used_at forward to the given time; never backwards."""

    def replace_verifier(self, key_id: str, old: str, new: str) -> None:
        """Swaps in a verifier made with current parameters, if `old` is still the stored one."""

    def ping(self) -> None:
        """Raises Unavailable when the database cannot be reached."""
