"""The SQL tables, as SQLAlchemy Core sees them. The Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, aware on the way out on every database (SQLite keeps them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: keysvc stores UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    # Space-separated, sorted: scope names never contain spaces.
    sa.Column("scopes", sa.String(1024), nullable=False),
    sa.Column("verifier", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("expire_time", UTCDateTime(), nullable=True),
    # Space-separated, normalized (keysvc.core.networks); empty: any address.
    sa.Column("allowed_ips", sa.String(4096), nullable=False, server_default=""),
    sa.Column("revocation_reason", sa.String(200), nullable=True),
)

# Append-only: the database's own triggers refuse UPDATE and DELETE (see migration 0002).
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    # As gRPC names it; a transport detail keysvc does not bound.
    sa.Column("peer", sa.Text(), nullable=False),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("related_key_id", sa.String(32), nullable=True),
    # JSON: [{"field", "before", "after"}, ...] for an update.
    sa.Column("changes", sa.Text(), nullable=True),
)

# What every replica follows to learn of changes made through the others (see migration 0003
# and docs/revocation.md): appended in the same transaction as the change, in commit order.
key_changes = sa.Table(
    "key_changes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("changed_at", UTCDateTime(), nullable=False),
)

# One row: the key that authenticates grants in the shared cache. It never leaves the database
# for the cache, so write access to the cache cannot forge a grant.
cache_mac_key = sa.Table(
    "cache_mac_key",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("mac_key", sa.String(64), nullable=False),
)
