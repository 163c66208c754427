"""The cache of verified keys that lets Authorize answer without SQL or argon2.

It maps a key id to the key's grant (scopes, mode, account, status and the
SHA-256 digest of the raw key). Revocation writes a revoked grant that no later
fill can overwrite with an active one, so a cold look-up that read the key from
the store before the revocation cannot bring it back (see `fill`).
"""

from __future__ import annotations

from typing import Protocol

from keysvc.model import KeyGrant


class KeyCache(Protocol):
    """Every method raises keysvc.errors.Unavailable when the cache cannot answer."""

    async def get(self, key_id: str) -> KeyGrant | None:
        """The cached grant, or None if the key is not cached."""

    async def epoch(self) -> str:
        """Names the cache's current contents; it changes when they are lost (a restart).

        A cold look-up reads it before reading the store and hands it to `fill`.
        """

    async def fill(self, grant: KeyGrant, epoch: str) -> KeyGrant | None:
        """Caches `grant` unless the key is cached as revoked; returns what is cached now.

        The checks and the write are one atomic step, so an active grant read from
        the store before a revocation can never replace the revocation marker: the
        caller decides on the returned grant, not on the one it passed in. Returns
        None, caching nothing, when the epoch is no longer `epoch`: revocation
        markers may have been lost since the store was read, so read it again.
        """

    async def revoke(self, grant: KeyGrant) -> None:
        """Marks the key revoked, at once and for good, keeping any cached digest."""

    async def close(self) -> None: ...
