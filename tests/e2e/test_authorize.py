"""Authorize's decisions on real keys, revocation, and when a key counts as last used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2

from .harness import NewKey, poll, verdict, when, with_checksum

pytestmark = pytest.mark.slow

ALLOWED = (200, "REASON_ALLOWED")
# The server flushes last-used every 0.2 s; this leaves room for a loaded machine.
LAST_USED_DEADLINE = 5.0


class TestAuthorizeAllows:
    def test_a_valid_key_is_allowed(self, public: KeyServiceClient, new_key: NewKey) -> None:
        """A valid raw key gets 200 ALLOWED, with the key's id, account, mode and scopes."""
        created = new_key(mode="live", scopes=["links:read", "sessions:write"])

        decision = public.authorize(created.secret)

        assert decision.allowed is True
        assert verdict(decision) == ALLOWED
        assert decision.key_id == created.key.id
        assert decision.account_id == created.key.account_id
        assert decision.mode == keysvc_pb2.MODE_LIVE
        assert list(decision.scopes) == ["links:read", "sessions:write"]
        assert list(decision.missing_scopes) == []

    @pytest.mark.parametrize(
        "header",
        ["Bearer {key}", "bearer {key}", "BEARER {key}", "  Bearer   {key}  "],
        ids=["Bearer", "lowercase", "uppercase", "extra-spaces"],
    )
    def test_a_whole_authorization_header_is_accepted(
        self, public: KeyServiceClient, new_key: NewKey, header: str
    ) -> None:
        """The Authorization header value "Bearer <key>" decides like the raw key."""
        created = new_key()

        decision = public.authorize(header.format(key=created.secret))

        assert verdict(decision) == ALLOWED
        assert decision.key_id == created.key.id

    def test_held_scopes_are_allowed(self, public: KeyServiceClient, new_key: NewKey) -> None:
        """Requiring any subset of the key's scopes is allowed."""
        created = new_key(scopes=["links:read", "links:write", "events:read"])

        decision = public.authorize(created.secret, ["links:write", "events:read"])

        assert verdict(decision) == ALLOWED

    def test_the_matching_mode_is_allowed(self, public: KeyServiceClient, new_key: NewKey) -> None:
        """A test key passes a caller that requires test mode."""
        created = new_key(mode="test")

        decision = public.authorize(created.secret, required_mode="test")

        assert verdict(decision) == ALLOWED


class TestAuthorizeRefuses:
    def test_missing_scopes_are_forbidden(self, public: KeyServiceClient, new_key: NewKey) -> None:
        """A key lacking required scopes gets 403 INSUFFICIENT_SCOPE naming exactly those."""
        created = new_key(scopes=["links:read"])

        decision = public.authorize(
            created.secret, ["links:read", "sessions:write", "customers:read"]
        )

        assert decision.allowed is False
        assert verdict(decision) == (403, "REASON_INSUFFICIENT_SCOPE")
        assert list(decision.missing_scopes) == ["customers:read", "sessions:write"]
        assert decision.key_id == created.key.id
        assert list(decision.scopes) == ["links:read"]

    def test_write_does_not_imply_read(self, public: KeyServiceClient, new_key: NewKey) -> None:
        """A key with links:write alone is refused a request that needs links:read."""
        created = new_key(scopes=["links:write"])

        decision = public.authorize(created.secret, ["links:read"])

        assert verdict(decision) == (403, "REASON_INSUFFICIENT_SCOPE")
        assert list(decision.missing_scopes) == ["links:read"]

    @pytest.mark.parametrize(("mode", "required"), [("live", "test"), ("test", "live")])
    def test_the_other_mode_is_refused(
        self, public: KeyServiceClient, new_key: NewKey, mode: str, required: str
    ) -> None:
        """A caller that requires one mode gets 403 WRONG_MODE for a key of the other."""
        created = new_key(mode=mode)

        decision = public.authorize(created.secret, required_mode=required)

        assert decision.allowed is False
        assert verdict(decision) == (403, "REASON_WRONG_MODE")
        assert decision.key_id == created.key.id

    @pytest.mark.parametrize("api_key", ["", "   "], ids=["empty", "blank"])
    def test_no_key_is_missing(self, public: KeyServiceClient, api_key: str) -> None:
        """An empty or blank value is 401 MISSING."""
        decision = public.authorize(api_key)

        assert decision.allowed is False
        assert verdict(decision) == (401, "REASON_MISSING")

    @pytest.mark.parametrize("api_key", ["Bearer ", "Bearer"], ids=["trailing-space", "bare"])
    def test_a_bearer_header_without_a_key_is_missing(
        self, public: KeyServiceClient, api_key: str
    ) -> None:
        """An Authorization value of the Bearer scheme without a key is 401 MISSING."""
        decision = public.authorize(api_key)

        assert verdict(decision) == (401, "REASON_MISSING")

    def test_a_wrong_secret_is_not_found(self, public: KeyServiceClient, new_key: NewKey) -> None:
        """A well-formed key with a real key id but another key's secret is 401 NOT_FOUND."""
        created, other = new_key(), new_key()
        # The checksum covers the whole key, so the forgery gets a fresh one.
        forged = with_checksum(created.secret[:20] + other.secret[20:52])

        decision = public.authorize(forged)

        assert verdict(decision) == (401, "REASON_NOT_FOUND")
        assert decision.key_id == ""


class TestRevocation:
    def test_the_very_next_authorize_is_revoked(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Once RevokeKey returns, the next Authorize of that key answers 401 REVOKED."""
        created = new_key()
        assert public.authorize(created.secret).allowed

        admin.revoke_key(account, created.key.id)
        decision = public.authorize(created.secret)

        assert decision.allowed is False
        assert verdict(decision) == (401, "REASON_REVOKED")

    def test_revoked_wins_over_scope_and_mode(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A revoked key is 401 REVOKED even when the scopes or mode would also refuse it."""
        created = new_key(mode="live", scopes=["links:read"])
        admin.revoke_key(account, created.key.id)

        decision = public.authorize(created.secret, ["customers:write"], required_mode="test")

        assert verdict(decision) == (401, "REASON_REVOKED")

    def test_rotation_revokes_only_the_old_key(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Old and new keys coexist; revoking the old one leaves the new one working."""
        old, new = new_key(name="server (old)"), new_key(name="server (new)")
        assert public.authorize(old.secret).allowed
        assert public.authorize(new.secret).allowed

        admin.revoke_key(account, old.key.id)

        assert verdict(public.authorize(old.secret)) == (401, "REASON_REVOKED")
        assert verdict(public.authorize(new.secret)) == ALLOWED


class TestLastUsed:
    def _last_used(self, admin: KeyServiceClient, account: str, key_id: str) -> datetime | None:
        listed = {key.id: key for key in admin.list_keys(account).keys}
        return when(listed[key_id], "last_used_at")

    def test_a_never_used_key_has_no_last_used(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """last_used_at is unset in ListKeys and GetKey for a key never authorized."""
        created = new_key()

        assert self._last_used(admin, account, created.key.id) is None
        assert when(admin.get_key(account, created.key.id), "last_used_at") is None

    def test_a_successful_authorize_sets_last_used(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Within seconds of an allowed Authorize, ListKeys shows when the key was used."""
        created = new_key()

        before = datetime.now(UTC)
        assert public.authorize(created.secret).allowed
        after = datetime.now(UTC)

        used = poll(
            lambda: self._last_used(admin, account, created.key.id),
            timeout=LAST_USED_DEADLINE,
            what="last_used_at in ListKeys",
        )
        assert before - timedelta(seconds=1) <= used <= after + timedelta(seconds=1)

    def test_refused_keys_are_not_used(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A wrong secret or a revoked key leaves last_used_at unset, unlike a valid key."""
        used, wrong, revoked = new_key(name="used"), new_key(name="wrong"), new_key(name="revoked")
        admin.revoke_key(account, revoked.key.id)

        public.authorize(with_checksum(wrong.secret[:20] + used.secret[20:52]))
        public.authorize(revoked.secret)
        assert public.authorize(used.secret).allowed

        # Uses are flushed in batches: once the allowed use shows, earlier ones would too.
        poll(
            lambda: self._last_used(admin, account, used.key.id),
            timeout=LAST_USED_DEADLINE,
            what="last_used_at of the allowed key",
        )
        assert self._last_used(admin, account, wrong.key.id) is None
        assert self._last_used(admin, account, revoked.key.id) is None
