"""api_keys: one row per key, holding its argon2id verifier and never the raw key.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("scopes", sa.String(1024), nullable=False),
        sa.Column("verifier", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("mode IN ('live', 'test')", name="ck_api_keys_mode"),
    )
    # The key list: one account, newest first.
    op.create_index("ix_api_keys_account_created", "api_keys", ["account_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_account_created", table_name="api_keys")
    op.drop_table("api_keys")
