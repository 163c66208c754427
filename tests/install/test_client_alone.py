"""keysvc-client installed alone: an operator's laptop or a CI job gets the admin commands and
the library, against a real keysvc, with none of the server's dependencies installed.

The virtualenv is built once for the module from a copy of clients/python (non-editable, as
`pip install ./clients/python` installs it); the server runs from the suite's own virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.e2e.harness import (
    COMMAND_TIMEOUT,
    KEY_PATTERN,
    ServerFactory,
    ServerProcess,
    clean_environ,
)
from tests.e2e.test_cli import table

pytestmark = pytest.mark.slow

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "python"
INSTALL_TIMEOUT = 600.0
ACCOUNT = "acct_client_alone"
# The server package and what it alone depends on.
SERVER_ONLY = ("keysvc", "sqlalchemy", "alembic", "psycopg", "argon2", "redis")


class ClientVenv:
    """A virtualenv holding keysvc-client and its dependencies, nothing else."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        # Not the source tree: `python -c` would find the keysvc package in its cwd.
        self.workdir = workdir

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(
        self, *command: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command),
            env=_environ(env),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def keysvc(self, server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
        """The venv's `keysvc` against `server`, finding its admin token as on its host."""
        env = {"KEYSVC_TARGET": server.target, "KEYSVC_DATA_DIR": str(server.data_dir)}
        return self.run(str(self.root / "bin" / "keysvc"), *args, env=env)

    def python_code(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        # -I: this venv's site-packages only, never PYTHONPATH, the cwd or the user's site.
        return self.run(str(self.python), "-I", "-c", code, *args)


def _environ(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The test's environment without KEYSVC_* or PYTHON* settings (PYTHONPATH could reach the
    source tree) and without the suite's virtualenv, plus `extra`."""
    env = {
        key: value
        for key, value in clean_environ(extra).items()
        if not key.startswith("PYTHON") and key != "VIRTUAL_ENV"
    }
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    base = tmp_path_factory.mktemp("client-alone")
    # A copy, so the build writes no build/ or egg-info into the source tree.
    source = base / "source"
    shutil.copytree(
        CLIENT_SOURCE,
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    root = base / "venv"
    steps = (
        [sys.executable, "-m", "venv", str(root)],
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
    )
    for step in steps:
        result = subprocess.run(
            step,
            env=_environ(None),
            cwd=base,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"{step} failed:\n{result.stdout}\n{result.stderr}"
    workdir = base / "work"
    workdir.mkdir()
    return ClientVenv(root, workdir)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A keysvc on the embedded default, started from the suite's virtualenv."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc"))
    try:
        yield factory.start()
    finally:
        factory.close()


class TestTheInstall:
    @pytest.mark.parametrize("module", SERVER_ONLY)
    def test_holds_nothing_of_the_server(self, venv: ClientVenv, module: str) -> None:
        """The server package and its database, cache and hashing libraries are not installed."""
        result = venv.python_code(f"import {module}")

        assert result.returncode != 0
        assert f"No module named '{module}'" in result.stderr

    def test_holds_the_client_and_its_command(self, venv: ClientVenv) -> None:
        """keysvc_client imports from the venv's site-packages, and `keysvc` lists every command."""
        imported = venv.python_code("import keysvc_client.cli; print(keysvc_client.__file__)")
        listed = venv.run(str(venv.root / "bin" / "keysvc"), "--help")

        assert imported.returncode == 0, imported.stderr
        assert Path(imported.stdout.strip()).is_relative_to(venv.root)
        assert listed.returncode == 0, listed.stderr
        listed_commands = re.findall(r"^ {4}(\S+)", listed.stdout, re.MULTILINE)
        assert sorted(listed_commands) == [
            "audit", "authorize", "callers", "dashboard", "health", "keys", "migrate", "scopes",
            "serve",
        ]  # fmt: skip


class TestAdminCommands:
    def test_a_keys_life(self, venv: ClientVenv, server: ServerProcess) -> None:
        """keys create, keys list, authorize, keys revoke and audit list work from the client
        alone, with the admin token from the server's data directory."""
        created = venv.keysvc(
            server, "keys", "create", "--account", ACCOUNT, "--name", "Laptop key",
            "--mode", "test", "--scope", "links:read",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        [secret] = KEY_PATTERN.findall(created.stdout)
        assert "Store this key now" in created.stdout
        key_id = secret[8:20]

        listed = venv.keysvc(server, "keys", "list", "--account", ACCOUNT)
        assert listed.returncode == 0, listed.stderr
        [row] = table(listed.stdout)
        assert (row["ID"], row["NAME"], row["MODE"], row["STATUS"]) == (
            key_id,
            "Laptop key",
            "test",
            "active",
        )

        allowed = venv.keysvc(server, "authorize", f"Bearer {secret}", "--scope", "links:read")
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith(f"200 ALLOWED  key={key_id} account={ACCOUNT}")

        revoked = venv.keysvc(server, "keys", "revoke", "--account", ACCOUNT, key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert table(revoked.stdout)[0]["STATUS"] == "revoked"

        refused = venv.keysvc(server, "authorize", secret)
        assert refused.returncode == 1
        assert refused.stdout.startswith("401 REVOKED")

        audit = venv.keysvc(server, "audit", "list", "--account", ACCOUNT)
        assert audit.returncode == 0, audit.stderr
        assert [(r["ACTION"], r["KEY ID"], r["ACTOR"]) for r in table(audit.stdout)] == [
            ("key_revoked", key_id, "admin-token"),
            ("key_created", key_id, "admin-token"),
        ]

    def test_a_closed_pipe_ends_the_command_quietly(
        self, venv: ClientVenv, server: ServerProcess
    ) -> None:
        """Output into a pipe nobody reads ends the command by SIGPIPE, as `| head` expects,
        with no traceback."""
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the command writes anything
        try:
            process = subprocess.run(
                [str(venv.root / "bin" / "keysvc"), "scopes"],
                env=_environ(
                    {"KEYSVC_TARGET": server.target, "KEYSVC_DATA_DIR": str(server.data_dir)}
                ),
                cwd=venv.workdir,
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        finally:
            os.close(write_end)

        assert process.returncode == -signal.SIGPIPE, process.stderr
        assert process.stderr == ""


class TestServerCommands:
    @pytest.mark.parametrize(
        "args",
        [
            ["serve", "--listen", "127.0.0.1:0"],
            ["migrate"],
            ["callers", "new-token", "--name", "ci", "--role", "admin"],
            ["serve", "--help"],
            ["dashboard", "serve", "--users", "users.toml"],
        ],
        ids=["serve", "migrate", "callers", "serve-help", "dashboard"],
    )
    def test_say_the_server_package_is_not_installed(
        self, venv: ClientVenv, args: list[str]
    ) -> None:
        """`keysvc serve` (migrate, callers) exits 2 saying the keysvc server package is not
        installed, whatever flags it was given."""
        result = venv.run(str(venv.root / "bin" / "keysvc"), *args)

        assert result.returncode == 2
        assert result.stderr.startswith(
            f"keysvc: `keysvc {args[0]}` needs the keysvc server package, which is not installed"
        ), result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


# Every flavour built from one Connection; each must reach the server with its token.
CONNECTION_SCRIPT = """
import asyncio, json, sys
from keysvc_client import Connection, Guard, KeyServiceClient, aio

target, token, account = sys.argv[1:]
connection = Connection(target, token=token)
out = {"repr": repr(connection)}
with KeyServiceClient(connection, timeout=10) as client:
    out["scopes"] = len(client.list_scopes())
    secret = client.create_key(account, "connection", "test", ["links:read"]).secret
with Guard(connection, required_mode="test", timeout=10) as guard:
    out["guard"] = guard.check(f"Bearer {secret}", ["links:read"]).status
    out["wrong_mode"] = Guard(connection, required_mode="live", timeout=10).check(secret).status

async def flavour_aio():
    async with aio.KeyServiceClient(connection, timeout=10) as client:
        out["aio_scopes"] = len(await client.list_scopes())
    async with aio.Guard(connection, timeout=10) as guard:
        out["aio_guard"] = (await guard.check(secret, ["links:read"])).status

asyncio.run(flavour_aio())
for build in (
    lambda: KeyServiceClient(connection, admin_token=token),
    lambda: aio.Guard(connection, tls_ca="ca.pem"),
):
    try:
        build()
    except TypeError as err:
        out.setdefault("mixed", []).append(str(err))
print(json.dumps(out))
"""


class TestConnection:
    def test_every_client_and_guard_takes_one_connection(
        self, venv: ClientVenv, server: ServerProcess
    ) -> None:
        """KeyServiceClient and Guard, blocking and asyncio, reach keysvc with the target and
        token of one Connection; its repr hides the token; keywords beside it are refused."""
        result = venv.python_code(CONNECTION_SCRIPT, server.target, server.admin_token, ACCOUNT)

        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        # Admin calls answer only with the admin token: the clients sent the Connection's.
        assert (out["scopes"], out["aio_scopes"]) == (9, 9)
        assert (out["guard"], out["wrong_mode"], out["aio_guard"]) == (200, 403, 200)
        assert server.admin_token not in out["repr"]
        assert out["repr"].startswith(f"Connection(target='{server.target}'")
        assert out["mixed"] == [
            "KeyServiceClient() takes a Connection or keyword settings, not both:"
            " move admin_token into the Connection",
            "Guard() takes a Connection or keyword settings, not both:"
            " move tls_ca into the Connection",
        ]
