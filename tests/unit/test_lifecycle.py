"""The key lifecycle as the use cases keep it, on both databases: expiry, allowed IPs, rolling
with a grace period, updates, revocation reasons and revoking leaked keys. Two replicas share
the database (and the test's wall clock), each with its own cache, as two servers would."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from keysvc.core import keys
from keysvc.core.errors import FailedPrecondition, InvalidArgument, NotFound
from keysvc.core.model import (
    Actor,
    AuditAction,
    CreatedKey,
    FieldChange,
    KeyStatus,
    KeyUpdate,
    LeakOutcome,
    Mode,
    Reason,
)

from .conftest import Keysvc
from .support import async_test, secret_of, signed

ADMIN = Actor("admin-token", "ipv4:127.0.0.1:50000")
SCANNER = Actor("secret-scanner", "ipv4:127.0.0.1:50001")
READ_WRITE = ("links:read", "links:write")


async def _create(
    keysvc: Keysvc,
    *,
    scopes: tuple[str, ...] = READ_WRITE,
    expire_time: datetime | None = None,
    allowed_ips: tuple[str, ...] = (),
) -> CreatedKey:
    return await keysvc.admin.create_key(
        "acct_1",
        "Production server",
        Mode.LIVE,
        scopes,
        ADMIN,
        expire_time=expire_time,
        allowed_ips=allowed_ips,
    )


async def _reasons(
    replicas: list[Keysvc], raw_key: str, scopes: tuple[str, ...] = (), client_ip: str = ""
) -> set[Reason]:
    return {
        (await replica.authorizer.authorize(raw_key, scopes, None, client_ip)).reason
        for replica in replicas
    }


class TestExpiry:
    @async_test
    async def test_a_key_stops_working_at_its_expire_time_in_every_cache(
        self, keysvc: Keysvc
    ) -> None:
        """Hot on two replicas until its expire_time, then 401 EXPIRED on both, decided from
        the cached grant; listed as expired."""
        other = await keysvc.replica()
        created = await _create(keysvc, expire_time=keysvc.clock.now + timedelta(hours=1))
        assert await _reasons([keysvc, other], created.raw_key) == {Reason.ALLOWED}
        reads = keysvc.verifier.verifications + other.verifier.verifications
        keysvc.clock.advance(3599)
        assert await _reasons([keysvc, other], created.raw_key) == {Reason.ALLOWED}
        keysvc.clock.advance(1)
        assert await _reasons([keysvc, other], created.raw_key) == {Reason.EXPIRED}
        assert keysvc.verifier.verifications + other.verifier.verifications == reads
        key = await keysvc.admin.get_key("acct_1", created.key.id)
        assert key.status_at(keysvc.clock.now) is KeyStatus.EXPIRED
        page = await keysvc.admin.list_keys("acct_1", status=KeyStatus.EXPIRED)
        assert [k.id for k in page.keys] == [created.key.id]
        assert (await keysvc.admin.list_keys("acct_1", status=KeyStatus.ACTIVE)).keys == []

    @async_test
    async def test_an_expire_time_in_the_past_is_refused(self, keysvc: Keysvc) -> None:
        """expire_time must lie ahead: the message names the field."""
        with pytest.raises(InvalidArgument, match="expire_time: must be in the future"):
            await _create(keysvc, expire_time=keysvc.clock.now)

    @async_test
    async def test_an_expired_key_is_never_reinstated(self, keysvc: Keysvc) -> None:
        """Expired, it cannot be updated (a later expiry) nor rolled: FAILED_PRECONDITION."""
        created = await _create(keysvc, expire_time=keysvc.clock.now + timedelta(minutes=1))
        keysvc.clock.advance(61)
        later = KeyUpdate(frozenset({"expire_time"}), expire_time=keysvc.clock.now + timedelta(1))
        with pytest.raises(FailedPrecondition, match="expired"):
            await keysvc.admin.update_key("acct_1", created.key.id, later, ADMIN)
        with pytest.raises(FailedPrecondition, match="expired"):
            await keysvc.admin.roll_key("acct_1", created.key.id, timedelta(hours=1), ADMIN)
        assert await _reasons([keysvc], created.raw_key) == {Reason.EXPIRED}


class TestAllowedIps:
    @pytest.mark.parametrize(
        ("allowed", "inside", "outside"),
        [
            (("203.0.113.7",), "203.0.113.7", "203.0.113.8"),
            (("10.0.0.0/8",), "10.200.3.4", "11.0.0.1"),
            (("2001:db8::/32",), "2001:db8:5::1", "2001:db9::1"),
            (("2001:db8::1",), "2001:db8::1", "2001:db8::2"),
            (("198.51.100.0/24",), "::ffff:198.51.100.9", "::ffff:198.51.101.9"),
        ],
        ids=["IPv4 address", "IPv4 range", "IPv6 range", "IPv6 address", "IPv4-mapped IPv6"],
    )
    @async_test
    async def test_a_restricted_key_is_allowed_only_from_its_addresses(
        self, keysvc: Keysvc, allowed: tuple[str, ...], inside: str, outside: str
    ) -> None:
        """200 from inside the list; 403 IP_NOT_ALLOWED from outside it, on both replicas."""
        other = await keysvc.replica()
        created = await _create(keysvc, allowed_ips=allowed)
        replicas = [keysvc, other]
        assert await _reasons(replicas, created.raw_key, client_ip=inside) == {Reason.ALLOWED}
        assert await _reasons(replicas, created.raw_key, client_ip=outside) == {
            Reason.IP_NOT_ALLOWED
        }

    @pytest.mark.parametrize("client_ip", ["", "not an address", "10.0.0.1:443", "[10.0.0.1]"])
    @async_test
    async def test_no_usable_client_ip_is_refused(self, keysvc: Keysvc, client_ip: str) -> None:
        """A restricted key with no address, or one that does not parse, is refused: 403."""
        created = await _create(keysvc, allowed_ips=("10.0.0.0/8",))
        decision = await keysvc.authorizer.authorize(created.raw_key, (), None, client_ip)
        assert (decision.reason, decision.http_status) == (Reason.IP_NOT_ALLOWED, 403)

    @async_test
    async def test_an_unrestricted_key_needs_no_address(self, keysvc: Keysvc) -> None:
        """No allowed_ips: any address, or none at all, is fine."""
        created = await _create(keysvc)
        assert await _reasons([keysvc], created.raw_key) == {Reason.ALLOWED}
        assert await _reasons([keysvc], created.raw_key, client_ip="192.0.2.1") == {Reason.ALLOWED}

    @async_test
    async def test_entries_are_normalized(self, keysvc: Keysvc) -> None:
        """Duplicates fold, single addresses read as themselves, ranges in canonical form."""
        created = await _create(
            keysvc, allowed_ips=(" 2001:DB8::/32", "10.0.0.0/8", "203.0.113.7/32", "10.0.0.0/8")
        )
        assert created.key.allowed_ips == ("10.0.0.0/8", "203.0.113.7", "2001:db8::/32")

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            ("10.0.0.300", r"allowed_ips\[0\]: '10.0.0.300' is not an IP address or CIDR range"),
            ("10.0.0.5/24", r"allowed_ips\[0\]: '10.0.0.5/24' has host bits set; did you mean"),
            ("", r"allowed_ips\[0\]: empty"),
            (
                "::ffff:10.0.0.1",
                r"allowed_ips\[0\]: .* mapped into IPv6; write it as IPv4: 10.0.0.1",
            ),
            ("::ffff:10.0.0.0/104", r"mapped into IPv6; write it as IPv4: 10.0.0.0/8"),
            ("fe80::1%eth0", r"allowed_ips\[0\]: 'fe80::1%eth0' names an interface"),
        ],
    )
    @async_test
    async def test_a_bad_entry_is_named(self, keysvc: Keysvc, entry: str, message: str) -> None:
        """Each bad entry is refused with its index and what is wrong; nothing is stored."""
        with pytest.raises(InvalidArgument, match=message):
            await _create(keysvc, allowed_ips=(entry,))
        assert (await keysvc.admin.list_keys("acct_1")).keys == []


class TestRollKey:
    @async_test
    async def test_the_old_key_works_for_the_grace_then_expires_everywhere(
        self, keysvc: Keysvc
    ) -> None:
        """The new key has the old one's name, mode, scopes and addresses; both work during
        the grace, on both replicas; after it the old key is 401 EXPIRED on both."""
        other = await keysvc.replica()
        old = await _create(keysvc, allowed_ips=("10.0.0.0/8",))
        assert await _reasons([keysvc, other], old.raw_key, client_ip="10.1.1.1") == {
            Reason.ALLOWED
        }
        rolled = await keysvc.admin.roll_key("acct_1", old.key.id, timedelta(hours=24), ADMIN)
        new = rolled.key
        assert (new.name, new.mode, new.scopes, new.allowed_ips) == (
            old.key.name,
            old.key.mode,
            old.key.scopes,
            old.key.allowed_ips,
        )
        assert new.id != old.key.id and keys.parse(rolled.raw_key) is not None
        assert rolled.rolled.expire_time == keysvc.clock.now + timedelta(hours=24)
        for raw_key in (old.raw_key, rolled.raw_key):
            assert await _reasons([keysvc, other], raw_key, client_ip="10.1.1.1") == {
                Reason.ALLOWED
            }
        keysvc.clock.advance(24 * 3600)
        assert await _reasons([keysvc, other], old.raw_key, client_ip="10.1.1.1") == {
            Reason.EXPIRED
        }
        assert await _reasons([keysvc, other], rolled.raw_key, client_ip="10.1.1.1") == {
            Reason.ALLOWED
        }

    @async_test
    async def test_a_roll_never_extends_a_keys_life(self, keysvc: Keysvc) -> None:
        """A key expiring in an hour, rolled with a day's grace, still expires in an hour; the
        new key inherits that expiry too."""
        ends = keysvc.clock.now + timedelta(hours=1)
        old = await _create(keysvc, expire_time=ends)
        rolled = await keysvc.admin.roll_key("acct_1", old.key.id, timedelta(days=1), ADMIN)
        assert rolled.rolled.expire_time == ends
        assert rolled.key.expire_time == ends
        keysvc.clock.advance(3600)
        assert await _reasons([keysvc], old.raw_key) == {Reason.EXPIRED}
        assert await _reasons([keysvc], rolled.raw_key) == {Reason.EXPIRED}

    @async_test
    async def test_no_grace_revokes_the_old_key_at_once(self, keysvc: Keysvc) -> None:
        """Grace 0: the old key is revoked (reason "rolled") on both replicas when it returns."""
        other = await keysvc.replica()
        old = await _create(keysvc)
        assert await _reasons([keysvc, other], old.raw_key) == {Reason.ALLOWED}
        rolled = await keysvc.admin.roll_key("acct_1", old.key.id, timedelta(0), ADMIN)
        assert rolled.rolled.revoked_at == keysvc.clock.now
        assert rolled.rolled.revocation_reason == "rolled"
        assert await _reasons([keysvc, other], old.raw_key) == {Reason.REVOKED}
        assert await _reasons([keysvc, other], rolled.raw_key) == {Reason.ALLOWED}

    @async_test
    async def test_the_audit_trail_names_both_keys(self, keysvc: Keysvc) -> None:
        """A roll is recorded against the old key with the new one's id, and the new key's
        creation beside it."""
        old = await _create(keysvc)
        rolled = await keysvc.admin.roll_key("acct_1", old.key.id, timedelta(hours=1), ADMIN)
        events = (await keysvc.admin.list_audit_events("acct_1")).events
        roll = [e for e in events if e.action is AuditAction.KEY_ROLLED]
        assert [(e.key_id, e.related_key_id, e.actor) for e in roll] == [
            (old.key.id, rolled.key.id, "admin-token")
        ]
        created = {e.key_id for e in events if e.action is AuditAction.KEY_CREATED}
        assert created == {old.key.id, rolled.key.id}

    @async_test
    async def test_a_revoked_key_cannot_be_rolled(self, keysvc: Keysvc) -> None:
        """FAILED_PRECONDITION, and no new key appears."""
        old = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", old.key.id, ADMIN)
        with pytest.raises(FailedPrecondition, match="revoked"):
            await keysvc.admin.roll_key("acct_1", old.key.id, timedelta(hours=1), ADMIN)
        assert [k.id for k in (await keysvc.admin.list_keys("acct_1")).keys] == [old.key.id]

    @pytest.mark.parametrize(
        ("grace", "message"),
        [
            (timedelta(seconds=-1), "grace: must not be negative"),
            (timedelta(days=7, seconds=1), "grace: at most 7 days"),
        ],
    )
    @async_test
    async def test_a_grace_out_of_bounds_is_refused(
        self, keysvc: Keysvc, grace: timedelta, message: str
    ) -> None:
        """Grace runs from 0 to 7 days; the message names the field."""
        old = await _create(keysvc)
        with pytest.raises(InvalidArgument, match=message):
            await keysvc.admin.roll_key("acct_1", old.key.id, grace, ADMIN)

    @async_test
    async def test_another_accounts_key_is_not_found(self, keysvc: Keysvc) -> None:
        old = await _create(keysvc)
        with pytest.raises(NotFound):
            await keysvc.admin.roll_key("acct_2", old.key.id, timedelta(hours=1), ADMIN)


class TestUpdateKey:
    @async_test
    async def test_a_scope_removed_is_refused_on_every_replica_once_it_returns(
        self, keysvc: Keysvc
    ) -> None:
        """links:write, hot on two replicas, is 403 on both right after the update returns;
        links:read still works."""
        other = await keysvc.replica()
        created = await _create(keysvc)
        replicas = [keysvc, other]
        assert await _reasons(replicas, created.raw_key, ("links:write",)) == {Reason.ALLOWED}
        update = KeyUpdate(frozenset({"scopes"}), scopes=("links:read",))
        updated = await other.admin.update_key("acct_1", created.key.id, update, ADMIN)
        assert updated.scopes == ("links:read",)
        assert await _reasons(replicas, created.raw_key, ("links:write",)) == {
            Reason.INSUFFICIENT_SCOPE
        }
        assert await _reasons(replicas, created.raw_key, ("links:read",)) == {Reason.ALLOWED}

    @async_test
    async def test_an_address_range_added_is_enforced_everywhere(self, keysvc: Keysvc) -> None:
        """A key usable from anywhere, restricted to 10.0.0.0/8: other addresses 403 on both."""
        other = await keysvc.replica()
        created = await _create(keysvc)
        assert await _reasons([keysvc, other], created.raw_key, client_ip="192.0.2.1") == {
            Reason.ALLOWED
        }
        update = KeyUpdate(frozenset({"allowed_ips"}), allowed_ips=("10.0.0.0/8",))
        await keysvc.admin.update_key("acct_1", created.key.id, update, ADMIN)
        assert await _reasons([keysvc, other], created.raw_key, client_ip="192.0.2.1") == {
            Reason.IP_NOT_ALLOWED
        }

    @async_test
    async def test_an_earlier_expiry_holds_everywhere(self, keysvc: Keysvc) -> None:
        other = await keysvc.replica()
        created = await _create(keysvc)
        assert await _reasons([keysvc, other], created.raw_key) == {Reason.ALLOWED}
        soon = keysvc.clock.now + timedelta(minutes=5)
        update = KeyUpdate(frozenset({"expire_time"}), expire_time=soon)
        await keysvc.admin.update_key("acct_1", created.key.id, update, ADMIN)
        keysvc.clock.advance(300)
        assert await _reasons([keysvc, other], created.raw_key) == {Reason.EXPIRED}

    @async_test
    async def test_only_the_named_fields_change_and_the_audit_says_how(
        self, keysvc: Keysvc
    ) -> None:
        """Name and scopes change; allowed IPs, mode and id stay; the audit trail records each
        changed field before and after."""
        created = await _create(keysvc, allowed_ips=("10.0.0.0/8",))
        update = KeyUpdate(
            frozenset({"name", "scopes"}),
            name="Billing worker",
            scopes=("links:read", "sessions:write"),
            allowed_ips=("192.0.2.0/24",),  # not named: ignored
        )
        updated = await keysvc.admin.update_key("acct_1", created.key.id, update, ADMIN)
        assert (updated.name, updated.scopes, updated.allowed_ips) == (
            "Billing worker",
            ("links:read", "sessions:write"),
            ("10.0.0.0/8",),
        )
        assert await keysvc.admin.get_key("acct_1", created.key.id) == updated
        (event,) = [
            e
            for e in (await keysvc.admin.list_audit_events("acct_1")).events
            if e.action is AuditAction.KEY_UPDATED
        ]
        assert event.changes == (
            FieldChange("name", "Production server", "Billing worker"),
            FieldChange("scopes", "links:read links:write", "links:read sessions:write"),
        )

    @async_test
    async def test_a_revoked_key_cannot_be_changed(self, keysvc: Keysvc) -> None:
        created = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        update = KeyUpdate(frozenset({"name"}), name="Again")
        with pytest.raises(FailedPrecondition, match="revoked"):
            await keysvc.admin.update_key("acct_1", created.key.id, update, ADMIN)

    @pytest.mark.parametrize(
        ("update", "message"),
        [
            (KeyUpdate(frozenset({"scopes"}), scopes=()), "scopes: a key needs at least one"),
            (KeyUpdate(frozenset({"scopes"}), scopes=("links:delete",)), "unknown scope"),
            (KeyUpdate(frozenset({"name"}), name=" "), "name: required"),
            (KeyUpdate(frozenset({"allowed_ips"}), allowed_ips=("x",)), r"allowed_ips\[0\]"),
        ],
        ids=["no scopes", "unknown scope", "empty name", "bad address"],
    )
    @async_test
    async def test_bad_values_are_named_and_change_nothing(
        self, keysvc: Keysvc, update: KeyUpdate, message: str
    ) -> None:
        created = await _create(keysvc)
        with pytest.raises(InvalidArgument, match=message):
            await keysvc.admin.update_key("acct_1", created.key.id, update, ADMIN)
        assert await keysvc.admin.get_key("acct_1", created.key.id) == created.key


class TestRevocationReason:
    @async_test
    async def test_the_reason_is_kept_with_the_key_and_in_the_audit_trail(
        self, keysvc: Keysvc
    ) -> None:
        created = await _create(keysvc)
        revoked = await keysvc.admin.revoke_key(
            "acct_1", created.key.id, ADMIN, reason="compromised"
        )
        assert revoked.revocation_reason == "compromised"
        (event,) = [
            e
            for e in (await keysvc.admin.list_audit_events("acct_1")).events
            if e.action is AuditAction.KEY_REVOKED
        ]
        assert event.reason == "compromised"

    @async_test
    async def test_an_overlong_reason_is_refused(self, keysvc: Keysvc) -> None:
        created = await _create(keysvc)
        with pytest.raises(InvalidArgument, match="reason: at most 200 characters"):
            await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN, reason="x" * 201)
        assert (await keysvc.admin.get_key("acct_1", created.key.id)).revoked_at is None


class TestRevokeLeakedKeys:
    @async_test
    async def test_real_keys_are_revoked_as_leaked_everywhere(self, keysvc: Keysvc) -> None:
        """Each real key is revoked (reason "leaked", refused on both replicas), the audit
        trail records the leak with its source, and the answer never holds the raw key."""
        other = await keysvc.replica()
        first, second = await _create(keysvc), await _create(keysvc)
        assert await _reasons([keysvc, other], first.raw_key) == {Reason.ALLOWED}
        source = "https://github.com/someone/repo/blob/main/.env"
        results = await keysvc.admin.revoke_leaked_keys(
            [first.raw_key, f"Bearer {second.raw_key}"], source, SCANNER
        )
        assert [(r.outcome, r.key_id, r.account_id, r.prefix) for r in results] == [
            (LeakOutcome.REVOKED, first.key.id, "acct_1", first.key.prefix),
            (LeakOutcome.REVOKED, second.key.id, "acct_1", second.key.prefix),
        ]
        assert first.raw_key not in repr(results)
        assert await _reasons([keysvc, other], first.raw_key) == {Reason.REVOKED}
        key = await keysvc.admin.get_key("acct_1", first.key.id)
        assert key.revocation_reason == "leaked"
        leaks = [
            (e.key_id, e.reason, e.actor)
            for e in (await keysvc.admin.list_audit_events("acct_1")).events
            if e.action is AuditAction.KEY_LEAK_REVOKED
        ]
        assert sorted(leaks) == sorted(
            [(first.key.id, source, "secret-scanner"), (second.key.id, source, "secret-scanner")]
        )

    @async_test
    async def test_a_real_key_id_with_another_secret_revokes_nothing(self, keysvc: Keysvc) -> None:
        """Whoever reports a key must hold it: the key id alone is public."""
        created = await _create(keysvc)
        secret = secret_of(created.raw_key)
        forged = signed(created.raw_key[: -len(secret) - keys.CHECKSUM_LENGTH] + "x" * len(secret))
        (result,) = await keysvc.admin.revoke_leaked_keys([forged], "pastebin", SCANNER)
        assert (result.outcome, result.key_id) == (LeakOutcome.NOT_FOUND, None)
        assert await _reasons([keysvc], created.raw_key) == {Reason.ALLOWED}

    @async_test
    async def test_what_is_not_a_live_key_is_answered_as_such(self, keysvc: Keysvc) -> None:
        """Garbage, a well-formed key nobody issued, and a key revoked before."""
        revoked = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", revoked.key.id, ADMIN, reason="unused")
        made_up = keys.generate(Mode.TEST, keys.new_key_id())
        results = await keysvc.admin.revoke_leaked_keys(
            ["hunter2", made_up, revoked.raw_key], "a chat log", SCANNER
        )
        assert [(r.outcome, r.prefix) for r in results] == [
            (LeakOutcome.NOT_FOUND, ""),
            (LeakOutcome.NOT_FOUND, made_up[: len(revoked.key.prefix)]),
            (LeakOutcome.ALREADY_REVOKED, revoked.key.prefix),
        ]
        key = await keysvc.admin.get_key("acct_1", revoked.key.id)
        assert key.revocation_reason == "unused"

    @async_test
    async def test_at_most_a_hundred_keys_per_call(self, keysvc: Keysvc) -> None:
        with pytest.raises(InvalidArgument, match="keys: at most 100 per call, got 101"):
            await keysvc.admin.revoke_leaked_keys(["x"] * 101, "", SCANNER)
