"""`keysvc migrate`: brings any configured database to the latest schema, replicas racing or not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import sqlalchemy as sa

from keysvc.adapters.store import migrate
from keysvc.adapters.store.sql import create_engine
from tests.services import SharedPostgres, wait_for

KEYSVC = Path(sys.executable).parent / "keysvc"
RACERS = 4
# Four Python processes importing SQLAlchemy and Alembic on a loaded machine.
GATHER_TIMEOUT = 60.0


def _migrate(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(KEYSVC), "migrate", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _waiting_on_locks(monitor: psycopg.Connection) -> int:
    """How many other sessions on the monitor's database are blocked on a lock."""
    (count,) = monitor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).fetchone() or (0,)
    return int(count)


class TestMigrate:
    def test_replicas_migrating_at_once_leave_one_current_schema(
        self, shared_postgres: SharedPostgres, tmp_path: Path
    ) -> None:
        """Four `keysvc migrate` held up together on an empty PostgreSQL database and let go
        at once all succeed, leaving one current schema."""
        url = shared_postgres.fresh_database()
        with psycopg.connect(url) as stalled, psycopg.connect(url, autocommit=True) as monitor:
            # A migrator stalled half-way: its uncommitted alembic_version table holds up
            # each `keysvc migrate` that reaches the empty schema, on its lock or on this
            # table, until all four are waiting; its rollback lets them go at one instant.
            stalled.execute("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL)")
            runs = [_migrate("--database-url", url, cwd=tmp_path) for _ in range(RACERS)]
            try:
                wait_for(
                    lambda: _waiting_on_locks(monitor) >= RACERS,
                    timeout=GATHER_TIMEOUT,
                    what=f"{RACERS} migrations waiting on the stalled one",
                )
            finally:
                stalled.rollback()
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0] * RACERS, outputs
        engine = create_engine(url)
        try:
            assert migrate.is_current(engine)
            with engine.connect() as conn:
                versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            assert len(versions) == 1
            assert {"api_keys", "audit_events"} <= set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()

    def test_the_embedded_default_migrates_the_sqlite_file_in_the_data_dir(
        self, tmp_path: Path
    ) -> None:
        """With no database URL, `keysvc migrate` creates .keysvc/keysvc.db at the latest schema."""
        run = _migrate(cwd=tmp_path)
        output = run.communicate(timeout=120)[0]
        assert run.returncode == 0, output
        assert "up to date" in output
        engine = create_engine(f"sqlite:///{tmp_path / '.keysvc' / 'keysvc.db'}")
        try:
            assert migrate.is_current(engine)
        finally:
            engine.dispose()

    def test_an_unreachable_database_is_a_clear_error(self, tmp_path: Path) -> None:
        """Migrating a database nobody answers for exits non-zero with a message, no traceback."""
        run = _migrate("--database-url", "postgresql://postgres@127.0.0.1:1/nothing", cwd=tmp_path)
        output = run.communicate(timeout=120)[0]
        assert run.returncode != 0
        assert "database" in output.lower()
        assert "Traceback" not in output
