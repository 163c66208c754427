"""What the benchmark stores on the shared servers: a database of its own on PostgreSQL
(127.0.0.1:5432) and a key prefix of its own on Redis (127.0.0.1:6379), both removed at the end.

Every name carries the benchmark's process id, so that what a run killed outright (SIGKILL,
which leaves no chance to clean up) left behind is recognised and removed by the next run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import psycopg
import redis

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
_DATABASE = re.compile(r"^keysvc_bench_(?P<pid>\d+)_[0-9a-f]+$")
_REDIS_ROOT = re.compile(r"^(?P<root>keysvc-bench-(?P<pid>\d+)-[0-9a-f]+:)")
_WORKDIR = re.compile(r"^keysvc-bench-(?P<pid>\d+)-")


def _tag() -> str:
    return f"{os.getpid()}_{secrets.token_hex(4)}"


def workdir() -> Path:
    """A temporary directory of this run's own."""
    return Path(tempfile.mkdtemp(prefix=f"keysvc-bench-{os.getpid()}-"))


def _running_bench(pid: int) -> bool:
    """Whether `pid` is a live benchmark (this one or another running beside it)."""
    try:
        return b"bench" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _execute(statement: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


def checkpoints() -> int:
    """PostgreSQL's checkpoints so far (timed and requested): every CREATE DATABASE on the
    server forces one, and a checkpoint can hold up commits, whoever's they are."""
    with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        ).fetchone()
    return int(row[0]) if row else 0


class BenchDatabase:
    """A fresh, empty database, dropped by `drop` even while keysvc still holds connections."""

    def __init__(self) -> None:
        self.name = f"keysvc_bench_{_tag()}"
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        _execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        _execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @staticmethod
    def server_version() -> str:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"


class BenchRedis:
    """Key prefixes under one root of this run's own; `drop` deletes every key under it."""

    def __init__(self) -> None:
        self.url = REDIS_URL
        self.root = f"keysvc-bench-{_tag().replace('_', '-')}:"
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            client.ping()

    def prefix(self, name: str) -> str:
        return f"{self.root}{name}:"

    def drop(self) -> int:
        return _delete_keys(self.url, f"{self.root}*")

    def forget(self, prefix: str, key_ids: list[str]) -> None:
        """Deletes the keys' cached grants under `prefix`."""
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            client.delete(*(f"{prefix}grant:{key_id}" for key_id in key_ids))

    def server_version(self) -> str:
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            return str(client.info("server")["redis_version"])

    def local_pid(self) -> int | None:
        """The redis-server's process id, when it runs on this machine where we can see it."""
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            pid = int(client.info("server")["process_id"])
        return pid if Path(f"/proc/{pid}").exists() else None


def _delete_keys(url: str, pattern: str) -> int:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        doomed = list(client.scan_iter(pattern, count=1000))
        if doomed:
            client.delete(*doomed)
        return len(doomed)


def sweep_leftovers() -> list[str]:
    """Removes what benchmark runs that no longer exist left behind; says what it removed."""
    removed = []
    with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5) as conn:
        names = [
            str(row[0])
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'keysvc_bench_%'"
            )
        ]
    for name in names:
        match = _DATABASE.match(name)
        if match and not _running_bench(int(match["pid"])):
            _execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            removed.append(f"database {name}")
    with redis.Redis.from_url(REDIS_URL, socket_timeout=5, decode_responses=True) as client:
        roots = {
            match["root"]
            for key in client.scan_iter("keysvc-bench-*", count=1000)
            if (match := _REDIS_ROOT.match(key)) and not _running_bench(int(match["pid"]))
        }
    for root in sorted(roots):
        removed.append(f"{_delete_keys(REDIS_URL, f'{root}*')} Redis keys under {root}")
    for path in Path(tempfile.gettempdir()).glob("keysvc-bench-*"):
        match = _WORKDIR.match(path.name)
        if match and path.is_dir() and not _running_bench(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"directory {path}")
    return removed
