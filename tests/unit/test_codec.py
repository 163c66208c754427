"""GrantCodec: what the shared cache holds is authenticated, so writing to the cache cannot
mint a key or widen one."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

import pytest

from keysvc.adapters.cache.codec import GrantCodec
from keysvc.core import networks
from keysvc.core.model import KeyGrant, Mode

MAC_KEY = secrets.token_bytes(32)


def _grant(**changes: object) -> KeyGrant:
    fields: dict[str, object] = {
        "key_id": "a1B2c3D4e5F6",
        "account_id": "acct_1",
        "mode": Mode.LIVE,
        "scopes": frozenset({"links:read", "sessions:write"}),
        "revoked": False,
        "seq": 42,
        "digest": hashlib.sha256(b"ck_live_...").digest(),
    }
    fields.update(changes)
    return KeyGrant(**fields)  # type: ignore[arg-type]


class TestRoundTrip:
    @pytest.mark.parametrize(
        "grant",
        [
            _grant(),
            _grant(revoked=True, digest=None),
            _grant(mode=Mode.TEST, scopes=frozenset()),
            _grant(
                expire_time=datetime(2027, 1, 1, 12, 30, 15, 250000, tzinfo=UTC),
                allowed_ips=networks.parsed(("10.0.0.0/8", "203.0.113.7", "2001:db8::/32")),
            ),
        ],
        ids=["active", "revocation marker", "test key without scopes", "expiring, restricted"],
    )
    def test_decodes_what_it_encoded(self, grant: KeyGrant) -> None:
        """Every field, seq and digest included, survives the trip through the cache."""
        codec = GrantCodec(MAC_KEY)
        assert codec.decode(grant.key_id, codec.encode(grant)) == grant

    def test_holds_no_raw_key(self) -> None:
        """The value holds the digest of the key, never anything that is the key."""
        value = GrantCodec(MAC_KEY).encode(_grant())
        assert b"ck_live_" not in value


class TestForgery:
    def test_another_deployments_value_is_no_grant(self) -> None:
        """A value made under another MAC key (a staging keysvc sharing the Redis) decodes to
        nothing."""
        theirs = GrantCodec(secrets.token_bytes(32)).encode(_grant())
        assert GrantCodec(MAC_KEY).decode("a1B2c3D4e5F6", theirs) is None

    def test_a_lifted_restriction_is_no_grant(self) -> None:
        """Dropping an authentic value's allowed IPs or expiry breaks its tag."""
        codec = GrantCodec(MAC_KEY)
        restricted = _grant(
            expire_time=datetime(2027, 1, 1, tzinfo=UTC),
            allowed_ips=networks.parsed(("10.0.0.0/8",)),
        )
        value = codec.encode(restricted)
        for lifted in (value.replace(b'["10.0.0.0/8"]', b"[]"), value.replace(b'"e":1', b'"e":2')):
            assert lifted != value
            assert codec.decode("a1B2c3D4e5F6", lifted) is None

    def test_a_widened_value_is_no_grant(self) -> None:
        """Editing the scopes (or anything else) of an authentic value breaks its tag."""
        codec = GrantCodec(MAC_KEY)
        value = codec.encode(_grant())
        widened = value.replace(b'"links:read"', b'"links:write"')
        assert widened != value
        assert codec.decode("a1B2c3D4e5F6", widened) is None

    def test_a_value_moved_to_another_key_id_is_no_grant(self) -> None:
        """An authentic grant of one key, stored under another key's id, is no grant of it."""
        codec = GrantCodec(MAC_KEY)
        assert codec.decode("Zz9Yy8Xx7Ww6", codec.encode(_grant())) is None

    @pytest.mark.parametrize(
        "value",
        [
            b"",
            b"3",
            b"A" + b'{"k":"a1B2c3D4e5F6","a":"acct_1","m":"live","s":[],"d":null}',
            b"3{}" + b"0" * 32,
            bytes(range(256)),
        ],
        ids=["empty", "version only", "older layout", "wrong tag", "binary"],
    )
    def test_garbage_is_no_grant(self, value: bytes) -> None:
        """Anything else in the cache decodes to nothing, without an error."""
        assert GrantCodec(MAC_KEY).decode("a1B2c3D4e5F6", value) is None

    def test_a_short_mac_key_is_refused(self) -> None:
        """The MAC key needs 32 bytes at least."""
        with pytest.raises(ValueError, match="32 bytes"):
            GrantCodec(b"short")
