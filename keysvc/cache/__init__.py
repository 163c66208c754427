"""The cache of verified keys that lets Authorize answer without SQL or argon2.

It maps a key id to the key's grant (scopes, mode, account, status and the
SHA-256 digest of the raw key). Revocation writes a revoked grant that no later
fill can overwrite with an active one: a cold look-up that read the key before
the revocation cannot bring it back (see `fill`).
"""

from __future__ import annotations

from typing import Protocol

from keysvc.model import KeyGrant


class KeyCache(Protocol):
    async def get(self, key_id: str) -> KeyGrant | None:
        """The cached grant, or None if the key is not cached."""

    async def fill(self, grant: KeyGrant) -> KeyGrant:
        """Caches `grant` unless the key is cached as revoked; returns what is cached now.

        The check and the write are one atomic step, so an active grant read from
        the store before a revocation can never replace the revocation marker;
        the caller decides on the returned grant, not on the one it passed in.
        """

    async def revoke(self, grant: KeyGrant) -> None:
        """Marks the key revoked, at once and for good; raises Unavailable if it cannot."""

    async def close(self) -> None: ...
