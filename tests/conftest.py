"""Fixtures shared by the whole suite: the backends keysvc runs on.

Every specification that touches storage runs twice: on the embedded default
(SQLite file, in-process cache) and on the production pair (PostgreSQL, Redis),
using the machine's shared servers under a database and key prefix of their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from tests.services import SharedPostgres, SharedRedis


@pytest.fixture(scope="session")
def shared_postgres() -> Iterator[SharedPostgres]:
    """A database of this session's own on the shared PostgreSQL, dropped at the end."""
    postgres = SharedPostgres()
    yield postgres
    postgres.drop()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[SharedRedis]:
    """The shared Redis under a key prefix of this session's own, cleared at the end."""
    redis = SharedRedis()
    yield redis
    redis.drop()


@dataclass(frozen=True)
class Backend:
    """What a keysvc server stores keys in: None means the embedded default."""

    name: str
    database_url: str | None = None
    redis_url: str | None = None
    redis_namespace: str | None = None

    def dump(self, data_dir: Path) -> str:
        """Everything the backend stores, as text: every SQL row, and every cache entry."""
        if self.database_url is None:
            connection = sqlite3.connect(data_dir / "keysvc.db")
            try:
                return "\n".join(connection.iterdump())
            finally:
                connection.close()
        lines = []
        with psycopg.connect(self.database_url) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
            for (table,) in tables:
                rows = conn.execute(
                    sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(sql.Identifier(table))
                )
                lines += [f"{table}: {row}" for (row,) in rows]
        if self.redis_url:
            client = redis.Redis.from_url(self.redis_url, decode_responses=True)
            for key in client.scan_iter(f"{self.redis_namespace}*"):
                lines.append(f"{key!r} = {client.dump(key)!r} {client.get(key)!r}")
            client.close()
        return "\n".join(lines)

    @property
    def server_args(self) -> list[str]:
        args = []
        if self.database_url:
            args += ["--database-url", self.database_url]
        if self.redis_url:
            args += ["--redis-url", self.redis_url, "--redis-namespace", self.redis_namespace or ""]
        return args


BACKENDS = ("embedded", "postgres+redis")


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    """A backend with nothing in it yet: a fresh database and key prefix for production."""
    if name == "embedded":
        return Backend(name)
    postgres: SharedPostgres = request.getfixturevalue("shared_postgres")
    redis: SharedRedis = request.getfixturevalue("shared_redis")
    database_url = postgres.fresh_database()
    return Backend(
        name,
        database_url=database_url,
        redis_url=redis.url,
        redis_namespace=f"{redis.prefix}{database_url.rsplit('_', 1)[-1]}:",
    )
