"""The cache of verified keys that lets Authorize answer without SQL or argon2.

It maps a key id to the key's grant (scopes, mode, account, status, the SHA-256 digest
of the raw key, and the change-log position the grant was read at). The cache is not
trusted to be current: Redis can lose entries, bring old ones back or be written by
someone else. Authorize trusts a grant only while the change log says nothing changed
the key since the grant's position (keysvc.usecases.change_log), so a cache may hold anything
and still never allow a key the database has revoked.
"""

from __future__ import annotations

from typing import Protocol

from keysvc.core.model import KeyGrant


class KeyCache(Protocol):
    """Every method raises keysvc.core.errors.Unavailable when the cache cannot answer."""

    async def get(self, key_id: str) -> KeyGrant | None:
        """The cached grant, or None if there is none (or none this deployment made)."""

    async def put(self, grant: KeyGrant) -> None:
        """Caches `grant`, replacing what the key had."""

    async def close(self) -> None: ...
