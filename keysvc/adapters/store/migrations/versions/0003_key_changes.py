"""key_changes, the log of key changes every replica follows; cache_mac_key.

key_changes is the ordered log of key creations and revocations; cache_mac_key holds the
key that authenticates what replicas put in the shared cache. A change is written in the
same transaction as the change itself, and writers take turns (see keysvc.adapters.store.sql), so
`seq` order is commit order: a replica that has read the log up to `seq` knows every
change committed before it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_changes",
        # SQLite's INTEGER PRIMARY KEY and PostgreSQL's identity both count up from 1.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('created', 'revoked')", name="ck_key_changes_kind"),
    )
    mac_keys = op.create_table(
        "cache_mac_key",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mac_key", sa.String(64), nullable=False),
    )
    op.bulk_insert(mac_keys, [{"id": 1, "mac_key": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("cache_mac_key")
    op.drop_table("key_changes")
