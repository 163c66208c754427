"""The key lifecycle: expiry, allowed IPs, revocation reasons, and what the audit trail says of
rolls, updates and leaks; key_changes learns the kind 'updated'.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from keysvc.adapters.store import audit_triggers

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KINDS_BEFORE = "kind IN ('created', 'revoked')"
_KINDS = "kind IN ('created', 'revoked', 'updated')"
_ACTIONS_BEFORE = "action IN ('key_created', 'key_revoked')"
_ACTIONS = (
    "action IN ('key_created', 'key_revoked', 'key_rolled', 'key_updated', 'key_leak_revoked')"
)


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True))
    # Space-separated normalized addresses and ranges; empty: any address.
    op.add_column(
        "api_keys",
        sa.Column("allowed_ips", sa.String(4096), nullable=False, server_default=""),
    )
    op.add_column("api_keys", sa.Column("revocation_reason", sa.String(200), nullable=True))
    # New columns only: the append-only triggers stay as they are.
    op.add_column("audit_events", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("audit_events", sa.Column("related_key_id", sa.String(32), nullable=True))
    # JSON: [{"field", "before", "after"}, ...] for an update.
    op.add_column("audit_events", sa.Column("changes", sa.Text(), nullable=True))
    _kinds(_KINDS)
    _actions(_ACTIONS)


def downgrade() -> None:
    # Keeps the trail: events of the new kinds make the downgrade fail, as they should.
    _actions(_ACTIONS_BEFORE)
    op.execute("DELETE FROM key_changes WHERE kind = 'updated'")
    _kinds(_KINDS_BEFORE)
    for column in ("changes", "related_key_id", "reason"):
        op.drop_column("audit_events", column)
    for column in ("revocation_reason", "allowed_ips", "expire_time"):
        op.drop_column("api_keys", column)


def _actions(condition: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("ck_audit_events_action", "audit_events", type_="check")
        op.create_check_constraint("ck_audit_events_action", "audit_events", condition)
        return
    # SQLite copies the table: its append-only triggers go with the old one, and come back.
    audit_triggers.drop()
    with op.batch_alter_table("audit_events", recreate="always") as batch:
        batch.drop_constraint("ck_audit_events_action", type_="check")
        batch.create_check_constraint("ck_audit_events_action", condition)
    audit_triggers.create()


def _kinds(condition: str) -> None:
    # SQLite cannot alter a constraint: the batch copies the table with the new one.
    with op.batch_alter_table("key_changes", recreate="auto") as batch:
        batch.drop_constraint("ck_key_changes_kind", type_="check")
        batch.create_check_constraint("ck_key_changes_kind", condition)
