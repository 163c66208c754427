"""audit_events: who created or revoked which key, when and from where; append-only.

The database itself refuses to change or remove an event: triggers abort every UPDATE
and DELETE (and, on PostgreSQL, TRUNCATE), whatever client or bug attempts it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

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


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("peer", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "action IN ('key_created', 'key_revoked')", name="ck_audit_events_action"
        ),
    )
    # The audit trail of one account, newest first.
    op.create_index(
        "ix_audit_events_account_occurred", "audit_events", ["account_id", "occurred_at", "id"]
    )
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


def downgrade() -> None:
    # Drops the whole trail: keysvc never runs this; an operator would, deliberately.
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    elif dialect == "postgresql":
        for name in _POSTGRESQL_TRIGGERS:
            op.execute(f"DROP TRIGGER {name} ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_index("ix_audit_events_account_occurred", table_name="audit_events")
    op.drop_table("audit_events")
