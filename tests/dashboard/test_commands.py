"""`keysvc dashboard users add|list|remove` and `keysvc dashboard serve`, run as an operator
runs them."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest

from keysvc.dashboard.users import load, verify_password
from tests.e2e.harness import COMMAND_TIMEOUT, PYTHON, ServerProcess, clean_environ, poll

pytestmark = pytest.mark.slow

PASSWORD = "a long enough password"


def keysvc(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "keysvc", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=clean_environ(env),
        check=False,
    )


def add(
    users: Path, name: str, *accounts: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    scope = [f"--account={a}" for a in accounts] or ["--all-accounts"]
    return keysvc(
        "dashboard",
        "users",
        "add",
        name,
        *scope,
        "--users",
        str(users),
        "--password-stdin",
        input=password + "\n",
    )


class TestUsers:
    def test_add_list_remove(self, tmp_path: Path) -> None:
        """add writes an argon2id hash to a 0600 TOML file; list names users and accounts and
        never a hash; remove takes the user out."""
        users = tmp_path / "users.toml"
        added = add(users, "ada@example.com", "acct_1", "acct_2")
        assert added.returncode == 0, added.stderr
        assert "ada@example.com" in added.stdout
        assert add(users, "ops").returncode == 0

        assert stat.S_IMODE(users.stat().st_mode) == 0o600
        found = load(users)
        assert found["ada@example.com"].accounts == ("acct_1", "acct_2")
        assert found["ops"].all_accounts
        assert found["ada@example.com"].password_hash.startswith("$argon2id$")
        assert verify_password(found["ada@example.com"].password_hash, PASSWORD)
        assert PASSWORD not in users.read_text()

        listed = keysvc("dashboard", "users", "list", "--users", str(users))
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"^ada@example\.com\s+acct_1,acct_2$", listed.stdout, re.M)
        assert re.search(r"^ops\s+all$", listed.stdout, re.M)
        assert "argon2" not in listed.stdout + added.stdout + added.stderr

        removed = keysvc("dashboard", "users", "remove", "ada@example.com", "--users", str(users))
        assert removed.returncode == 0, removed.stderr
        assert list(load(users)) == ["ops"]
        assert stat.S_IMODE(users.stat().st_mode) == 0o600

    @pytest.mark.parametrize(
        ("name", "accounts", "password", "words"),
        [
            ("bad name", ["acct_1"], PASSWORD, "user name"),
            ("x" * 65, ["acct_1"], PASSWORD, "user name"),
            ("ada", ["-bad"], PASSWORD, "account"),
            ("ada", ["acct_1"], "short", "at least 8"),
        ],
        ids=["space", "too-long", "bad-account", "short-password"],
    )
    def test_bad_input_changes_nothing(
        self, tmp_path: Path, name: str, accounts: list[str], password: str, words: str
    ) -> None:
        """A bad name, account or a short password: exit 2 saying which, and no users file."""
        users = tmp_path / "users.toml"
        result = add(users, name, *accounts, password=password)
        assert result.returncode == 2
        assert words in result.stderr
        assert not users.exists()

    def test_an_existing_user_is_replaced_only_when_asked(self, tmp_path: Path) -> None:
        """Adding a name already there fails unless --replace, which gives new accounts."""
        users = tmp_path / "users.toml"
        assert add(users, "ada", "acct_1").returncode == 0
        again = add(users, "ada", "acct_2")
        assert again.returncode == 2 and "--replace" in again.stderr
        replaced = keysvc(
            "dashboard",
            "users",
            "add",
            "ada",
            "--account",
            "acct_2",
            "--users",
            str(users),
            "--password-stdin",
            "--replace",
            input="another password\n",
        )
        assert replaced.returncode == 0, replaced.stderr
        assert load(users)["ada"].accounts == ("acct_2",)

    def test_a_users_file_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        """A users file others may read is refused, as ssh refuses such a key."""
        users = tmp_path / "users.toml"
        assert add(users, "ada", "acct_1").returncode == 0
        users.chmod(0o644)
        listed = keysvc("dashboard", "users", "list", "--users", str(users))
        assert listed.returncode == 2
        assert "readable by others" in listed.stderr

    def test_removing_nobody_fails(self, tmp_path: Path) -> None:
        """Removing a name that is not there exits 2 and says so."""
        users = tmp_path / "users.toml"
        assert add(users, "ada", "acct_1").returncode == 0
        result = keysvc("dashboard", "users", "remove", "bob", "--users", str(users))
        assert result.returncode == 2 and "no user bob" in result.stderr


class TestServe:
    def test_serves_until_sigterm(self, tmp_path: Path, keysvc_server: ServerProcess) -> None:
        """On port 0 it logs and writes its URL, serves the sign-in page, makes its session key
        (0600) beside the users file, and exits 0 on SIGTERM."""
        users = tmp_path / "users.toml"
        assert add(users, "ada", "acct_1").returncode == 0
        address = tmp_path / "dashboard.address"
        log = tmp_path / "dashboard.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [PYTHON, "-m", "keysvc", "dashboard", "serve", "--listen", "127.0.0.1:0",
                 "--users", str(users), "--target", keysvc_server.target,
                 "--data-dir", str(keysvc_server.data_dir), "--address-file", str(address)],
                stdout=out, stderr=subprocess.STDOUT, env=clean_environ(),
            )  # fmt: skip
        try:
            url = poll(
                lambda: address.read_text().strip() if address.exists() else None,
                timeout=30,
                what="the address file",
            )
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            with urllib.request.urlopen(f"{url}/signin", timeout=10) as response:
                assert response.status == 200
                assert response.headers["referrer-policy"] == "no-referrer"
            key = tmp_path / "users.toml.session-key"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        text = log.read_text()
        assert code == 0, text
        assert f"dashboard listening on {url}" in text
        assert key.read_text().strip() not in text

    def test_refuses_plain_http_beyond_loopback(self, tmp_path: Path) -> None:
        """Beyond loopback without --https-cert or --insecure it exits 1 and says why."""
        users = tmp_path / "users.toml"
        assert add(users, "ada", "acct_1").returncode == 0
        result = keysvc(
            "dashboard", "serve", "--listen", "0.0.0.0:0", "--users", str(users),
            env={"KEYSVC_ADMIN_TOKEN": "some-admin-token"},
        )  # fmt: skip
        assert result.returncode == 1
        assert "without TLS" in result.stderr and "--insecure" in result.stderr

    def test_needs_an_admin_credential(self, tmp_path: Path) -> None:
        """With no admin token anywhere it exits 2 before serving, as the admin commands do."""
        users = tmp_path / "users.toml"
        assert add(users, "ada", "acct_1").returncode == 0
        result = keysvc(
            "dashboard", "serve", "--users", str(users), "--data-dir", str(tmp_path / "none")
        )
        assert result.returncode == 2
        assert "admin token" in result.stderr
