"""KeyStore on SQL through SQLAlchemy Core: SQLite embedded, PostgreSQL in production."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
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
    UPDATABLE_FIELDS,
    Actor,
    ApiKey,
    AuditAction,
    AuditEvent,
    Change,
    ChangeKind,
    Cursor,
    FieldChange,
    KeyStatus,
    KeyUpdate,
    Mode,
)
from keysvc.ports.store import KeyIdTaken, Revocation, Roll, StoredKey, Update

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
        expire_time=row.expire_time,
        allowed_ips=tuple(row.allowed_ips.split()),
        revocation_reason=row.revocation_reason,
    )


def _key_values(key: ApiKey) -> dict[str, Any]:
    """The columns of a new key's row, but its verifier."""
    return {
        "id": key.id,
        "account_id": key.account_id,
        "name": key.name,
        "prefix": key.prefix,
        "mode": key.mode.value,
        "scopes": " ".join(key.scopes),
        "created_at": key.created_at,
        "expire_time": key.expire_time,
        "allowed_ips": " ".join(key.allowed_ips),
    }


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
    *,
    reason: str = "",
    related_key_id: str = "",
    changes: tuple[FieldChange, ...] = (),
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
            reason=reason or None,
            related_key_id=related_key_id or None,
            changes=json.dumps([[c.field, c.before, c.after] for c in changes])
            if changes
            else None,
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
        reason=row.reason or "",
        related_key_id=row.related_key_id or "",
        changes=tuple(FieldChange(*change) for change in json.loads(row.changes or "[]")),
    )


def _lock_key(conn: Connection, account_id: str, key_id: str) -> ApiKey | None:
    """The account's key, locked until the transaction ends: PostgreSQL takes the row's lock
    with the no-op update, SQLite its single writer's lock. None when there is no such key."""
    mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
    conn.execute(api_keys.update().where(mine).values(name=api_keys.c.name))
    row = conn.execute(sa.select(*_PUBLIC_COLUMNS).where(mine)).one_or_none()
    return None if row is None else _row_to_key(row)


def _text(field: str, key: ApiKey) -> str:
    """A field's value as the audit trail shows it."""
    if field == "name":
        return key.name
    if field == "scopes":
        return " ".join(key.scopes)
    if field == "allowed_ips":
        return " ".join(key.allowed_ips)
    assert field == "expire_time"
    return key.expire_time.isoformat() if key.expire_time is not None else ""


def _updated(key: ApiKey, update: KeyUpdate) -> ApiKey:
    values: dict[str, Any] = {}
    if "name" in update.fields:
        values["name"] = update.name
    if "scopes" in update.fields:
        values["scopes"] = update.scopes
    if "allowed_ips" in update.fields:
        values["allowed_ips"] = update.allowed_ips
    if "expire_time" in update.fields:
        values["expire_time"] = update.expire_time
    return dataclasses.replace(key, **values)


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
                conn.execute(api_keys.insert().values(**_key_values(key), verifier=verifier))
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
        now: datetime,
    ) -> list[ApiKey]:
        query = sa.select(*_PUBLIC_COLUMNS).where(api_keys.c.account_id == account_id)
        if mode is not None:
            query = query.where(api_keys.c.mode == mode.value)
        unexpired = sa.or_(api_keys.c.expire_time.is_(None), api_keys.c.expire_time > now)
        if status is KeyStatus.ACTIVE:
            query = query.where(api_keys.c.revoked_at.is_(None), unexpired)
        elif status is KeyStatus.EXPIRED:
            query = query.where(api_keys.c.revoked_at.is_(None), sa.not_(unexpired))
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

    def revoke(
        self,
        account_id: str,
        key_id: str,
        at: datetime,
        actor: Actor,
        *,
        reason: str = "",
        action: AuditAction = AuditAction.KEY_REVOKED,
        source: str = "",
    ) -> Revocation | None:
        mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
        with self._transaction() as conn:
            # Only the first revocation sets revoked_at, and only it is recorded. A concurrent
            # second one waits for the first (PostgreSQL's row lock, SQLite's single writer),
            # then matches no row.
            changed = conn.execute(
                api_keys.update()
                .where(mine, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at, revocation_reason=reason or None)
            ).rowcount
            row = conn.execute(sa.select(*_PUBLIC_COLUMNS).where(mine)).one_or_none()
            if row is None:
                return None
            seq = None
            if changed:
                _record(conn, action, account_id, key_id, actor, at, reason=source or reason)
                seq = _log_change(conn, key_id, ChangeKind.REVOKED, at)
        return Revocation(key=_row_to_key(row), seq=seq)

    def roll(
        self,
        account_id: str,
        key_id: str,
        new_key: ApiKey,
        verifier: str,
        until: datetime,
        actor: Actor,
    ) -> Roll | None:
        at = new_key.created_at
        try:
            with self._transaction() as conn:
                old = _lock_key(conn, account_id, key_id)
                if old is None:
                    return None
                if old.status_at(at) is not KeyStatus.ACTIVE:
                    return Roll(old=old, rolled=old, key=None, seqs=())
                new_key = dataclasses.replace(
                    new_key,
                    name=old.name,
                    mode=old.mode,
                    scopes=old.scopes,
                    allowed_ips=old.allowed_ips,
                    expire_time=old.expire_time,
                )
                conn.execute(api_keys.insert().values(**_key_values(new_key), verifier=verifier))
                mine = sa.and_(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
                if until <= at:
                    rolled = dataclasses.replace(old, revoked_at=at, revocation_reason="rolled")
                    conn.execute(
                        api_keys.update()
                        .where(mine)
                        .values(revoked_at=at, revocation_reason="rolled")
                    )
                    kind = ChangeKind.REVOKED
                elif old.expire_time is None or until < old.expire_time:
                    rolled = dataclasses.replace(old, expire_time=until)
                    conn.execute(api_keys.update().where(mine).values(expire_time=until))
                    kind = ChangeKind.UPDATED
                else:
                    # A roll never extends a key's life.
                    rolled, kind = old, None
                _record(
                    conn, AuditAction.KEY_ROLLED, account_id, key_id, actor, at,
                    related_key_id=new_key.id,
                )  # fmt: skip
                _record(conn, AuditAction.KEY_CREATED, account_id, new_key.id, actor, at)
                seqs = [_log_change(conn, new_key.id, ChangeKind.CREATED, at)]
                if kind is not None:
                    seqs.append(_log_change(conn, key_id, kind, at))
                return Roll(old=old, rolled=rolled, key=new_key, seqs=tuple(seqs))
        except sa.exc.IntegrityError as err:
            raise KeyIdTaken(new_key.id) from err

    def update(
        self, account_id: str, key_id: str, update: KeyUpdate, at: datetime, actor: Actor
    ) -> Update | None:
        with self._transaction() as conn:
            before = _lock_key(conn, account_id, key_id)
            if before is None:
                return None
            if before.status_at(at) is not KeyStatus.ACTIVE:
                return Update(before=before, after=before, seq=None)
            after = _updated(before, update)
            changes = tuple(
                FieldChange(field, _text(field, before), _text(field, after))
                for field in sorted(update.fields)
                if _text(field, before) != _text(field, after)
            )
            if not changes:
                return Update(before=before, after=before, seq=None)
            values = {
                key: value for key, value in _key_values(after).items() if key in UPDATABLE_FIELDS
            }
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.account_id == account_id)
                .values(**values)
            )
            _record(conn, AuditAction.KEY_UPDATED, account_id, key_id, actor, at, changes=changes)
            seq = _log_change(conn, key_id, ChangeKind.UPDATED, at)
        return Update(before=before, after=after, seq=seq)

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

    def latest_changes(self, *, limit: int) -> builtins.list[Change]:
        query = (
            sa.select(key_changes)
            .where(key_changes.c.kind != ChangeKind.CREATED.value)
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
