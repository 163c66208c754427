"""How keys are stored and compared.

The store keeps an argon2id verifier; the cache keeps a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import VerifyMismatchError


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    """argon2id cost. The default is OWASP's minimum for argon2id (19 MiB, 2 passes, 1 lane).

    Keys carry 190 random bits, so argon2 guards a leaked database rather than
    weak secrets; raising the cost slows every cold look-up (see the README).
    """

    time_cost: int = 2
    memory_cost_kib: int = 19 * 1024
    parallelism: int = 1


class Verifier:
    """Makes and checks the argon2id verifiers the store keeps instead of raw keys."""

    def __init__(self, parameters: Argon2Parameters | None = None) -> None:
        p = parameters or Argon2Parameters()
        self._hasher = PasswordHasher(
            time_cost=p.time_cost,
            memory_cost=p.memory_cost_kib,
            parallelism=p.parallelism,
            type=Type.ID,
        )

    def hash(self, raw_key: str) -> str:
        return self._hasher.hash(raw_key)

    def verify(self, verifier: str, raw_key: str) -> bool:
        try:
            return self._hasher.verify(verifier, raw_key)
        except VerifyMismatchError:
            return False

    def needs_rehash(self, verifier: str) -> bool:
        """True when `verifier` was made with other parameters than the configured ones."""
        return self._hasher.check_needs_rehash(verifier)


def digest(raw_key: str) -> bytes:
    """SHA-256 of the raw key: not reversible, since the key holds 190 random bits."""
    return hashlib.sha256(raw_key.encode("utf-8")).digest()
