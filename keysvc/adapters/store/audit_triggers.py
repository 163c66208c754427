"""The triggers that make audit_events append-only, for the migrations that create them and
for those that must set them aside while SQLite copies the table (it cannot alter a
constraint in place).

The database itself refuses to change or remove an event: triggers abort every UPDATE and
DELETE (and, on PostgreSQL, TRUNCATE), whatever client or bug attempts it.
"""

from __future__ import annotations

from alembic import op

# Each trigger aborts the statement, naming what it refused.
_SQLITE_TRIGGERS = {
    "audit_events_no_update": """
        CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END
    """,
    "audit_events_no_delete": """
        CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END
    """,
    # INSERT OR REPLACE removes the row it replaces without firing the DELETE trigger.
    "audit_events_no_replace": """
        CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
        WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id)
        BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: REPLACE refused'); END
    """,
}

# restrict_violation is an integrity error: drivers report it as they report a CHECK.
_POSTGRESQL_FUNCTION = """
    CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING
            MESSAGE = 'audit_events is append-only: ' || TG_OP || ' refused',
            ERRCODE = 'restrict_violation';
    END
    $$
"""
_POSTGRESQL_TRIGGERS = {
    "audit_events_no_update_or_delete": """
        CREATE TRIGGER audit_events_no_update_or_delete
        BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()
    """,
    "audit_events_no_truncate": """
        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
    """,
}


def create() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE_TRIGGERS.values():
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(_POSTGRESQL_FUNCTION)
        for statement in _POSTGRESQL_TRIGGERS.values():
            op.execute(statement)
    else:
        raise NotImplementedError(f"no append-only triggers for {dialect}")


def drop() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    elif dialect == "postgresql":
        for name in _POSTGRESQL_TRIGGERS:
            op.execute(f"DROP TRIGGER {name} ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
