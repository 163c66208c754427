"""Fixtures: a migrated database per test, and keysvc built on it as the server builds it
(keysvc.runtime.build), with clocks, argon2 and the throttle's sleep the tests control."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from keysvc.adapters.store import migrate
from keysvc.adapters.store.sql import SqlKeyStore, create_engine
from keysvc.adapters.workers import ThreadWorkers
from keysvc.ports.cache import KeyCache
from keysvc.ports.workers import Workers
from keysvc.runtime import build
from keysvc.runtime.config import Settings
from keysvc.usecases.admin import KeyAdmin
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeLog
from keysvc.usecases.last_used import LastUsedRecorder
from tests.services import SharedPostgres

from .support import CountingVerifier, FakeClock, FakeMonotonic


@pytest.fixture
def database_path(tmp_path: Path) -> Path:
    return tmp_path / "keysvc.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, database_path: Path) -> Iterator[Engine]:
    """A migrated, empty database: a SQLite file, or this session's PostgreSQL database."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{database_path}")
        migrate.upgrade(engine)
    else:
        postgres: SharedPostgres = request.getfixturevalue("shared_postgres")
        engine = create_engine(postgres.url)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            # The audit trail refuses TRUNCATE: its owner lifts that for this one statement.
            conn.execute(sa.text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            conn.execute(sa.text("TRUNCATE api_keys, audit_events, key_changes RESTART IDENTITY"))
            conn.execute(sa.text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
    yield engine
    engine.dispose()


def dump_rows(engine: Engine) -> str:
    """Every row of every table, as text."""
    with engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in sa.inspect(conn).get_table_names()
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))
        )


@pytest.fixture
def store(engine: Engine) -> SqlKeyStore:
    return SqlKeyStore(engine)


@pytest.fixture
def workers() -> Iterator[ThreadWorkers]:
    workers = ThreadWorkers(db_threads=4, hashing_threads=4)
    yield workers
    workers.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Short, so that RevokeKey's wait costs the tests little; the follower reads five times in it.
SETTINGS = Settings(lease_seconds=0.05)


async def _async_noop(seconds: float) -> None:
    return None


@dataclass
class Keysvc:
    """One keysvc process: its graph as keysvc.runtime.build makes it, started, and what the
    test controls of it."""

    graph: build.Keysvc
    engine: Engine
    clock: FakeClock
    monotonic: FakeMonotonic
    verifier: CountingVerifier
    # How long each refusal the throttle slowed down was made to wait (no real waiting).
    delays: list[float]
    _stack: AsyncExitStack

    @property
    def admin(self) -> KeyAdmin:
        return self.graph.admin

    @property
    def authorizer(self) -> Authorizer:
        return self.graph.authorizer

    @property
    def store(self) -> SqlKeyStore:
        assert isinstance(self.graph.store, SqlKeyStore)
        return self.graph.store

    @property
    def cache(self) -> KeyCache:
        return self.graph.cache

    @property
    def change_log(self) -> ChangeLog:
        return self.graph.change_log

    @property
    def workers(self) -> Workers:
        return self.graph.workers

    @property
    def recorder(self) -> LastUsedRecorder:
        return self.graph.recorder

    async def replica(
        self,
        *,
        verifier: CountingVerifier | None = None,
        authorizer_class: type[Authorizer] = Authorizer,
    ) -> Keysvc:
        """Another keysvc process on the same database: cold cache, fresh verification count."""
        return await start(
            self._stack,
            self.engine,
            self.clock,
            verifier=verifier,
            authorizer_class=authorizer_class,
        )


async def start(
    stack: AsyncExitStack,
    engine: Engine,
    clock: FakeClock,
    *,
    verifier: CountingVerifier | None = None,
    authorizer_class: type[Authorizer] = Authorizer,
) -> Keysvc:
    """keysvc built on `engine`, running until `stack` closes."""
    verifier = verifier or CountingVerifier()
    monotonic = FakeMonotonic()
    delays: list[float] = []

    async def record_delay(seconds: float) -> None:
        delays.append(seconds)

    seams = build.Seams(
        clock=clock,
        monotonic=monotonic,
        sleep=record_delay,
        verifier=verifier,
        authorizer_class=authorizer_class,
    )
    graph = await stack.enter_async_context(build.built(SETTINGS, engine=engine, seams=seams))
    return Keysvc(graph, engine, clock, monotonic, verifier, delays, stack)


@dataclass
class KeysvcFixture:
    """What the `keysvc` fixture hands @async_test, which starts keysvc in the test's event
    loop (support.AsyncFixture) and passes the test the running Keysvc."""

    engine: Engine
    clock: FakeClock

    async def enter(self, stack: AsyncExitStack) -> Keysvc:
        return await start(stack, self.engine, self.clock)


@pytest.fixture
def keysvc(engine: Engine, clock: FakeClock) -> KeysvcFixture:
    return KeysvcFixture(engine, clock)
