"""The key lifecycle from the `keysvc` command, against a real server on both backends: create
with --expires and --allow-ip, roll, update, revoke --reason, revoke-leaked, the list's EXPIRES
column and statuses, authorize --client-ip, and the audit trail's details."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2

from .harness import BASE62, KEY_PATTERN, ServerProcess, poll, when, with_checksum
from .test_cli import TIME, created_secret, table

pytestmark = pytest.mark.slow

pb = keysvc_pb2
SLACK = timedelta(seconds=5)
EXPIRY_DEADLINE = 10.0
STORE_IT_NOW = "Store this key now: it is shown this once and can never be retrieved again."


def now() -> datetime:
    return datetime.now(UTC)


def printed_time(text: str) -> datetime:
    """A time as the CLI prints it (2026-12-02 02:00:00Z)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC)


def printed_expiry(key: keysvc_pb2.Key) -> str:
    """The key's expire_time as the CLI prints it."""
    expiry = when(key, "expire_time")
    assert expiry is not None
    return f"{expiry:%Y-%m-%d %H:%M:%S}Z"


def key_id_of(secret: str) -> str:
    return secret[8:20]


def made_up_key() -> str:
    return with_checksum("ck_live_" + "".join(secrets.choice(BASE62) for _ in range(44)))


def expired_key(admin: KeyServiceClient, account: str, name: str) -> keysvc_pb2.CreateKeyResponse:
    """A key that expired a moment ago."""
    created = admin.create_key(
        account, name, "live", ["links:read"], expire_time=now() + timedelta(seconds=2)
    )
    poll(
        lambda: admin.get_key(account, created.key.id).status == pb.KEY_STATUS_EXPIRED,
        timeout=EXPIRY_DEADLINE,
        what="the key to expire",
        interval=0.2,
    )
    return created


class TestCreate:
    def test_expires_after_a_duration_and_only_from_the_given_addresses(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`--expires 30d --allow-ip ... --allow-ip ...` makes a key expiring in 30 days, usable
        from those ranges only, says both, and prints the secret once with the usual warning."""
        before = now()
        secret, output = created_secret(
            server, account, "--name", "Limited", "--mode", "live", "--scope", "links:read",
            "--expires", "30d", "--allow-ip", "10.0.0.0/8", "--allow-ip", "2001:db8::/32",
        )  # fmt: skip

        key = admin.get_key(account, key_id_of(secret))
        expiry = when(key, "expire_time")
        assert expiry is not None
        assert before + timedelta(days=30) - SLACK <= expiry <= now() + timedelta(days=30)
        assert sorted(key.allowed_ips) == ["10.0.0.0/8", "2001:db8::/32"]
        assert f"Expires {expiry:%Y-%m-%d %H:%M:%S}Z." in output
        assert "Allowed only from 10.0.0.0/8, 2001:db8::/32." in output
        assert output.count(secret) == 1
        assert STORE_IT_NOW in output

    @pytest.mark.parametrize(
        "written", ["{:%Y-%m-%dT%H:%M:%S}Z", "{:%Y-%m-%dT%H:%M:%S}+00:00"], ids=["Z", "offset"]
    )
    def test_expires_at_an_rfc_3339_time(
        self, server: ServerProcess, admin: KeyServiceClient, account: str, written: str
    ) -> None:
        """`--expires 2027-...Z` (or with an offset) makes a key expiring at that instant."""
        expiry = (now() + timedelta(days=200)).replace(microsecond=0)

        secret, _ = created_secret(
            server, account, "--name", "n", "--mode", "test", "--scope", "links:read",
            "--expires", written.format(expiry),
        )  # fmt: skip

        assert when(admin.get_key(account, key_id_of(secret)), "expire_time") == expiry

    def test_a_past_time_is_refused_by_the_server_naming_expire_time(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """An --expires time already past is the server's INVALID_ARGUMENT naming expire_time,
        exit 2, and no key."""
        result = server.cli(
            "keys", "create", "--account", account, "--name", "n", "--mode", "live",
            "--scope", "links:read", "--expires", "2020-01-01T00:00:00Z",
        )  # fmt: skip

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: INVALID_ARGUMENT: expire_time: "), result.stderr
        assert result.stdout == ""
        assert list(admin.iter_keys(account)) == []

    @pytest.mark.parametrize(
        ("flag", "value"),
        [("--expires", "next week"), ("--expires", "2027-01-01"), ("--allow-ip", "10.0.0.0/40")],
    )
    def test_bad_values_name_the_flag_and_create_nothing(
        self, server: ServerProcess, admin: KeyServiceClient, account: str, flag: str, value: str
    ) -> None:
        """A value the CLI cannot read is refused before any call: exit 2, naming the flag."""
        result = server.cli(
            "keys", "create", "--account", account, "--name", "n", "--mode", "live",
            "--scope", "links:read", flag, value,
        )  # fmt: skip

        assert result.returncode == 2
        assert f"argument {flag}: " in result.stderr
        assert "Traceback" not in result.stderr
        assert list(admin.iter_keys(account)) == []

    def test_json_carries_the_expiry_and_the_addresses(
        self, server: ServerProcess, account: str
    ) -> None:
        """`keys create --json` shows expire_time and allowed_ips."""
        result = server.cli(
            "keys", "create", "--json", "--account", account, "--name", "n", "--mode", "test",
            "--scope", "links:read", "--expires", "2h", "--allow-ip", "203.0.113.7",
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        created = json.loads(result.stdout)
        assert created["key"]["allowed_ips"] == ["203.0.113.7"]
        assert created["key"]["expire_time"].endswith("Z")


class TestListAndGet:
    def test_the_list_shows_expiry_and_the_four_statuses(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """EXPIRES is 'never' or the time; STATUS is active, expiring (active with an expiry),
        expired or revoked; --status picks each, and active includes the expiring."""
        expired = expired_key(admin, account, "expired")
        revoked = admin.create_key(account, "revoked", "live", ["links:read"])
        admin.revoke_key(account, revoked.key.id)
        expiring = admin.create_key(
            account, "expiring", "live", ["links:read"], expire_time=now() + timedelta(days=3)
        )
        active = admin.create_key(account, "active", "live", ["links:read"])

        result = server.cli("keys", "list", "--account", account)

        assert result.returncode == 0, result.stderr
        header = result.stdout.splitlines()[0]
        columns = ["CREATED", "EXPIRES", "STATUS", "REVOKED"]
        assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
        rows = {row["NAME"]: row for row in table(result.stdout)}
        assert {name: row["STATUS"] for name, row in rows.items()} == {
            "active": "active",
            "expiring": "expiring",
            "expired": "expired",
            "revoked": "revoked",
        }
        assert rows["active"]["EXPIRES"] == "never"
        assert rows["revoked"]["EXPIRES"] == "never"
        for name, created in (("expiring", expiring), ("expired", expired)):
            expiry = when(created.key, "expire_time")
            assert expiry is not None
            assert rows[name]["EXPIRES"] == f"{expiry:%Y-%m-%d %H:%M:%S}Z"
        assert TIME.fullmatch(rows["revoked"]["REVOKED"])

        def listed(status: str) -> set[str]:
            filtered = server.cli("keys", "list", "--account", account, "--status", status)
            assert filtered.returncode == 0, filtered.stderr
            return {row["NAME"] for row in table(filtered.stdout)}

        assert listed("expiring") == {"expiring"}
        assert listed("expired") == {"expired"}
        assert listed("revoked") == {"revoked"}
        assert listed("active") == {"active", "expiring"}
        assert active.key.id in result.stdout

    def test_get_shows_the_expiry_the_addresses_and_the_revocation_reason(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`keys get` shows EXPIRES, ALLOWED IPS and REASON ('any' and '-' when none)."""
        expiry = (now() + timedelta(days=3)).replace(microsecond=0)
        limited = admin.create_key(
            account, "limited", "live", ["links:read"],
            expire_time=expiry, allowed_ips=["192.0.2.0/24", "2001:db8::1"],
        )  # fmt: skip
        plain = admin.create_key(account, "plain", "live", ["links:read"])
        admin.revoke_key(account, plain.key.id, reason="compromised")

        shown = server.cli("keys", "get", "--account", account, limited.key.id)
        revoked = server.cli("keys", "get", "--account", account, plain.key.id)

        assert shown.returncode == 0, shown.stderr
        [row] = table(shown.stdout)
        assert row["EXPIRES"] == f"{expiry:%Y-%m-%d %H:%M:%S}Z"
        assert sorted(row["ALLOWED IPS"].split(",")) == ["192.0.2.0/24", "2001:db8::1"]
        assert (row["STATUS"], row["REASON"]) == ("expiring", "-")
        assert revoked.returncode == 0, revoked.stderr
        [row] = table(revoked.stdout)
        assert (row["STATUS"], row["REASON"], row["ALLOWED IPS"], row["EXPIRES"]) == (
            "revoked",
            "compromised",
            "any",
            "never",
        )


class TestRoll:
    def test_prints_the_new_secret_once_and_when_the_old_key_stops(
        self, server: ServerProcess, account: str
    ) -> None:
        """`keys roll --grace 24h` prints the new key once with the warning and the old key's
        end 24 hours from now; both keys are allowed meanwhile."""
        old, _ = created_secret(
            server, account, "--name", "Checkout", "--mode", "live", "--scope", "links:read"
        )

        before = now()
        result = server.cli("keys", "roll", "--account", account, key_id_of(old), "--grace", "24h")

        assert result.returncode == 0, result.stderr
        [new] = KEY_PATTERN.findall(result.stdout)
        assert new != old
        assert result.stdout.count(new) == 1
        assert old not in result.stdout
        assert STORE_IT_NOW in result.stdout
        assert result.stdout.startswith(
            f"Rolled key {key_id_of(old)} (Checkout): new live key {key_id_of(new)}"
            " with scopes links:read"
        )
        match = re.search(
            rf"The old key {key_id_of(old)} keeps working until ({TIME.pattern})\.", result.stdout
        )
        assert match, result.stdout
        end = printed_time(match.group(1))
        assert before + timedelta(hours=24) - SLACK <= end <= now() + timedelta(hours=24)
        for secret in (old, new):
            allowed = server.cli("authorize", secret, "--scope", "links:read")
            assert allowed.stdout.startswith("200 ALLOWED"), allowed.stdout

    def test_grace_zero_revokes_the_old_key(self, server: ServerProcess, account: str) -> None:
        """`keys roll --grace 0` says the old key is revoked, and authorize refuses it."""
        old, _ = created_secret(
            server, account, "--name", "n", "--mode", "test", "--scope", "links:read"
        )

        result = server.cli("keys", "roll", "--account", account, key_id_of(old), "--grace", "0")

        assert result.returncode == 0, result.stderr
        assert f"The old key {key_id_of(old)} is revoked." in result.stdout
        refused = server.cli("authorize", old)
        assert (refused.returncode, refused.stdout.split()[:2]) == (1, ["401", "REVOKED"])

    def test_json_has_the_new_key_its_secret_and_the_old_key(
        self, server: ServerProcess, account: str
    ) -> None:
        """`keys roll --json` prints key, secret and rolled."""
        old, _ = created_secret(
            server, account, "--name", "n", "--mode", "test", "--scope", "links:read"
        )

        result = server.cli(
            "keys", "roll", "--json", "--account", account, key_id_of(old), "--grace", "1h"
        )

        assert result.returncode == 0, result.stderr
        rolled = json.loads(result.stdout)
        assert KEY_PATTERN.fullmatch(rolled["secret"])
        assert rolled["key"]["id"] == key_id_of(rolled["secret"])
        assert rolled["rolled"]["id"] == key_id_of(old)
        assert rolled["rolled"]["expire_time"].endswith("Z")

    def test_a_grace_over_7_days_is_refused_naming_grace(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`--grace 8d` exits 2 with the server's INVALID_ARGUMENT naming grace, and no key."""
        created = admin.create_key(account, "n", "test", ["links:read"])

        result = server.cli("keys", "roll", "--account", account, created.key.id, "--grace", "8d")

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: INVALID_ARGUMENT: grace: "), result.stderr
        assert result.stdout == ""
        assert [key.id for key in admin.iter_keys(account)] == [created.key.id]

    def test_rolling_a_revoked_key_is_refused(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """Rolling a revoked key exits 2 with FAILED_PRECONDITION and prints no secret."""
        created = admin.create_key(account, "n", "test", ["links:read"])
        admin.revoke_key(account, created.key.id)

        result = server.cli("keys", "roll", "--account", account, created.key.id, "--grace", "1h")

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: FAILED_PRECONDITION: "), result.stderr
        assert result.stdout == ""


class TestUpdate:
    def test_changes_the_fields_given(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`keys update` with --name, --scope, --allow-ip and --expires changes all four and
        shows the key; the restriction holds for authorize at once."""
        secret, _ = created_secret(
            server, account, "--name", "Old", "--mode", "live", "--scope", "links:read,links:write"
        )

        result = server.cli(
            "keys", "update", "--account", account, key_id_of(secret), "--name", "New",
            "--scope", "links:read", "--allow-ip", "192.0.2.0/24", "--expires", "7d",
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        [row] = table(result.stdout)
        assert (row["NAME"], row["SCOPES"], row["ALLOWED IPS"], row["STATUS"]) == (
            "New",
            "links:read",
            "192.0.2.0/24",
            "expiring",
        )
        key = admin.get_key(account, key_id_of(secret))
        assert row["EXPIRES"] == printed_expiry(key)
        inside = server.cli("authorize", secret, "--client-ip", "192.0.2.7")
        outside = server.cli("authorize", secret, "--client-ip", "198.51.100.7")
        assert (inside.returncode, inside.stdout.split()[:2]) == (0, ["200", "ALLOWED"])
        assert (outside.returncode, outside.stdout.split()[:2]) == (1, ["403", "IP_NOT_ALLOWED"])

    def test_any_ip_and_never_expires_lift_the_limits(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`--any-ip --never-expires` clears the addresses and the expiry, and nothing else."""
        created = admin.create_key(
            account, "Limited", "live", ["links:read"],
            expire_time=now() + timedelta(days=1), allowed_ips=["192.0.2.0/24"],
        )  # fmt: skip

        result = server.cli(
            "keys", "update", "--account", account, created.key.id, "--any-ip", "--never-expires"
        )

        assert result.returncode == 0, result.stderr
        [row] = table(result.stdout)
        assert (row["NAME"], row["ALLOWED IPS"], row["EXPIRES"], row["STATUS"]) == (
            "Limited",
            "any",
            "never",
            "active",
        )
        key = admin.get_key(account, created.key.id)
        assert (list(key.allowed_ips), when(key, "expire_time")) == ([], None)

    def test_a_bad_scope_is_the_servers_invalid_argument(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """An unknown scope exits 2 with the server's reason naming scopes; nothing changes."""
        created = admin.create_key(account, "n", "live", ["links:read"])

        result = server.cli(
            "keys", "update", "--account", account, created.key.id, "--scope", "links:admin"
        )

        assert result.returncode == 2
        assert re.match(r"keysvc: INVALID_ARGUMENT: (key\.)?scopes: ", result.stderr), result.stderr
        assert admin.get_key(account, created.key.id) == created.key

    def test_nothing_to_change_calls_nothing(self, server: ServerProcess, account: str) -> None:
        """`keys update ID` alone exits 2 naming the flags it takes."""
        result = server.cli("keys", "update", "--account", account, "AbCdEf123456")

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: keys update: nothing to change: give --name")


class TestRevoke:
    def test_the_reason_is_shown(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`keys revoke --reason compromised` shows the key revoked with that reason."""
        created = admin.create_key(account, "n", "live", ["links:read"])

        result = server.cli(
            "keys", "revoke", "--account", account, created.key.id, "--reason", "compromised"
        )

        assert result.returncode == 0, result.stderr
        [row] = table(result.stdout)
        assert (row["STATUS"], row["REASON"]) == ("revoked", "compromised")
        assert admin.get_key(account, created.key.id).revocation_reason == "compromised"

    def test_an_overlong_reason_is_refused(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """A reason over 200 characters exits 2 with the server's reason naming reason."""
        created = admin.create_key(account, "n", "live", ["links:read"])

        result = server.cli(
            "keys", "revoke", "--account", account, created.key.id, "--reason", "x" * 201
        )

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: INVALID_ARGUMENT: reason: "), result.stderr
        assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_ACTIVE


class TestRevokeLeaked:
    def test_reads_keys_from_stdin_and_prints_an_outcome_per_key_never_a_key(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """Each non-blank line gets a row: its line number, the key's prefix, the outcome, the
        key id and account; no raw key (nor the garbage given) is printed; the leak is audited
        with --source."""
        leaked = admin.create_key(account, "leaked", "live", ["links:read"])
        earlier = admin.create_key(account, "earlier", "test", ["links:read"])
        admin.revoke_key(account, earlier.key.id)
        made_up = made_up_key()
        stdin = f"{leaked.secret}\n\n  not-a-key-at-all  \n{earlier.secret}\n{made_up}\n"
        source = "https://github.com/acme/app/commit/abc123"

        result = server.cli("keys", "revoke-leaked", "--source", source, input=stdin)

        assert result.returncode == 0, result.stderr
        rows = table(result.stdout)
        assert [
            (r["LINE"], r["PREFIX"], r["OUTCOME"], r["KEY ID"], r["ACCOUNT"]) for r in rows
        ] == [
            ("1", leaked.key.prefix, "revoked", leaked.key.id, account),
            ("3", "-", "not_found", "-", "-"),
            ("4", earlier.key.prefix, "already_revoked", earlier.key.id, account),
            ("5", made_up[:14], "not_found", "-", "-"),
        ]
        for output in (result.stdout, result.stderr):
            assert not KEY_PATTERN.search(output)
            assert "not-a-key-at-all" not in output
        assert admin.get_key(account, leaked.key.id).status == pb.KEY_STATUS_REVOKED
        event = next(admin.iter_audit_events(account))
        assert (event.action, event.key_id, event.reason) == (
            pb.AUDIT_ACTION_KEY_LEAK_REVOKED,
            leaked.key.id,
            source,
        )

    def test_more_keys_than_one_call_takes(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """250 lines (the RPC takes 100 at most) are all answered, in order."""
        first = admin.create_key(account, "first", "live", ["links:read"])
        last = admin.create_key(account, "last", "live", ["links:read"])
        lines = [first.secret, *(made_up_key() for _ in range(248)), last.secret]

        result = server.cli("keys", "revoke-leaked", input="\n".join(lines))

        assert result.returncode == 0, result.stderr
        rows = table(result.stdout)
        assert [r["LINE"] for r in rows] == [str(n) for n in range(1, 251)]
        assert (rows[0]["KEY ID"], rows[0]["OUTCOME"]) == (first.key.id, "revoked")
        assert (rows[-1]["KEY ID"], rows[-1]["OUTCOME"]) == (last.key.id, "revoked")
        assert {r["OUTCOME"] for r in rows[1:-1]} == {"not_found"}

    def test_json(self, server: ServerProcess, admin: KeyServiceClient, account: str) -> None:
        """`keys revoke-leaked --json` prints one object per key with its line, no secret."""
        leaked = admin.create_key(account, "leaked", "live", ["links:read"])

        result = server.cli("keys", "revoke-leaked", "--json", input=leaked.secret + "\n")

        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [
            {
                "line": 1,
                "prefix": leaked.key.prefix,
                "outcome": "LEAK_OUTCOME_REVOKED",
                "key_id": leaked.key.id,
                "account_id": account,
            }
        ]

    def test_nothing_on_stdin_is_refused(self, server: ServerProcess) -> None:
        """Empty standard input exits 2 saying so, without calling."""
        result = server.cli("keys", "revoke-leaked", input="\n\n")

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: keys revoke-leaked: no keys on standard input")


class TestAuthorize:
    def test_client_ip_and_expiry(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`authorize --client-ip` decides a restricted key by address; an expired key prints
        401 EXPIRED and exits 1."""
        restricted = admin.create_key(
            account, "r", "live", ["links:read"], allowed_ips=["2001:db8::/32"]
        )
        expired = expired_key(admin, account, "e")

        inside = server.cli("authorize", restricted.secret, "--client-ip", "2001:db8::7")
        missing = server.cli("authorize", restricted.secret)
        gone = server.cli("authorize", expired.secret)

        assert (inside.returncode, inside.stdout.split()[:2]) == (0, ["200", "ALLOWED"])
        assert (missing.returncode, missing.stdout.split()[:2]) == (1, ["403", "IP_NOT_ALLOWED"])
        assert (gone.returncode, gone.stdout.split()[:2]) == (1, ["401", "EXPIRED"])


class TestAuditList:
    def test_shows_reasons_related_keys_and_changes(
        self, server: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """`audit list` adds RELATED KEY, REASON and CHANGES columns for rolls, updates,
        revocations with a reason and leak revocations."""
        created = admin.create_key(account, "Before", "live", ["links:read"])
        admin.update_key(account, created.key.id, name="After")
        rolled = admin.roll_key(account, created.key.id, grace=timedelta(hours=1))
        admin.revoke_key(account, created.key.id, reason="compromised")
        admin.revoke_leaked_keys([rolled.secret], source="pastebin")

        result = server.cli("audit", "list", "--account", account)

        assert result.returncode == 0, result.stderr
        rows = table(result.stdout)
        assert list(rows[0])[-3:] == ["RELATED KEY", "REASON", "CHANGES"]
        by_action = {row["ACTION"]: row for row in rows}
        assert by_action["key_updated"]["CHANGES"] == "name: Before -> After"
        assert by_action["key_rolled"]["KEY ID"] == created.key.id
        assert by_action["key_rolled"]["RELATED KEY"] == rolled.key.id
        assert (by_action["key_revoked"]["KEY ID"], by_action["key_revoked"]["REASON"]) == (
            created.key.id,
            "compromised",
        )
        assert (
            by_action["key_leak_revoked"]["KEY ID"],
            by_action["key_leak_revoked"]["REASON"],
        ) == (rolled.key.id, "pastebin")
        assert not KEY_PATTERN.search(result.stdout)
