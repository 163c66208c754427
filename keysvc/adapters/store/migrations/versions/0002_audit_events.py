"""audit_events: who created or revoked which key, when and from where; append-only.

The database itself refuses to change or remove an event: triggers abort every UPDATE
and DELETE (and, on PostgreSQL, TRUNCATE), whatever client or bug attempts it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from keysvc.adapters.store import audit_triggers

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


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
    audit_triggers.create()


def downgrade() -> None:
    # Drops the whole trail: keysvc never runs this; an operator would, deliberately.
    audit_triggers.drop()
    op.drop_index("ix_audit_events_account_occurred", table_name="audit_events")
    op.drop_table("audit_events")
