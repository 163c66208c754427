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

from keysvc.model import Actor, ApiKey, AuditEvent, KeyStatus, Mode


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key together with its argon2id verifier, as the cold path of Authorize reads it."""

    key: ApiKey
    verifier: str


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position in a newest-first list: the time and id of the last item already returned
    (a key's created_at and id, or an audit event's occurred_at and id)."""

    at: datetime
    id: str


class KeyIdTaken(Exception):
    """A new key's id collides with a stored one (vanishingly rare); the caller draws another."""


class KeyStore(Protocol):
    def insert(self, key: ApiKey, verifier: str, actor: Actor) -> None:
        """Stores a new key and its key_created event, by `actor` at the key's created_at,
        in one transaction; raises KeyIdTaken on an id collision."""

    def get(self, account_id: str, key_id: str) -> ApiKey | None: ...

    def list(
        self,
        account_id: str,
        *,
        limit: int,
        after: Cursor | None,
        mode: Mode | None,
        status: KeyStatus | None,
    ) -> list[ApiKey]:
        """The account's keys newest first, starting after `after`."""

    def revoke(self, account_id: str, key_id: str, at: datetime, actor: Actor) -> ApiKey | None:
        """Marks the key revoked at `at` unless it already is, and only then records its
        key_revoked event by `actor`, in the same transaction; returns the key as stored."""

    def list_audit_events(
        self, account_id: str, *, limit: int, after: Cursor | None
    ) -> builtins.list[AuditEvent]:
        """The account's audit events newest first, starting after `after`."""

    def find(self, key_id: str) -> StoredKey | None:
        """The key with this id in any account, for verifying a presented key."""

    def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        """Moves each key's last_used_at forward to the given time; never backwards."""

    def replace_verifier(self, key_id: str, old: str, new: str) -> None:
        """Swaps in a verifier made with current parameters, if `old` is still the stored one."""

    def ping(self) -> None:
        """Raises Unavailable when the database cannot be reached."""
