"""Verifiers kept in the store and digests kept in the cache."""

from __future__ import annotations

import hashlib

from keysvc.core import hashing, keys
from keysvc.core.hashing import Argon2Parameters, Verifier
from keysvc.core.model import Mode

from .support import FAST_ARGON2, secret_of


def _key() -> str:
    return keys.generate(Mode.LIVE, keys.new_key_id())


class TestVerifier:
    def test_accepts_the_key_it_was_made_from(self) -> None:
        """A verifier verifies the raw key it was made from."""
        verifier = Verifier(FAST_ARGON2)
        raw = _key()
        assert verifier.verify(verifier.hash(raw), raw) is True

    def test_refuses_any_other_key(self) -> None:
        """A verifier refuses another key, even one with the same key id."""
        verifier = Verifier(FAST_ARGON2)
        key_id = keys.new_key_id()
        raw, other = keys.generate(Mode.LIVE, key_id), keys.generate(Mode.LIVE, key_id)
        assert verifier.verify(verifier.hash(raw), other) is False

    def test_never_contains_the_raw_key(self) -> None:
        """The stored verifier holds neither the raw key nor its secret."""
        raw = _key()
        stored = Verifier(FAST_ARGON2).hash(raw)
        assert raw not in stored
        assert secret_of(raw) not in stored

    def test_is_salted(self) -> None:
        """Hashing one key twice gives two different verifiers, both valid."""
        verifier = Verifier(FAST_ARGON2)
        raw = _key()
        first, second = verifier.hash(raw), verifier.hash(raw)
        assert first != second
        assert verifier.verify(first, raw) and verifier.verify(second, raw)

    def test_is_argon2id_with_the_configured_parameters(self) -> None:
        """The verifier is argon2id made with the configured memory, passes and lanes."""
        parameters = Argon2Parameters(time_cost=3, memory_cost_kib=2048, parallelism=2)
        stored = Verifier(parameters).hash(_key())
        assert stored.startswith("$argon2id$v=19$m=2048,t=3,p=2$")

    def test_default_is_the_owasp_minimum(self) -> None:
        """Without parameters, verifiers use OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane."""
        assert Argon2Parameters() == Argon2Parameters(
            time_cost=2, memory_cost_kib=19 * 1024, parallelism=1
        )

    def test_needs_rehash_when_parameters_change(self) -> None:
        """A verifier made with other parameters needs a rehash; one made with these does not."""
        old = Verifier(FAST_ARGON2)
        new = Verifier(Argon2Parameters(time_cost=2, memory_cost_kib=1024, parallelism=1))
        stored = old.hash(_key())
        assert old.needs_rehash(stored) is False
        assert new.needs_rehash(stored) is True

    def test_verifies_across_parameter_changes(self) -> None:
        """A verifier made with old parameters still verifies after the parameters change."""
        raw = _key()
        stored = Verifier(FAST_ARGON2).hash(raw)
        new = Verifier(Argon2Parameters(time_cost=2, memory_cost_kib=2048, parallelism=1))
        assert new.verify(stored, raw) is True


class TestDigest:
    def test_is_32_bytes(self) -> None:
        """The cache digest is a 32-byte SHA-256."""
        raw = _key()
        assert len(hashing.digest(raw)) == 32
        assert hashing.digest(raw) == hashlib.sha256(raw.encode()).digest()

    def test_is_deterministic(self) -> None:
        """The same key always gives the same digest, so any replica can compare it."""
        raw = _key()
        assert hashing.digest(raw) == hashing.digest(str(raw))

    def test_differs_between_keys(self) -> None:
        """Two keys sharing a key id have different digests."""
        key_id = keys.new_key_id()
        first, second = keys.generate(Mode.LIVE, key_id), keys.generate(Mode.LIVE, key_id)
        assert hashing.digest(first) != hashing.digest(second)
