"""Real PostgreSQL and Redis for the tests: the machine's shared servers, and private ones.

The shared servers (127.0.0.1:5432 and :6379) carry the normal suite; each test
session gets its own database and Redis key prefix there. Tests that pause, kill
or restart a server start a private instance from the same binaries on a free
port, so the shared ones are never harmed.

When a binary or a shared server is missing, the tests that need it are skipped
with the reason, except under CI (CI=true), where they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

SHARED_POSTGRES = ("127.0.0.1", 5432)
SHARED_REDIS = ("127.0.0.1", 6379)
START_TIMEOUT = 30.0
T = TypeVar("T")


def unavailable(reason: str) -> None:
    """Skips the test on a developer's machine; fails it under CI, where all must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _binary(name: str, *candidates: str) -> str:
    for candidate in (shutil.which(name), *candidates):
        if candidate and Path(candidate).exists():
            return candidate
    unavailable(f"{name} is not installed")
    raise AssertionError("unreachable")


class _Process:
    """A server process that can be paused, resumed, killed and started again."""

    process: subprocess.Popen[bytes] | None = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=START_TIMEOUT)
        self.process = None


class PrivateRedis(_Process):
    """A redis-server of its own on a free port, keeping nothing on disk (like the shared one)
    unless `options` say otherwise (e.g. ["--appendonly", "yes"]); a restart then loads what
    it kept in `workdir`."""

    def __init__(
        self, workdir: Path, *, password: str | None = None, options: Sequence[str] = ()
    ) -> None:
        self.binary = _binary("redis-server")
        self.password = password
        self.port = free_port()
        self.workdir = workdir
        self.options = list(options)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                *(["--requirepass", self.password] if self.password else []),
                # Later options win over the ones above.
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: self._pong(), timeout=START_TIMEOUT, what="private redis-server")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                # With a password, Redis answers NOAUTH: up all the same.
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


class PrivatePostgres(_Process):
    """A PostgreSQL cluster of its own (initdb into a temporary directory), on a free port.

    initdb and postgres refuse to run as root, so as root they run as the postgres user.
    """

    def __init__(self) -> None:
        self.initdb = _binary(
            "initdb", *map(str, sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")))
        )
        self.postgres = str(Path(self.initdb).with_name("postgres"))
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="keysvc-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                unavailable("running PostgreSQL as root needs runuser")
            shutil.chown(self.root, user="postgres")
            self._as_user = [str(runuser), "-u", "postgres", "--"]
        subprocess.run(
            [*self._as_user, self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            [*self._as_user, self.postgres, "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._ready, timeout=START_TIMEOUT, what="private postgres")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def pause(self) -> None:
        # SIGSTOP to every backend too, or connections already open would carry on.
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        for pid in self._pids():
            # A backend may exit between being listed and being signalled.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _pids(self) -> list[int]:
        """The postmaster and its backends: every process working in the data directory.

        (The Popen is runuser's, not postgres's; and PostgreSQL's processes all chdir
        to their data directory.)
        """
        target = os.path.realpath(self.data)
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "cwd") == target:
                        found.append(int(entry.name))
                except OSError:
                    continue  # gone meanwhile, or a zombie: it holds nothing any more
        return found

    def kill(self) -> None:
        """SIGKILL to PostgreSQL, returning once none of its processes is left.

        A backend forked while the others are being killed would keep the old shared
        memory attached and stop the next start: kill until there is none.
        """
        if self.process is None:
            return

        def all_gone() -> bool:
            left = self._pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            return not left

        wait_for(all_gone, timeout=START_TIMEOUT, what="the killed PostgreSQL's processes")
        self.process.kill()
        self.process.wait(timeout=START_TIMEOUT)
        self.process = None
        # What a killed postmaster leaves behind would stop the next start.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        for leftover in self.root.glob(f".s.PGSQL.{self.port}*"):
            leftover.unlink(missing_ok=True)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class SharedPostgres:
    """A database of this test session's own on the machine's PostgreSQL."""

    def __init__(self) -> None:
        if not answers(SHARED_POSTGRES):
            unavailable("PostgreSQL is not answering on 127.0.0.1:5432")
        self.name = f"keysvc_test_{secrets.token_hex(4)}"
        self.admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        self._execute(f'CREATE DATABASE "{self.name}"')

    def _execute(self, statement: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            # The statements are this module's own, naming its own databases.
            conn.execute(sql.SQL(statement))

    def fresh_database(self) -> str:
        """The URL of another new, empty database, dropped with the others at the end."""
        name = f"{self.name}_{secrets.token_hex(3)}"
        self._execute(f'CREATE DATABASE "{name}"')
        self._extra = [*getattr(self, "_extra", []), name]
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    def drop(self) -> None:
        for name in [self.name, *getattr(self, "_extra", [])]:
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class SharedRedis:
    """The machine's Redis, under a key prefix of this test session's own."""

    def __init__(self) -> None:
        if not answers(SHARED_REDIS):
            unavailable("Redis is not answering on 127.0.0.1:6379")
        self.url = "redis://127.0.0.1:6379/0"
        self.prefix = f"keysvc-test-{secrets.token_hex(4)}:"

    def drop(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        keys = list(client.scan_iter(f"{self.prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def sessions_waiting_on_locks(database_url: str) -> int:
    """How many sessions on the database are blocked on a lock right now: how a test knows a
    call it made has reached the database and is held by the lock it set."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])
