"""KeyStore on SQL through SQLAlchemy Core: SQLite embedded, PostgreSQL in production."""

from __future__ import annotations

import builtins
import contextlib
import logging
import secrets
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from keysvc.adapters import deadline
from keysvc.adapters.store.schema import api_keys, audit_events, cache_mac_key, key_changes
from keysvc.core import keys
from keysvc.core.errors import Unavailable
from keysvc.core.model import (
    Actor,
    ApiKey,
    AuditAction,
    AuditEvent,
    Change,
    ChangeKind,
    Cursor,
    KeyStatus,
    Mode,
)
from keysvc.ports.store import KeyIdTaken, Revocation, StoredKey

log = logging.getLogger(__name__)

# Drivers keysvc installs for each database, so that operators can write plain URLs.
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def database_url(url: str) -> URL:
    """`url` with keysvc's driver filled in, e.g. postgresql:// -> postgresql+psycopg://."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def create_engine(url: str, *, timeout_seconds: float = 5.0, connections: int = 5) -> Engine:
    """An engine whose pool holds `connections`: one for each thread that may use it."""
    target = database_url(url)
    # Bound parameters stay out of error messages and logs, whatever they hold.
    options: dict[str, Any] = {
        "hide_parameters": True,
        "pool_pre_ping": True,
        "pool_size": connections,
        "max_overflow": 2,
    }
    if target.get_backend_name() == "sqlite":
        options["connect_args"] = {"check_same_thread": False, "timeout": timeout_seconds}
    elif target.get_backend_name() == "postgresql":
        options["connect_args"] = {"connect_timeout": max(1, round(timeout_seconds))}
        options["pool_timeout"] = timeout_seconds
    engine = sa.create_engine(target, **options)
    if target.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the admin RPCs write while cold look-ups read.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _row_to_key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        prefix=row.prefix,
        mode=Mode(row.mode),
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


_PUBLIC_COLUMNS = [c for c in api_keys.c if c.name != "verifier"]

EVENT_ID_LENGTH = 16


def _new_event_id() -> str:
    # 95 random bits: public, unguessable, and never colliding in practice.
    return "".join(secrets.choice(keys.ALPHABET) for _ in range(EVENT_ID_LENGTH))


def _record(
    conn: Connection,
    action: AuditAction,
    account_id: str,
    key_id: str,
    actor: Actor,
    at: datetime,
) -> None:
    conn.execute(
        audit_events.insert().values(
            id=_new_event_id(),
            account_id=account_id,
            action=action.value,
            key_id=key_id,
            actor=actor.name,
            peer=actor.peer,
            occurred_at=at,
        )
    )


def _log_change(conn: Connection, key_id: str, kind: ChangeKind, at: datetime) -> int:
    """Appends a change to the log and returns its seq; call it last in the transaction.

    Writers take turns until they commit (PostgreSQL: an advisory lock; SQLite has a
    single writer), so seq order is commit order and a reader that sees a change sees
    every change before it. Taken last, the lock is held for the commit alone.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('keysvc.key_changes'))"))
    result = conn.execute(
        key_changes.insert().values(key_id=key_id, kind=kind.value, changed_at=at)
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _row_to_change(row: sa.Row[Any]) -> Change:
    return Change(seq=row.seq, key_id=row.key_id, kind=ChangeKind(row.kind))


# The change log's head, read in the same statement (hence the same snapshot) as a key.
_LOG_HEAD = sa.select(sa.func.coalesce(sa.func.max(key_changes.c.seq), 0)).scalar_subquery()


def _row_to_event(row: sa.Row[Any]) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        account_id=row.account_id,
        action=AuditAction(row.action),
        key_id=row.key_id,
        actor=row.actor,
        peer=row.peer,
        occurred_at=row.occurred_at,
    )


class SqlKeyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
                if deadline.passed():
                    # The caller has been told UNAVAILABLE: roll back rather than make
                    # that answer false (a key nobody holds the secret of, say).
                    raise Unavailable("database did not answer in time")
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
            log.warning("database unavailable: %s", type(err.orig or err).__name__)
            raise Unavailable("database unavailable") from err

    def insert(self, key: ApiKey, verifier: str, actor: Actor) -> int:
        try:
            with self._transaction() as conn:
                conn.execute(
                    api_keys.insert().values(
                        id=key.id,
                        account_id=key.account_id,
                        name=key.name,
                        prefix=key.prefix,
                        mode=key.mode.value,
                        scopes=" ".join(key.scopes),
                        verifier=verifier,
                        created_at=key.created_at,
                    )
                )
                _record(
                    conn, AuditAction.KEY_CREATED, key.account_id, key.id, actor, key.created_at
                )
                return _log_change(conn, key.id, ChangeKind.CREATED, key.created_at)
        except sa.exc.IntegrityError as err:
            # Or, rarer still, the event's id: either way, new ids make the next attempt.
            raise KeyIdTaken(key.id) from err

    def get(self, account_id: str, key_id: str) -> ApiKey | None:
        with self._transaction() as conn:
            row = conn.execute(
                sa.select(*_PUBLIC_COLUMNS).where(
                    api_keys.c.id == key_id, api_keys.c.account_id == account_id
                )
            ).one_or_none()
        return None if row is None else _row_to_key(row)

    def list(
        self,
        account_id: str,
        *,
        limit: int,
        after: Cursor | None,
        mode: Mode | None,
        status: KeyStatus | None,
    ) -> list[ApiKey]:
        query = sa.select(*_PUBLIC_COLUMNS).where(api_keys.c.account_id == account_id)
        if mode is not None:
            query = query.where(api_keys.c.mode == mode.value)
        if status is KeyStatus.ACTIVE:
            query = query.where(api_keys.c.revoked_at.is_(None))
        elif status is KeyStatus.REVOKED:
            query = query.where(api_keys.c.revoked_at.is_not(None))
        if after is not None:
            query = query.where(
                sa.or_(
                    api_keys.c.created_at < after.at,
                    sa.and_(api_keys.c.created_at == after.at, api_keys.c.id < after.id),
                )
            )
        query = query.order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc()).limit(limit)
        with self._transaction() as conn:
            return [_row_to_key(row) for row in conn.execute(query)]

    def revoke(self, account_id: str, key_id: str, at: datetime, actor: Actor) -> Revocation | None:
        mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
        with self._transaction() as conn:
            # Only the first revocation sets revoked_at, and only it is recorded. A concurrent
            # second one waits for the first (PostgreSQL's row lock, SQLite's single writer),
            # then matches no row.
            changed = conn.execute(
                api_keys.update().where(mine, api_keys.c.revoked_at.is_(None)).values(revoked_at=at)
            ).rowcount
            row = conn.execute(sa.select(*_PUBLIC_COLUMNS).where(mine)).one_or_none()
            if row is None:
                return None
            seq = None
            if changed:
                _record(conn, AuditAction.KEY_REVOKED, account_id, key_id, actor, at)
                seq = _log_change(conn, key_id, ChangeKind.REVOKED, at)
        return Revocation(key=_row_to_key(row), seq=seq)

    def list_audit_events(
        self, account_id: str, *, limit: int, after: Cursor | None
    ) -> builtins.list[AuditEvent]:
        query = sa.select(audit_events).where(audit_events.c.account_id == account_id)
        if after is not None:
            query = query.where(
                sa.or_(
                    audit_events.c.occurred_at < after.at,
                    sa.and_(audit_events.c.occurred_at == after.at, audit_events.c.id < after.id),
                )
            )
        query = query.order_by(audit_events.c.occurred_at.desc(), audit_events.c.id.desc())
        with self._transaction() as conn:
            return [_row_to_event(row) for row in conn.execute(query.limit(limit))]

    def find(self, key_id: str) -> StoredKey | None:
        query = sa.select(api_keys, _LOG_HEAD.label("log_seq")).where(api_keys.c.id == key_id)
        with self._transaction() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            return None
        return StoredKey(key=_row_to_key(row), verifier=row.verifier, seq=row.log_seq)

    def changes_after(self, seq: int, *, limit: int) -> builtins.list[Change]:
        query = (
            sa.select(key_changes)
            .where(key_changes.c.seq > seq)
            .order_by(key_changes.c.seq)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_row_to_change(row) for row in conn.execute(query)]

    def latest_revocations(self, *, limit: int) -> builtins.list[Change]:
        query = (
            sa.select(key_changes)
            .where(key_changes.c.kind == ChangeKind.REVOKED.value)
            .order_by(key_changes.c.seq.desc())
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_row_to_change(row) for row in reversed(conn.execute(query).all())]

    def log_head(self) -> int:
        with self._transaction() as conn:
            return int(conn.execute(sa.select(_LOG_HEAD)).scalar_one())

    def key_ids(self, *, after: str, limit: int) -> builtins.list[str]:
        query = sa.select(api_keys.c.id).where(api_keys.c.id > after).order_by(api_keys.c.id)
        with self._transaction() as conn:
            return list(conn.execute(query.limit(limit)).scalars())

    def cache_mac_key(self) -> bytes:
        with self._transaction() as conn:
            value = conn.execute(sa.select(cache_mac_key.c.mac_key)).scalar_one()
        return bytes.fromhex(value)

    def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        if not uses:
            return
        # The condition keeps last_used_at monotonic when replicas flush out of order.
        statement = (
            api_keys.update()
            .where(
                api_keys.c.id == sa.bindparam("key_id"),
                sa.or_(
                    api_keys.c.last_used_at.is_(None),
                    api_keys.c.last_used_at < sa.bindparam("used_at"),
                ),
            )
            .values(last_used_at=sa.bindparam("used_at"))
        )
        with self._transaction() as conn:
            conn.execute(statement, [{"key_id": k, "used_at": t} for k, t in sorted(uses.items())])

    def replace_verifier(self, key_id: str, old: str, new: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.verifier == old)
                .values(verifier=new)
            )

    def ping(self) -> None:
        with self._transaction() as conn:
            conn.execute(sa.text("SELECT 1"))
