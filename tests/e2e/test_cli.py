"""The `keysvc` command against a running server, as an operator on the server's host uses it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .harness import KEY_PATTERN, ServerProcess, when

pytestmark = pytest.mark.slow

LIST_COLUMNS = ["NAME", "PREFIX", "MODE", "SCOPES", "LAST USED", "CREATED", "STATUS"]
TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


def table(output: str) -> list[dict[str, str]]:
    """The rows of a printed table, keyed by column: cells start where their header starts."""
    header, *lines = output.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {
            name: line[a:b].strip()
            for name, a, b in zip(names, starts, [*starts[1:], None], strict=True)
        }
        for line in lines
    ]


def created_secret(server: ServerProcess, account: str, *args: str) -> tuple[str, str]:
    """Runs `keys create` and returns the secret it printed and its whole output."""
    result = server.cli("keys", "create", "--account", account, *args)
    assert result.returncode == 0, result.stderr
    secrets = KEY_PATTERN.findall(result.stdout)
    assert len(secrets) == 1, result.stdout
    return secrets[0], result.stdout


class TestKeysCreate:
    def test_prints_the_secret_once_with_a_store_note(
        self, server: ServerProcess, account: str
    ) -> None:
        """`keys create` prints the raw key exactly once and tells the operator to store it."""
        result = server.cli(
            "keys", "create", "--account", account, "--name", "Production server",
            "--mode", "live", "--scope", "links:read", "--scope", "links:write",
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        keys = KEY_PATTERN.findall(result.stdout)
        assert len(keys) == 1
        assert keys[0].startswith("ck_live_")
        assert result.stdout.count(keys[0]) == 1
        assert "Store this key now" in result.stdout
        assert "links:read, links:write" in result.stdout

    def test_comma_separated_scopes(self, server: ServerProcess, account: str) -> None:
        """--scope accepts a comma-separated list."""
        secret, _ = created_secret(
            server, account, "--name", "n", "--mode", "test", "--scope", "events:read,links:read"
        )

        with server.client() as client:
            key = client.get_key(account, secret[8:20])
        assert list(key.scopes) == ["events:read", "links:read"]

    def test_json_output_parses(self, server: ServerProcess, account: str) -> None:
        """`keys create --json` prints one JSON object holding the key and its secret."""
        result = server.cli(
            "keys", "create", "--json", "--account", account, "--name", "n",
            "--mode", "test", "--scope", "events:read",
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        created = json.loads(result.stdout)
        assert KEY_PATTERN.fullmatch(created["secret"])
        assert created["key"]["mode"] == "MODE_TEST"
        assert created["key"]["status"] == "KEY_STATUS_ACTIVE"


class TestAuthorizeAndRevoke:
    def test_a_keys_life(self, server: ServerProcess, account: str) -> None:
        """authorize exits 0 with 200; after `keys revoke`, authorize exits 1 with 401 REVOKED."""
        secret, _ = created_secret(
            server, account, "--name", "n", "--mode", "live", "--scope", "links:read"
        )

        allowed = server.cli("authorize", secret, "--scope", "links:read")
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith("200 ALLOWED")

        revoked = server.cli("keys", "revoke", "--account", account, secret[8:20])
        assert revoked.returncode == 0, revoked.stderr
        assert table(revoked.stdout)[0]["STATUS"] == "revoked"

        refused = server.cli("authorize", f"Bearer {secret}")
        assert refused.returncode == 1
        assert refused.stdout.startswith("401 REVOKED")

    def test_reads_the_key_from_stdin(self, server: ServerProcess, account: str) -> None:
        """`authorize` without an argument reads the key from stdin, keeping it out of argv."""
        secret, _ = created_secret(
            server, account, "--name", "n", "--mode", "test", "--scope", "links:read"
        )

        result = server.cli("authorize", "--mode", "live", input=secret + "\n")

        assert result.returncode == 1
        assert result.stdout.startswith("403 WRONG_MODE")

    def test_missing_scopes_are_printed(self, server: ServerProcess, account: str) -> None:
        """A refusal for scope prints 403 and the missing scopes, and exits 1."""
        secret, _ = created_secret(
            server, account, "--name", "n", "--mode", "live", "--scope", "links:read"
        )

        result = server.cli("authorize", secret, "--scope", "links:read,customers:write")

        assert result.returncode == 1
        assert result.stdout.startswith("403 INSUFFICIENT_SCOPE")
        assert "missing=customers:write" in result.stdout

    def test_needs_no_admin_token(self, server: ServerProcess, tmp_path: Path) -> None:
        """`authorize` works from a host without the server's admin token."""
        result = server.cli("authorize", "garbage", env={"KEYSVC_DATA_DIR": str(tmp_path)})

        assert result.returncode == 1
        assert result.stdout.startswith("401 MALFORMED")

    def test_json_output_parses(self, server: ServerProcess, account: str) -> None:
        """`authorize --json` prints the decision as JSON."""
        secret, _ = created_secret(
            server, account, "--name", "n", "--mode", "live", "--scope", "links:read"
        )

        result = server.cli("authorize", "--json", secret)

        assert result.returncode == 0, result.stderr
        decision = json.loads(result.stdout)
        assert decision["http_status"] == 200
        assert decision["reason"] == "REASON_ALLOWED"
        assert decision["allowed"] is True


class TestKeysList:
    def test_shows_the_columns_and_the_revoked_key(
        self, server: ServerProcess, account: str
    ) -> None:
        """`keys list` shows the product's columns, newest first, and the revoked key's time."""
        old, _ = created_secret(
            server, account, "--name", "Old server", "--mode", "live", "--scope", "links:read"
        )
        new, _ = created_secret(
            server, account, "--name", "WooCommerce plugin", "--mode", "test",
            "--scope", "sessions:write",
        )  # fmt: skip
        assert server.cli("keys", "revoke", "--account", account, old[8:20]).returncode == 0
        with server.client() as client:
            revoked_at = when(client.get_key(account, old[8:20]), "revoked_at")
        assert revoked_at is not None

        result = server.cli("keys", "list", "--account", account)

        assert result.returncode == 0, result.stderr
        header = result.stdout.splitlines()[0]
        positions = [header.index(column) for column in LIST_COLUMNS]
        assert positions == sorted(positions)
        rows = table(result.stdout)
        assert [row["NAME"] for row in rows] == ["WooCommerce plugin", "Old server"]
        fresh, revoked = rows
        assert fresh["PREFIX"] == new[:14]
        assert (fresh["MODE"], fresh["SCOPES"], fresh["STATUS"]) == (
            "test",
            "sessions:write",
            "active",
        )
        assert fresh["LAST USED"] == "never"
        assert TIME.fullmatch(fresh["CREATED"])
        assert (revoked["PREFIX"], revoked["STATUS"]) == (old[:14], "revoked")
        assert revoked["REVOKED"] == revoked_at.strftime("%Y-%m-%d %H:%M:%SZ")
        # Listing never reveals a secret.
        assert not KEY_PATTERN.search(result.stdout)

    def test_json_output_parses(self, server: ServerProcess, account: str) -> None:
        """`keys list --json` prints a JSON array of the keys, filters applied."""
        created_secret(server, account, "--name", "a", "--mode", "live", "--scope", "links:read")
        created_secret(server, account, "--name", "b", "--mode", "test", "--scope", "links:read")

        result = server.cli("keys", "list", "--json", "--account", account, "--mode", "test")

        assert result.returncode == 0, result.stderr
        keys = json.loads(result.stdout)
        assert [(key["name"], key["mode"]) for key in keys] == [("b", "MODE_TEST")]

    def test_an_empty_account(self, server: ServerProcess, account: str) -> None:
        """`keys list` of an account without keys says so and exits 0."""
        result = server.cli("keys", "list", "--account", account)

        assert result.returncode == 0
        assert result.stdout.strip() == f"No keys in account {account}."

    def test_scopes_json(self, server: ServerProcess) -> None:
        """`scopes --json` prints the nine catalogue scopes."""
        result = server.cli("scopes", "--json")

        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)) == 9


class TestErrors:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ["keys", "create", "--account", "acct_cli", "--name", "n", "--mode", "live",
                 "--scope", "links:admin"],
                "keysvc: INVALID_ARGUMENT: scopes: unknown scope 'links:admin'",
            ),
            (
                ["keys", "get", "--account", "acct_cli", "not-an-id"],
                "keysvc: INVALID_ARGUMENT: id: not a key id",
            ),
            (
                ["keys", "revoke", "--account", "acct_cli", "AbCdEf123456"],
                "keysvc: NOT_FOUND: no key AbCdEf123456 in account acct_cli",
            ),
            (
                ["keys", "list", "--account", "acct cli"],
                "keysvc: INVALID_ARGUMENT: account_id:",
            ),
        ],
        ids=["unknown-scope", "bad-id", "unknown-key", "bad-account"],
    )  # fmt: skip
    def test_a_refused_call_prints_the_reason_and_exits_2(
        self, server: ServerProcess, args: list[str], message: str
    ) -> None:
        """A call the server refuses prints one 'keysvc: CODE: reason' line and exits 2."""
        result = server.cli(*args)

        assert result.returncode == 2
        assert result.stderr.startswith(message), result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""

    def test_no_admin_token_found(self, server: ServerProcess, tmp_path: Path) -> None:
        """Without a token file or $KEYSVC_ADMIN_TOKEN, an admin command says how to give one."""
        result = server.cli(
            "keys", "list", "--account", "acct_cli", env={"KEYSVC_DATA_DIR": str(tmp_path)}
        )

        assert result.returncode == 2
        assert "cannot read admin token file" in result.stderr
        assert str(tmp_path / "admin-token") in result.stderr
        assert "$KEYSVC_ADMIN_TOKEN" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_wrong_admin_token(self, server: ServerProcess) -> None:
        """A wrong $KEYSVC_ADMIN_TOKEN is reported as UNAUTHENTICATED, exit 2."""
        result = server.cli("scopes", env={"KEYSVC_ADMIN_TOKEN": "ksadm_wrong"})

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: UNAUTHENTICATED: credential required")

    def test_no_server_listening(self, server: ServerProcess, tmp_path: Path) -> None:
        """An unreachable server is reported as UNAVAILABLE, exit 2, within the timeout."""
        result = server.cli(
            "authorize", "garbage", "--timeout", "2", env={"KEYSVC_TARGET": "127.0.0.1:1"}
        )

        assert result.returncode == 2
        assert result.stderr.startswith("keysvc: UNAVAILABLE")
        assert "Traceback" not in result.stderr
