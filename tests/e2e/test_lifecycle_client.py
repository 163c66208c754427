"""The key lifecycle through keysvc_client on a real server, on both backends: expiry and allowed
addresses, revocation reasons, RollKey, UpdateKey, RevokeLeakedKeys and Authorize's client_ip,
with the blocking client and the asyncio one."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from keysvc_client import (
    FailedPrecondition,
    InvalidArgument,
    KeyServiceClient,
    KeysvcError,
    NotFound,
    Unauthenticated,
    keysvc_pb2,
)

from .harness import BASE62, KEY_PATTERN, ServerProcess, poll, verdict, when, with_checksum

pytestmark = pytest.mark.slow

pb = keysvc_pb2
ALLOWED = (200, "REASON_ALLOWED")
EXPIRED = (401, "REASON_EXPIRED")
REVOKED = (401, "REASON_REVOKED")
IP_NOT_ALLOWED = (403, "REASON_IP_NOT_ALLOWED")
# Clocks of the test and the server are the same machine's; the slack absorbs rounding.
SLACK = timedelta(seconds=1)
# How long a key with a few seconds to live may take to be refused as expired.
EXPIRY_DEADLINE = 10.0


def now() -> datetime:
    return datetime.now(UTC)


def later(**delta: float) -> datetime:
    """A whole second `delta` from now: what the server stores is compared exactly."""
    return (now() + timedelta(**delta)).replace(microsecond=0)


def names_field(error: KeysvcError, field: str) -> bool:
    """Whether the error's message starts with the field it is about: `scopes: ...`, an entry
    of a list (`allowed_ips[1]: ...`), or a field of UpdateKeyRequest.key (`key.scopes: ...`)."""
    return re.match(rf"(key\.)?{re.escape(field)}(\[\d+\])?: ", error.details) is not None


def made_up_key(mode: str = "live") -> str:
    """A well-formed key (right shape and checksum) that keysvc never issued."""
    body = "".join(secrets.choice(BASE62) for _ in range(44))
    return with_checksum(f"ck_{mode}_{body}")


def outcome(result: keysvc_pb2.LeakedKey) -> str:
    return pb.LeakOutcome.Name(result.outcome)


def create(
    admin: KeyServiceClient,
    account: str,
    *,
    scopes: tuple[str, ...] = ("links:read",),
    mode: str = "live",
    name: str = "Production server",
    expire_time: datetime | None = None,
    allowed_ips: tuple[str, ...] = (),
) -> keysvc_pb2.CreateKeyResponse:
    return admin.create_key(
        account, name, mode, scopes, expire_time=expire_time, allowed_ips=allowed_ips
    )


def wait_for_verdict(decide: Callable[[], keysvc_pb2.AuthorizeResponse], expected: object) -> None:
    poll(
        lambda: verdict(decide()) == expected,
        timeout=EXPIRY_DEADLINE,
        what=f"Authorize to answer {expected}",
        interval=0.2,
    )


class TestCreateWithLimits:
    def test_the_expiry_and_the_addresses_are_kept(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """A key created with expire_time and allowed_ips (IPv4, CIDR, IPv6) carries both, is
        ACTIVE until then, and GetKey returns the same."""
        expiry = later(days=30)
        ips = ("203.0.113.7", "10.0.0.0/8", "2001:db8::/32")

        created = create(admin, account, expire_time=expiry, allowed_ips=ips)

        key = created.key
        assert when(key, "expire_time") == expiry
        assert sorted(key.allowed_ips) == sorted(ips)
        assert key.status == pb.KEY_STATUS_ACTIVE
        assert key.revocation_reason == ""
        assert admin.get_key(account, key.id) == key

    def test_without_them_the_key_never_expires_and_works_from_anywhere(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """A key created as before has no expire_time and no allowed_ips."""
        key = create(admin, account).key

        assert when(key, "expire_time") is None
        assert list(key.allowed_ips) == []

    def test_an_expiry_in_the_past_is_refused(self, admin: KeyServiceClient, account: str) -> None:
        """An expire_time already past is INVALID_ARGUMENT naming expire_time; no key is made."""
        with pytest.raises(InvalidArgument) as raised:
            create(admin, account, expire_time=later(seconds=-5))

        assert names_field(raised.value, "expire_time"), raised.value.details
        assert list(admin.iter_keys(account)) == []

    @pytest.mark.parametrize("address", ["not-an-ip", "10.0.0.0/33", "2001:db8::/129", ""])
    def test_a_bad_address_is_refused(
        self, admin: KeyServiceClient, account: str, address: str
    ) -> None:
        """An allowed_ips entry that is no address or CIDR range is INVALID_ARGUMENT naming
        allowed_ips."""
        with pytest.raises(InvalidArgument) as raised:
            create(admin, account, allowed_ips=("10.0.0.1", address))

        assert names_field(raised.value, "allowed_ips"), raised.value.details

    def test_more_than_a_hundred_addresses_are_refused(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """allowed_ips holds at most 100 entries: 101 are INVALID_ARGUMENT naming allowed_ips."""
        ips = tuple(f"10.0.{i // 256}.{i % 256}" for i in range(101))

        with pytest.raises(InvalidArgument) as raised:
            create(admin, account, allowed_ips=ips)

        assert names_field(raised.value, "allowed_ips"), raised.value.details


class TestExpiry:
    def test_a_key_stops_working_at_its_expire_time_for_good(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """A key hot in the cache is allowed until its expire_time, then refused 401 EXPIRED,
        listed as EXPIRED, and a leak report finds it already dead."""
        created = create(admin, account, expire_time=later(seconds=3))
        assert verdict(public.authorize(created.secret)) == ALLOWED

        wait_for_verdict(lambda: public.authorize(created.secret), EXPIRED)

        expire_time = when(created.key, "expire_time")
        assert expire_time is not None
        assert now() >= expire_time, "refused as expired before its expire_time"
        assert verdict(public.authorize(created.secret)) == EXPIRED
        assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_EXPIRED
        assert [k.id for k in admin.iter_keys(account, status="expired")] == [created.key.id]
        assert list(admin.iter_keys(account, status="active")) == []
        [result] = admin.revoke_leaked_keys([created.secret], source="test").results
        assert outcome(result) == "LEAK_OUTCOME_ALREADY_REVOKED"


class TestAuthorizeClientIp:
    @pytest.mark.parametrize(
        ("allowed", "client_ip", "expected"),
        [
            ("203.0.113.7", "203.0.113.7", ALLOWED),
            ("203.0.113.7", "203.0.113.8", IP_NOT_ALLOWED),
            ("10.0.0.0/8", "10.20.30.40", ALLOWED),
            ("10.0.0.0/8", "11.0.0.1", IP_NOT_ALLOWED),
            ("2001:db8::/32", "2001:db8:ffff::1", ALLOWED),
            ("2001:db8::/32", "2001:db9::1", IP_NOT_ALLOWED),
            ("2001:db8::5", "2001:db8::5", ALLOWED),
            ("10.0.0.0/8", "", IP_NOT_ALLOWED),
            ("10.0.0.0/8", "not-an-address", IP_NOT_ALLOWED),
        ],
        ids=[
            "ipv4-same", "ipv4-other", "cidr-inside", "cidr-outside", "ipv6-range-inside",
            "ipv6-range-outside", "ipv6-address", "missing", "garbage",
        ],
    )  # fmt: skip
    def test_a_restricted_key_is_allowed_only_from_its_addresses(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        allowed: str,
        client_ip: str,
        expected: tuple[int, str],
    ) -> None:
        """A key with allowed_ips is allowed from an address they hold, and refused 403
        IP_NOT_ALLOWED from any other, from none, and from one that is no address."""
        created = create(admin, account, allowed_ips=(allowed,))

        decision = public.authorize(created.secret, client_ip=client_ip)

        assert verdict(decision) == expected
        assert decision.key_id == created.key.id

    def test_an_unrestricted_key_works_from_any_address(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """A key without allowed_ips is allowed with or without a client_ip."""
        created = create(admin, account)

        assert verdict(public.authorize(created.secret)) == ALLOWED
        assert verdict(public.authorize(created.secret, client_ip="198.51.100.1")) == ALLOWED
        assert verdict(public.authorize(created.secret, client_ip="2001:db8::1")) == ALLOWED


class TestRevokeReason:
    def test_the_reason_is_kept_with_the_key_and_in_the_audit_trail(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """revoke_key(reason=) shows in the key, in GetKey and in the revocation's event."""
        created = create(admin, account)

        revoked = admin.revoke_key(account, created.key.id, reason="compromised")

        assert revoked.status == pb.KEY_STATUS_REVOKED
        assert revoked.revocation_reason == "compromised"
        assert admin.get_key(account, created.key.id).revocation_reason == "compromised"
        event = next(admin.iter_audit_events(account))
        assert (event.action, event.key_id, event.reason) == (
            pb.AUDIT_ACTION_KEY_REVOKED,
            created.key.id,
            "compromised",
        )

    def test_revoking_again_keeps_the_first_reason(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """A second RevokeKey with another reason changes neither revoked_at nor the reason."""
        created = create(admin, account)
        first = admin.revoke_key(account, created.key.id, reason="unused")

        second = admin.revoke_key(account, created.key.id, reason="compromised")

        assert second.revocation_reason == "unused"
        assert when(second, "revoked_at") == when(first, "revoked_at")

    def test_without_a_reason_there_is_none(self, admin: KeyServiceClient, account: str) -> None:
        """revoke_key without reason leaves revocation_reason empty, as before."""
        created = create(admin, account)

        assert admin.revoke_key(account, created.key.id).revocation_reason == ""

    def test_an_overlong_reason_is_refused(self, admin: KeyServiceClient, account: str) -> None:
        """A reason over 200 characters is INVALID_ARGUMENT naming reason; the key stays."""
        created = create(admin, account)

        with pytest.raises(InvalidArgument) as raised:
            admin.revoke_key(account, created.key.id, reason="x" * 201)

        assert names_field(raised.value, "reason"), raised.value.details
        assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_ACTIVE


class TestRollKey:
    def test_the_new_key_inherits_everything_and_the_old_keeps_working_for_the_grace(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """The new key has the old one's name, mode, scopes, allowed IPs and expiry and a new
        id and secret; the old one is ACTIVE until now + grace; both are allowed meanwhile;
        the audit trail records the roll with both key ids."""
        expiry = later(days=30)
        old = create(
            admin,
            account,
            mode="test",
            name="Checkout",
            scopes=("events:read", "links:read"),
            expire_time=expiry,
            allowed_ips=("10.0.0.0/8",),
        )

        before = now()
        rolled = admin.roll_key(account, old.key.id, grace=timedelta(hours=1))
        after = now()

        new = rolled.key
        assert KEY_PATTERN.fullmatch(rolled.secret)
        assert rolled.secret.startswith("ck_test_")
        assert rolled.secret[8:20] == new.id != old.key.id
        assert rolled.secret != old.secret
        assert (new.name, new.mode, list(new.scopes), list(new.allowed_ips)) == (
            "Checkout",
            pb.MODE_TEST,
            ["events:read", "links:read"],
            ["10.0.0.0/8"],
        )
        assert when(new, "expire_time") == expiry
        assert new.status == pb.KEY_STATUS_ACTIVE
        assert rolled.rolled.id == old.key.id
        assert rolled.rolled.status == pb.KEY_STATUS_ACTIVE
        old_expiry = when(rolled.rolled, "expire_time")
        assert old_expiry is not None
        grace = timedelta(hours=1)
        assert before + grace - SLACK <= old_expiry <= after + grace + SLACK
        assert admin.get_key(account, old.key.id) == rolled.rolled
        assert admin.get_key(account, new.id) == new
        for secret in (old.secret, rolled.secret):
            assert verdict(public.authorize(secret, client_ip="10.9.8.7")) == ALLOWED
        rolls = [
            (e.key_id, e.related_key_id)
            for e in admin.iter_audit_events(account)
            if e.action == pb.AUDIT_ACTION_KEY_ROLLED
        ]
        assert rolls == [(old.key.id, new.id)]

    def test_grace_zero_revokes_the_old_key_at_once(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """With grace 0 the old key comes back REVOKED and the very next Authorize refuses it
        401 REVOKED, while the new key is allowed."""
        old = create(admin, account)
        assert verdict(public.authorize(old.secret)) == ALLOWED

        rolled = admin.roll_key(account, old.key.id, grace=timedelta(0))

        assert rolled.rolled.status == pb.KEY_STATUS_REVOKED
        assert when(rolled.rolled, "revoked_at") is not None
        assert verdict(public.authorize(old.secret)) == REVOKED
        assert verdict(public.authorize(rolled.secret)) == ALLOWED

    def test_a_roll_never_extends_a_keys_life(self, admin: KeyServiceClient, account: str) -> None:
        """Rolling a key that expires in 10 minutes with 7 days of grace leaves the old key
        expiring in 10 minutes, and gives the new key the same expiry."""
        expiry = later(minutes=10)
        old = create(admin, account, expire_time=expiry)

        rolled = admin.roll_key(account, old.key.id, grace=timedelta(days=7))

        assert when(rolled.rolled, "expire_time") == expiry
        assert when(rolled.key, "expire_time") == expiry

    def test_after_the_grace_the_old_key_is_expired_and_cannot_be_rolled(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """Once the grace is over the old key is refused 401 EXPIRED and listed EXPIRED; the
        new one is still allowed; rolling the expired key is FAILED_PRECONDITION."""
        old = create(admin, account)
        rolled = admin.roll_key(account, old.key.id, grace=timedelta(seconds=2))
        assert verdict(public.authorize(old.secret)) == ALLOWED

        wait_for_verdict(lambda: public.authorize(old.secret), EXPIRED)

        assert admin.get_key(account, old.key.id).status == pb.KEY_STATUS_EXPIRED
        assert verdict(public.authorize(rolled.secret)) == ALLOWED
        with pytest.raises(FailedPrecondition):
            admin.roll_key(account, old.key.id, grace=timedelta(hours=1))

    def test_rolling_a_revoked_key_is_refused(self, admin: KeyServiceClient, account: str) -> None:
        """Rolling a revoked key is FAILED_PRECONDITION and makes no new key."""
        old = create(admin, account)
        admin.revoke_key(account, old.key.id)

        with pytest.raises(FailedPrecondition):
            admin.roll_key(account, old.key.id, grace=timedelta(hours=1))

        assert [k.id for k in admin.iter_keys(account)] == [old.key.id]

    @pytest.mark.parametrize(
        "grace",
        [timedelta(days=7, seconds=1), timedelta(seconds=-1)],
        ids=["over-7-days", "negative"],
    )
    def test_a_grace_out_of_range_is_refused(
        self, admin: KeyServiceClient, account: str, grace: timedelta
    ) -> None:
        """A grace over 7 days or below 0 is INVALID_ARGUMENT naming grace; nothing changes."""
        old = create(admin, account)

        with pytest.raises(InvalidArgument) as raised:
            admin.roll_key(account, old.key.id, grace=grace)

        assert names_field(raised.value, "grace"), raised.value.details
        assert admin.get_key(account, old.key.id) == old.key

    def test_another_accounts_key_is_not_found(self, admin: KeyServiceClient, account: str) -> None:
        """Rolling a key under another account is NOT_FOUND, like any other admin RPC."""
        old = create(admin, account)

        with pytest.raises(NotFound):
            admin.roll_key(f"{account}_other", old.key.id, grace=timedelta(hours=1))


class TestUpdateKey:
    def test_only_the_fields_given_change(self, admin: KeyServiceClient, account: str) -> None:
        """Renaming leaves scopes, addresses, expiry, id, mode and prefix as they were."""
        old = create(
            admin,
            account,
            scopes=("links:read", "links:write"),
            expire_time=later(days=3),
            allowed_ips=("192.0.2.0/24",),
        ).key

        updated = admin.update_key(account, old.id, name="Renamed server")

        assert updated.name == "Renamed server"
        expected = pb.Key()
        expected.CopyFrom(old)
        expected.name = "Renamed server"
        assert updated == expected
        assert admin.get_key(account, old.id) == updated

    def test_a_narrowed_scope_is_refused_right_after(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """Once UpdateKey removed links:write, the very next Authorize needing it is 403, even
        though the key was hot in the cache; links:read still passes."""
        created = create(admin, account, scopes=("links:read", "links:write"))
        assert verdict(public.authorize(created.secret, ["links:write"])) == ALLOWED

        updated = admin.update_key(account, created.key.id, scopes=["links:read"])

        assert list(updated.scopes) == ["links:read"]
        decision = public.authorize(created.secret, ["links:write"])
        assert verdict(decision) == (403, "REASON_INSUFFICIENT_SCOPE")
        assert list(decision.missing_scopes) == ["links:write"]
        assert verdict(public.authorize(created.secret, ["links:read"])) == ALLOWED

    def test_addresses_can_be_restricted_and_freed(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """allowed_ips set on a key used from anywhere holds at once; allowed_ips=[] lifts it."""
        created = create(admin, account)
        assert verdict(public.authorize(created.secret)) == ALLOWED

        restricted = admin.update_key(account, created.key.id, allowed_ips=["192.0.2.0/24"])

        assert list(restricted.allowed_ips) == ["192.0.2.0/24"]
        assert verdict(public.authorize(created.secret)) == IP_NOT_ALLOWED
        assert verdict(public.authorize(created.secret, client_ip="192.0.2.9")) == ALLOWED

        freed = admin.update_key(account, created.key.id, allowed_ips=[])

        assert list(freed.allowed_ips) == []
        assert verdict(public.authorize(created.secret)) == ALLOWED

    def test_an_expiry_can_be_set_and_cleared(self, admin: KeyServiceClient, account: str) -> None:
        """expire_time=<time> sets the expiry; expire_time=None makes the key never expire."""
        created = create(admin, account)
        expiry = later(days=1)

        expiring = admin.update_key(account, created.key.id, expire_time=expiry)
        assert when(expiring, "expire_time") == expiry
        assert expiring.status == pb.KEY_STATUS_ACTIVE

        cleared = admin.update_key(account, created.key.id, expire_time=None)
        assert when(cleared, "expire_time") is None
        assert when(admin.get_key(account, created.key.id), "expire_time") is None

    def test_an_earlier_expiry_holds_at_once(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """Moving a hot key's expiry to a few seconds from now has it refused 401 EXPIRED
        then, though it was cached with no expiry."""
        created = create(admin, account)
        assert verdict(public.authorize(created.secret)) == ALLOWED

        admin.update_key(account, created.key.id, expire_time=later(seconds=2))

        wait_for_verdict(lambda: public.authorize(created.secret), EXPIRED)

    def test_the_audit_trail_records_what_changed(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """An update is one KEY_UPDATED event listing each changed field, before and after."""
        created = create(admin, account, name="Before", scopes=("links:read",))

        admin.update_key(account, created.key.id, name="After", scopes=["events:read"])

        event = next(admin.iter_audit_events(account))
        assert (event.action, event.key_id) == (pb.AUDIT_ACTION_KEY_UPDATED, created.key.id)
        changes = {change.field: change for change in event.changes}
        assert set(changes) == {"name", "scopes"}
        assert (changes["name"].before, changes["name"].after) == ("Before", "After")
        assert "links:read" in changes["scopes"].before
        assert "events:read" in changes["scopes"].after

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"scopes": []}, "scopes"),
            ({"scopes": ["links:admin"]}, "scopes"),
            ({"name": ""}, "name"),
            ({"allowed_ips": ["300.1.2.3"]}, "allowed_ips"),
            ({"expire_time": datetime(2020, 1, 1, tzinfo=UTC)}, "expire_time"),
        ],
        ids=["no-scopes", "unknown-scope", "empty-name", "bad-address", "past-expiry"],
    )
    def test_bad_values_are_refused_naming_the_field(
        self, admin: KeyServiceClient, account: str, change: dict[str, object], field: str
    ) -> None:
        """Each bad value is INVALID_ARGUMENT naming its field, and the key is unchanged."""
        created = create(admin, account)

        with pytest.raises(InvalidArgument) as raised:
            admin.update_key(account, created.key.id, **change)  # type: ignore[arg-type]

        assert names_field(raised.value, field), raised.value.details
        assert admin.get_key(account, created.key.id) == created.key

    def test_a_revoked_key_cannot_be_updated(self, admin: KeyServiceClient, account: str) -> None:
        """Updating a revoked key is FAILED_PRECONDITION."""
        created = create(admin, account)
        admin.revoke_key(account, created.key.id)

        with pytest.raises(FailedPrecondition):
            admin.update_key(account, created.key.id, scopes=["links:read", "links:write"])


class TestRevokeLeakedKeys:
    def test_each_key_gets_its_outcome_in_order(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> None:
        """Real active keys of any account are revoked; a revoked one is ALREADY_REVOKED; a
        malformed string, a made-up key and a real key id with a wrong secret are NOT_FOUND
        and reveal no key id or account; the answer never carries a secret."""
        other_account = f"{account}_other"
        mine = create(admin, account)
        theirs = create(admin, other_account, mode="test")
        revoked = create(admin, account)
        admin.revoke_key(account, revoked.key.id)
        wrong_secret = with_checksum(mine.secret[:20] + theirs.secret[20:52])
        made_up = made_up_key()
        sent = [mine.secret, theirs.secret, revoked.secret, "not-a-key", made_up, wrong_secret]

        response = admin.revoke_leaked_keys(sent, source="https://github.com/acme/app/pull/7")

        assert [outcome(r) for r in response.results] == [
            "LEAK_OUTCOME_REVOKED",
            "LEAK_OUTCOME_REVOKED",
            "LEAK_OUTCOME_ALREADY_REVOKED",
            "LEAK_OUTCOME_NOT_FOUND",
            "LEAK_OUTCOME_NOT_FOUND",
            "LEAK_OUTCOME_NOT_FOUND",
        ]
        real = response.results[:3]
        assert [(r.prefix, r.key_id, r.account_id) for r in real] == [
            (mine.key.prefix, mine.key.id, account),
            (theirs.key.prefix, theirs.key.id, other_account),
            (revoked.key.prefix, revoked.key.id, account),
        ]
        # A prefix is the string's own first characters, when it has the shape of a key.
        assert [r.prefix for r in response.results[3:]] == ["", made_up[:14], mine.key.prefix]
        for result in response.results[3:]:
            assert (result.key_id, result.account_id) == ("", "")
        raw = response.SerializeToString()
        for secret in (mine.secret, theirs.secret, revoked.secret, wrong_secret):
            assert secret[20:].encode() not in raw
        assert verdict(public.authorize(mine.secret)) == REVOKED
        assert verdict(public.authorize(theirs.secret)) == REVOKED
        assert admin.get_key(other_account, theirs.key.id).status == pb.KEY_STATUS_REVOKED

    def test_each_revocation_is_audited_as_a_leak_with_its_source(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """The leaked key's account shows a KEY_LEAK_REVOKED event whose reason is the source;
        the key already revoked gets no second event."""
        leaked = create(admin, account)
        source = "https://github.com/acme/app/blob/main/.env"

        admin.revoke_leaked_keys([leaked.secret], source=source)
        again = admin.revoke_leaked_keys([leaked.secret], source=source)

        assert outcome(again.results[0]) == "LEAK_OUTCOME_ALREADY_REVOKED"
        events = [(e.action, e.key_id, e.reason) for e in admin.iter_audit_events(account)]
        assert events[0] == (pb.AUDIT_ACTION_KEY_LEAK_REVOKED, leaked.key.id, source)
        assert [e for e in events if e[0] == pb.AUDIT_ACTION_KEY_LEAK_REVOKED] == [events[0]]

    @pytest.mark.parametrize("count", [0, 101], ids=["none", "over-100"])
    def test_none_or_too_many_keys_are_refused(
        self, admin: KeyServiceClient, account: str, count: int
    ) -> None:
        """No keys, or more than 100, is INVALID_ARGUMENT naming keys, revoking nothing, and
        the error quotes none of them."""
        created = create(admin, account)
        sent = [created.secret] * count

        with pytest.raises(InvalidArgument) as raised:
            admin.revoke_leaked_keys(sent)

        assert names_field(raised.value, "keys"), raised.value.details
        assert created.secret not in str(raised.value)
        assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_ACTIVE

    def test_an_overlong_source_is_refused(self, admin: KeyServiceClient, account: str) -> None:
        """A source of 10,000 characters is INVALID_ARGUMENT naming source; nothing revoked."""
        created = create(admin, account)

        with pytest.raises(InvalidArgument) as raised:
            admin.revoke_leaked_keys([created.secret], source="s" * 10_000)

        assert names_field(raised.value, "source"), raised.value.details
        assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_ACTIVE

    def test_it_is_for_admins_only(self, server: ServerProcess, account: str) -> None:
        """Without an admin credential, RevokeLeakedKeys is UNAUTHENTICATED and revokes
        nothing."""
        with server.client() as admin:
            created = create(admin, account)
            with server.client(admin=False) as anonymous, pytest.raises(Unauthenticated):
                anonymous.revoke_leaked_keys([created.secret])
            assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_ACTIVE


class TestAsyncClient:
    def test_the_whole_lifecycle(self, server: ServerProcess, account: str) -> None:
        """The asyncio client creates with expiry and addresses, authorizes with client_ip,
        updates, rolls, revokes with a reason and revokes leaked keys like the blocking one."""
        expiry = later(days=30)

        async def scenario() -> dict[str, object]:
            async with server.async_client() as admin, server.async_client(admin=False) as public:
                created = await admin.create_key(
                    account, "Async", "live", ["links:read", "links:write"],
                    expire_time=expiry, allowed_ips=["10.0.0.0/8"],
                )  # fmt: skip
                outcomes: dict[str, object] = {"created": created}
                outcomes["from-inside"] = verdict(
                    await public.authorize(created.secret, ["links:read"], client_ip="10.1.1.1")
                )
                outcomes["from-outside"] = verdict(
                    await public.authorize(created.secret, client_ip="192.0.2.1")
                )
                outcomes["updated"] = await admin.update_key(
                    account, created.key.id, scopes=["links:read"], allowed_ips=[],
                    expire_time=None,
                )  # fmt: skip
                outcomes["narrowed"] = verdict(
                    await public.authorize(created.secret, ["links:write"])
                )
                rolled = await admin.roll_key(account, created.key.id, grace=timedelta(0))
                outcomes["rolled"] = rolled
                outcomes["old-after-roll"] = verdict(await public.authorize(created.secret))
                outcomes["revoked"] = await admin.revoke_key(
                    account, rolled.key.id, reason="unused"
                )
                spare = await admin.create_key(account, "Spare", "test", ["events:read"])
                outcomes["leaked"] = await admin.revoke_leaked_keys(
                    [spare.secret, "not-a-key"], source="async test"
                )
                try:
                    await admin.roll_key(account, created.key.id, grace=timedelta(hours=1))
                except FailedPrecondition as err:
                    outcomes["roll-revoked"] = err
            return outcomes

        outcomes = asyncio.run(scenario())

        created = outcomes["created"]
        assert isinstance(created, pb.CreateKeyResponse)
        assert when(created.key, "expire_time") == expiry
        assert list(created.key.allowed_ips) == ["10.0.0.0/8"]
        assert outcomes["from-inside"] == ALLOWED
        assert outcomes["from-outside"] == IP_NOT_ALLOWED
        updated = outcomes["updated"]
        assert isinstance(updated, pb.Key)
        assert (list(updated.scopes), list(updated.allowed_ips)) == (["links:read"], [])
        assert when(updated, "expire_time") is None
        assert outcomes["narrowed"] == (403, "REASON_INSUFFICIENT_SCOPE")
        rolled = outcomes["rolled"]
        assert isinstance(rolled, pb.RollKeyResponse)
        assert rolled.rolled.status == pb.KEY_STATUS_REVOKED
        assert list(rolled.key.scopes) == ["links:read"]
        assert outcomes["old-after-roll"] == REVOKED
        revoked = outcomes["revoked"]
        assert isinstance(revoked, pb.Key)
        assert (revoked.status, revoked.revocation_reason) == (pb.KEY_STATUS_REVOKED, "unused")
        leaked = outcomes["leaked"]
        assert isinstance(leaked, pb.RevokeLeakedKeysResponse)
        assert [outcome(r) for r in leaked.results] == [
            "LEAK_OUTCOME_REVOKED",
            "LEAK_OUTCOME_NOT_FOUND",
        ]
        assert isinstance(outcomes.get("roll-revoked"), FailedPrecondition)

    def test_bad_input_raises_the_same_errors(self, server: ServerProcess, account: str) -> None:
        """The asyncio client raises InvalidArgument naming the field, as the blocking one."""

        async def scenario() -> list[KeysvcError]:
            errors: list[KeysvcError] = []
            async with server.async_client() as admin:
                created = await admin.create_key(account, "n", "live", ["links:read"])
                for call in (
                    admin.roll_key(account, created.key.id, grace=timedelta(days=8)),
                    admin.revoke_leaked_keys([]),
                    admin.create_key(account, "n", "live", ["links:read"], allowed_ips=["x"]),
                ):
                    try:
                        await call
                    except KeysvcError as err:
                        errors.append(err)
            return errors

        errors = asyncio.run(scenario())

        assert [type(e) for e in errors] == [InvalidArgument] * 3
        for error, field in zip(errors, ["grace", "keys", "allowed_ips"], strict=True):
            assert names_field(error, field), error.details
