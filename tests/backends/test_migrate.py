"""`keysvc migrate`: brings any configured database to the latest schema, replicas racing or not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from keysvc.store import migrate
from keysvc.store.sql import create_engine
from tests.services import SharedPostgres

KEYSVC = Path(sys.executable).parent / "keysvc"


def _migrate(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(KEYSVC), "migrate", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class TestMigrate:
    def test_replicas_migrating_at_once_leave_one_current_schema(
        self, shared_postgres: SharedPostgres, tmp_path: Path
    ) -> None:
        """Four `keysvc migrate` started together on one PostgreSQL all succeed, schema intact."""
        url = shared_postgres.fresh_database()
        runs = [_migrate("--database-url", url, cwd=tmp_path) for _ in range(4)]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0] * 4, outputs
        engine = create_engine(url)
        try:
            assert migrate.is_current(engine)
            with engine.connect() as conn:
                versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            assert len(versions) == 1
            assert "api_keys" in sa.inspect(engine).get_table_names()
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
