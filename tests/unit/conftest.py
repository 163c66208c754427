"""Fixtures: a migrated SQLite file per test, and keysvc wired as keysvc.server wires it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from keysvc.authorizer import Authorizer
from keysvc.cache.memory import MemoryKeyCache
from keysvc.change_log import ChangeFollower, ChangeLog
from keysvc.last_used import LastUsedRecorder
from keysvc.service import KeyService
from keysvc.store import migrate
from keysvc.store.sql import SqlKeyStore, create_engine
from keysvc.workers import Workers
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
def workers() -> Iterator[Workers]:
    workers = Workers(db_threads=4, hashing_threads=4)
    yield workers
    workers.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Short, so that RevokeKey's wait costs the tests little; the follower reads five times in it.
LEASE_SECONDS = 0.05


@dataclass
class Keysvc:
    """One keysvc process: the use cases and Authorize over a store, sharing one cache and
    one view of the change log. The follower starts in the event loop that first uses them."""

    store: SqlKeyStore
    workers: Workers
    clock: FakeClock
    monotonic: FakeMonotonic
    verifier: CountingVerifier
    cache: MemoryKeyCache
    recorder: LastUsedRecorder
    change_log: ChangeLog
    follower: ChangeFollower
    _service: KeyService
    _authorizer: Authorizer
    # How long each refusal the throttle slowed down was made to wait (no real waiting).
    delays: list[float]
    _following: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def service(self) -> KeyService:
        self.follow()
        return self._service

    @property
    def authorizer(self) -> Authorizer:
        self.follow()
        return self._authorizer

    def follow(self) -> None:
        """Starts following the change log in the running event loop, once per loop (outside
        one, nothing can use the log)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop not in self._following:

            async def follow() -> None:
                await self.follower.load()
                await self.follower.run()

            self._following[loop] = loop.create_task(follow())

    @classmethod
    def wire(
        cls,
        store: SqlKeyStore,
        workers: Workers,
        clock: FakeClock,
        *,
        verifier: CountingVerifier | None = None,
        authorizer_class: type[Authorizer] = Authorizer,
    ) -> Keysvc:
        verifier = verifier or CountingVerifier()
        monotonic = FakeMonotonic()
        cache = MemoryKeyCache(clock=monotonic)
        change_log = ChangeLog(lease_seconds=LEASE_SECONDS)
        follower = ChangeFollower(
            store, workers, change_log, interval_seconds=LEASE_SECONDS / 5, min_gap_seconds=0
        )

        async def flush(uses: Mapping[str, datetime]) -> None:
            await workers.db(store.record_last_used, uses)

        recorder = LastUsedRecorder(flush)
        delays: list[float] = []

        async def record_delay(seconds: float) -> None:
            delays.append(seconds)

        return cls(
            store=store,
            workers=workers,
            clock=clock,
            monotonic=monotonic,
            verifier=verifier,
            cache=cache,
            recorder=recorder,
            change_log=change_log,
            follower=follower,
            _service=KeyService(store, cache, verifier, workers, change_log, clock=clock),
            _authorizer=authorizer_class(
                store,
                cache,
                verifier,
                workers,
                recorder,
                change_log,
                clock=clock,
                monotonic=monotonic,
                sleep=record_delay,
            ),
            delays=delays,
        )

    def replica(
        self,
        *,
        verifier: CountingVerifier | None = None,
        authorizer_class: type[Authorizer] = Authorizer,
    ) -> Keysvc:
        """Another keysvc process on the same database: cold cache, fresh verification count."""
        return Keysvc.wire(
            self.store,
            self.workers,
            self.clock,
            verifier=verifier,
            authorizer_class=authorizer_class,
        )


@pytest.fixture
def keysvc(store: SqlKeyStore, workers: Workers, clock: FakeClock) -> Keysvc:
    return Keysvc.wire(store, workers, clock)
