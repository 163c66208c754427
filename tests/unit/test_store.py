"""SqlKeyStore and the migrations, on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from keysvc.adapters.store import migrate, sql
from keysvc.adapters.store.sql import SqlKeyStore, create_engine
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
from keysvc.ports.store import KeyIdTaken

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = Actor("admin-token", "ipv4:127.0.0.1:50000")


def _api_key(
    key_id: str | None = None,
    *,
    account_id: str = "acct_1",
    created_at: datetime = T0,
    mode: Mode = Mode.LIVE,
    scopes: tuple[str, ...] = ("links:read", "links:write"),
) -> ApiKey:
    key_id = key_id or keys.new_key_id()
    return ApiKey(
        id=key_id,
        account_id=account_id,
        name=f"key {key_id}",
        prefix=keys.display_prefix(mode, key_id),
        mode=mode,
        scopes=scopes,
        created_at=created_at,
    )


def _insert(store: SqlKeyStore, *api_keys: ApiKey) -> None:
    for key in api_keys:
        store.insert(key, f"$argon2id$verifier-of-{key.id}", ADMIN)


def _list_all(
    store: SqlKeyStore,
    account_id: str = "acct_1",
    *,
    mode: Mode | None = None,
    status: KeyStatus | None = None,
    now: datetime = T0,
) -> list[ApiKey]:
    return store.list(account_id, limit=1000, after=None, mode=mode, status=status, now=now)


def _events(store: SqlKeyStore, account_id: str = "acct_1") -> list[AuditEvent]:
    return store.list_audit_events(account_id, limit=1000, after=None)


def _one_event(engine: sa.Engine) -> str:
    """Records one event through the store and returns its id."""
    store = SqlKeyStore(engine)
    _insert(store, _api_key())
    return _events(store)[0].id


class TestMigrations:
    def test_a_new_database_is_not_current(self, tmp_path: Path) -> None:
        """An empty database is behind the latest schema until it is migrated."""
        engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
        try:
            assert migrate.is_current(engine) is False
            migrate.upgrade(engine)
            assert migrate.is_current(engine) is True
        finally:
            engine.dispose()

    def test_create_the_api_keys_table(self, engine: sa.Engine) -> None:
        """After migration the api_keys table has every column the store reads and writes."""
        columns = {c["name"] for c in sa.inspect(engine).get_columns("api_keys")}
        assert columns == {
            "id",
            "account_id",
            "name",
            "prefix",
            "mode",
            "scopes",
            "verifier",
            "created_at",
            "last_used_at",
            "revoked_at",
            "expire_time",
            "allowed_ips",
            "revocation_reason",
        }

    def test_index_the_key_list(self, engine: sa.Engine) -> None:
        """The newest-first key list of one account is served by an index."""
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("api_keys")}
        assert indexes["ix_api_keys_account_created"] == ["account_id", "created_at", "id"]

    def test_create_the_audit_events_table(self, engine: sa.Engine) -> None:
        """After migration the audit_events table has every column an event is made of."""
        columns = {c["name"] for c in sa.inspect(engine).get_columns("audit_events")}
        assert columns == {
            "id",
            "account_id",
            "action",
            "key_id",
            "actor",
            "peer",
            "occurred_at",
            "reason",
            "related_key_id",
            "changes",
        }

    def test_index_the_audit_trail(self, engine: sa.Engine) -> None:
        """The newest-first audit trail of one account is served by an index."""
        indexes = {
            i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("audit_events")
        }
        assert indexes["ix_audit_events_account_occurred"] == ["account_id", "occurred_at", "id"]

    def test_refuse_an_unknown_action(self, engine: sa.Engine) -> None:
        """The database itself refuses an event whose action keysvc does not know."""
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql(
                "INSERT INTO audit_events (id, account_id, action, key_id, actor, peer,"
                " occurred_at) VALUES ('e', 'a', 'key_deleted', 'k', 'x', 'p', '2026-01-01')"
            )

    def test_keys_and_their_trail_survive_the_lifecycle_migration(self, tmp_path: Path) -> None:
        """A database of the release before expiry and allowed IPs (0003), with a key, its
        event and its change, upgraded: the key reads back with no expiry and any address, the
        trail is whole and still append-only (SQLite copies the table to change its check)."""
        engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
        try:
            migrate.upgrade(engine, "0003")
            key = _api_key()
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO api_keys (id, account_id, name, prefix, mode, scopes, verifier,"
                    " created_at) VALUES (?, 'acct_1', 'n', 'ck_live_x', 'live', 'links:read',"
                    " 'v', '2026-03-01 12:00:00')",
                    (key.id,),
                )
                conn.exec_driver_sql(
                    "INSERT INTO audit_events (id, account_id, action, key_id, actor, peer,"
                    " occurred_at) VALUES ('e1', 'acct_1', 'key_created', ?, 'admin', 'p',"
                    " '2026-03-01 12:00:00')",
                    (key.id,),
                )
            migrate.upgrade(engine)
            store = SqlKeyStore(engine)
            stored = store.get("acct_1", key.id)
            assert stored is not None
            assert (stored.expire_time, stored.allowed_ips, stored.revocation_reason) == (
                None,
                (),
                None,
            )
            assert [event.id for event in _events(store)] == ["e1"]
            with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
                conn.exec_driver_sql("UPDATE audit_events SET actor = 'forged'")
        finally:
            engine.dispose()

    def test_upgrading_twice_changes_nothing(self, engine: sa.Engine, store: SqlKeyStore) -> None:
        """Running the migrations on a current database keeps it current and keeps its rows."""
        key = _api_key()
        _insert(store, key)
        migrate.upgrade(engine)
        assert migrate.is_current(engine) is True
        assert store.get("acct_1", key.id) == key

    def test_refuse_an_unknown_mode(self, engine: sa.Engine, store: SqlKeyStore) -> None:
        """The database itself refuses a row whose mode is neither live nor test."""
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql(
                "INSERT INTO api_keys (id, account_id, name, prefix, mode, scopes, verifier,"
                " created_at) VALUES ('x', 'a', 'n', 'p', 'prod', 's', 'v', '2026-01-01')"
            )


class TestInsertAndGet:
    def test_get_returns_the_key_as_inserted(self, store: SqlKeyStore) -> None:
        """Every field of a stored key comes back as it went in, times aware and in UTC."""
        key = _api_key(mode=Mode.TEST, scopes=("events:read", "webhooks:read"))
        _insert(store, key)
        got = store.get("acct_1", key.id)
        assert got == key
        assert got is not None and got.created_at.tzinfo is not None
        assert got.status_at(T0) is KeyStatus.ACTIVE
        assert got.last_used_at is None and got.revoked_at is None

    def test_times_come_back_in_utc(self, store: SqlKeyStore) -> None:
        """A time given in another zone comes back as the same instant in UTC."""
        key = _api_key(created_at=datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
        _insert(store, key)
        got = store.get("acct_1", key.id)
        assert got is not None
        assert got.created_at == T0
        assert got.created_at.utcoffset() == timedelta(0)

    def test_get_of_another_accounts_key_is_none(self, store: SqlKeyStore) -> None:
        """An account cannot read another account's key by its id."""
        key = _api_key(account_id="acct_other")
        _insert(store, key)
        assert store.get("acct_1", key.id) is None

    def test_get_of_an_unknown_key_is_none(self, store: SqlKeyStore) -> None:
        """An id no key has gives None."""
        assert store.get("acct_1", keys.new_key_id()) is None

    def test_an_id_collision_raises_key_id_taken(self, store: SqlKeyStore) -> None:
        """A second key with a stored key's id is refused as KeyIdTaken, and the first is kept."""
        first = _api_key()
        _insert(store, first)
        with pytest.raises(KeyIdTaken):
            _insert(store, _api_key(first.id, account_id="acct_other"))
        assert store.get("acct_1", first.id) == first

    def test_find_returns_the_key_and_verifier_in_any_account(self, store: SqlKeyStore) -> None:
        """find() looks a key up by id alone, verifier included, for Authorize."""
        key = _api_key(account_id="acct_other")
        _insert(store, key)
        found = store.find(key.id)
        assert found is not None
        assert found.key == key
        assert found.verifier == f"$argon2id$verifier-of-{key.id}"
        assert store.find(keys.new_key_id()) is None


class TestList:
    def test_lists_newest_first(self, store: SqlKeyStore) -> None:
        """An account's keys come newest first."""
        created = [_api_key(created_at=T0 + timedelta(seconds=s)) for s in (5, 1, 9, 3)]
        _insert(store, *created)
        listed = _list_all(store)
        assert [k.created_at for k in listed] == sorted(
            (k.created_at for k in created), reverse=True
        )

    def test_never_lists_other_accounts_keys(self, store: SqlKeyStore) -> None:
        """Only the account's own keys are listed."""
        mine = _api_key()
        _insert(store, mine, _api_key(account_id="acct_2"), _api_key(account_id="acct_10"))
        assert _list_all(store) == [mine]
        assert _list_all(store, "acct_unknown") == []

    def test_pages_through_keys_created_at_the_same_instant(self, store: SqlKeyStore) -> None:
        """Keyset pages cover every key exactly once, even when many share a created_at."""
        created = [_api_key(created_at=T0) for _ in range(7)]
        created += [_api_key(created_at=T0 + timedelta(microseconds=1)) for _ in range(2)]
        created += [_api_key(created_at=T0 - timedelta(days=1)) for _ in range(3)]
        _insert(store, *created)
        pages: list[list[ApiKey]] = []
        after: Cursor | None = None
        while True:
            page = store.list("acct_1", limit=3, after=after, mode=None, status=None, now=T0)
            if not page:
                break
            pages.append(page)
            after = Cursor(at=page[-1].created_at, id=page[-1].id)
        listed = [k for page in pages for k in page]
        assert [len(page) for page in pages] == [3, 3, 3, 3]
        assert listed == sorted(created, key=lambda k: (k.created_at, k.id), reverse=True)

    def test_filters_by_mode(self, store: SqlKeyStore) -> None:
        """A mode filter lists only keys of that mode."""
        live, test = _api_key(mode=Mode.LIVE), _api_key(mode=Mode.TEST)
        _insert(store, live, test)
        assert _list_all(store, mode=Mode.LIVE) == [live]
        assert _list_all(store, mode=Mode.TEST) == [test]

    def test_filters_by_status(self, store: SqlKeyStore) -> None:
        """A status filter lists only active, or only revoked, keys."""
        active = _api_key(created_at=T0)
        revoked = _api_key(created_at=T0 + timedelta(seconds=1))
        _insert(store, active, revoked)
        store.revoke("acct_1", revoked.id, T0 + timedelta(hours=1), ADMIN)
        assert [k.id for k in _list_all(store, status=KeyStatus.ACTIVE)] == [active.id]
        assert [k.id for k in _list_all(store, status=KeyStatus.REVOKED)] == [revoked.id]
        assert [k.id for k in _list_all(store)] == [revoked.id, active.id]

    def test_limit_caps_the_page(self, store: SqlKeyStore) -> None:
        """At most `limit` keys come back."""
        _insert(store, *[_api_key(created_at=T0 + timedelta(seconds=s)) for s in range(5)])
        assert len(store.list("acct_1", limit=2, after=None, mode=None, status=None, now=T0)) == 2


class TestRevoke:
    def test_sets_revoked_at(self, store: SqlKeyStore) -> None:
        """Revoking a key stamps it revoked at the given time and returns it so."""
        key = _api_key()
        _insert(store, key)
        at = T0 + timedelta(hours=1)
        revocation = store.revoke("acct_1", key.id, at, ADMIN)
        assert revocation is not None and revocation.key.revoked_at == at
        assert revocation.key.status_at(T0) is KeyStatus.REVOKED
        assert store.get("acct_1", key.id) == revocation.key

    def test_a_second_revoke_keeps_the_first_time(self, store: SqlKeyStore) -> None:
        """Revoking a revoked key changes nothing: revoked_at stays the first revocation's."""
        key = _api_key()
        _insert(store, key)
        first = T0 + timedelta(hours=1)
        store.revoke("acct_1", key.id, first, ADMIN)
        again = store.revoke("acct_1", key.id, first + timedelta(hours=1), ADMIN)
        assert again is not None and again.key.revoked_at == first
        assert again.seq is None  # nothing changed, nothing logged
        stored = store.get("acct_1", key.id)
        assert stored is not None and stored.revoked_at == first

    def test_another_accounts_key_is_not_revoked(self, store: SqlKeyStore) -> None:
        """Revoking another account's key returns None and leaves that key active."""
        theirs = _api_key(account_id="acct_other")
        _insert(store, theirs)
        assert store.revoke("acct_1", theirs.id, T0 + timedelta(hours=1), ADMIN) is None
        stored = store.get("acct_other", theirs.id)
        assert stored is not None and stored.status_at(T0) is KeyStatus.ACTIVE

    def test_an_unknown_key_is_none(self, store: SqlKeyStore) -> None:
        """Revoking an id no key has returns None."""
        assert store.revoke("acct_1", keys.new_key_id(), T0, ADMIN) is None


class TestChangeLog:
    """Every creation and revocation is logged in its own transaction, in commit order; a read
    of a key names the log position its state reflects."""

    def test_logs_creations_and_revocations_in_order(self, store: SqlKeyStore) -> None:
        """Creating two keys and revoking the first logs three changes, numbered in order."""
        first, second = _api_key(), _api_key()
        created_first = store.insert(first, "$argon2id$v", ADMIN)
        created_second = store.insert(second, "$argon2id$v", ADMIN)
        revocation = store.revoke("acct_1", first.id, T0 + timedelta(hours=1), ADMIN)

        assert revocation is not None and revocation.seq is not None
        assert created_first < created_second < revocation.seq
        assert store.changes_after(0, limit=10) == [
            Change(created_first, first.id, ChangeKind.CREATED),
            Change(created_second, second.id, ChangeKind.CREATED),
            Change(revocation.seq, first.id, ChangeKind.REVOKED),
        ]
        assert store.changes_after(created_first, limit=1) == [
            Change(created_second, second.id, ChangeKind.CREATED)
        ]
        assert store.log_head() == revocation.seq

    def test_a_failed_change_logs_nothing(self, store: SqlKeyStore) -> None:
        """A revocation of another account's key, or of no key, leaves the log as it was."""
        theirs = _api_key(account_id="acct_other")
        _insert(store, theirs)
        head = store.log_head()
        store.revoke("acct_1", theirs.id, T0, ADMIN)
        store.revoke("acct_1", keys.new_key_id(), T0, ADMIN)
        assert store.log_head() == head

    def test_a_read_names_the_log_position_it_reflects(self, store: SqlKeyStore) -> None:
        """find() returns the log's head as of the read: the key's state reflects every change
        up to it, so a read after a revocation is at or past the revocation."""
        key = _api_key()
        created = store.insert(key, "$argon2id$v", ADMIN)
        before = store.find(key.id)
        revocation = store.revoke("acct_1", key.id, T0 + timedelta(hours=1), ADMIN)
        after = store.find(key.id)

        assert before is not None and (before.seq, before.key.revoked_at) == (created, None)
        assert revocation is not None and revocation.seq is not None
        assert after is not None and after.seq >= revocation.seq and after.key.revoked_at

    def test_latest_changes_are_the_newest_oldest_first(self, store: SqlKeyStore) -> None:
        """The start-up read of recent changes (all but creations) returns the newest ones, in
        log order."""
        revoked = []
        for _ in range(3):
            key = _api_key()
            _insert(store, key)
            revocation = store.revoke("acct_1", key.id, T0 + timedelta(hours=1), ADMIN)
            assert revocation is not None
            revoked.append((revocation.seq, key.id))
        latest = store.latest_changes(limit=2)
        assert [(c.seq, c.key_id) for c in latest] == revoked[1:]
        assert {c.kind for c in latest} == {ChangeKind.REVOKED}

    def test_key_ids_page_through_every_key(self, store: SqlKeyStore) -> None:
        """key_ids() lists every key id, of every account, in pages."""
        stored = sorted(_api_key(account_id=f"acct_{n}").id for n in range(5))
        for key_id in stored:
            _insert(store, _api_key(key_id))
        pages, after = [], ""
        while page := store.key_ids(after=after, limit=2):
            pages.append(page)
            after = page[-1]
        assert [key_id for page in pages for key_id in page] == stored
        assert [len(page) for page in pages] == [2, 2, 1]

    def test_the_cache_mac_key_is_random_and_stable(self, store: SqlKeyStore) -> None:
        """The migration draws 32 random bytes once; every read returns the same."""
        mac_key = store.cache_mac_key()
        assert len(mac_key) == 32 and mac_key != bytes(32)
        assert store.cache_mac_key() == mac_key


class TestAuditEventsAreWrittenWithTheChange:
    def test_inserting_a_key_records_its_creation(self, store: SqlKeyStore) -> None:
        """A stored key comes with a key_created event by the actor, at the key's created_at."""
        key = _api_key()
        store.insert(key, "$argon2id$v", Actor("dashboard", "ipv4:10.0.0.7:41234"))
        [event] = _events(store)
        assert event == AuditEvent(
            id=event.id,
            account_id="acct_1",
            action=AuditAction.KEY_CREATED,
            key_id=key.id,
            actor="dashboard",
            peer="ipv4:10.0.0.7:41234",
            occurred_at=key.created_at,
        )
        assert event.occurred_at.tzinfo is not None

    def test_events_have_distinct_random_ids(self, store: SqlKeyStore) -> None:
        """Each event gets its own public id of 16 base62 characters."""
        _insert(store, *[_api_key() for _ in range(5)])
        ids = [event.id for event in _events(store)]
        assert len(set(ids)) == 5
        assert all(len(i) == 16 and set(i) <= set(keys.ALPHABET) for i in ids)

    def test_a_refused_key_records_nothing(self, store: SqlKeyStore) -> None:
        """A key refused for an id collision leaves no event behind."""
        first = _api_key()
        _insert(store, first)
        with pytest.raises(KeyIdTaken):
            _insert(store, _api_key(first.id, account_id="acct_other"))
        assert [e.key_id for e in _events(store)] == [first.id]
        assert _events(store, "acct_other") == []

    def test_a_key_whose_event_cannot_be_written_is_not_stored(
        self, store: SqlKeyStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Key and event are one transaction: when the event's insert fails, so does the key's."""
        monkeypatch.setattr(sql, "_new_event_id", lambda: "sameEventId00000")
        first, second = _api_key(), _api_key()
        _insert(store, first)
        with pytest.raises(KeyIdTaken):
            _insert(store, second)
        assert store.get("acct_1", second.id) is None
        assert [e.key_id for e in _events(store)] == [first.id]

    def test_revoking_records_the_revocation(self, store: SqlKeyStore) -> None:
        """The first revocation records a key_revoked event by the actor, at the revocation."""
        key = _api_key()
        _insert(store, key)
        at = T0 + timedelta(hours=1)
        store.revoke("acct_1", key.id, at, Actor("ops@example.com", "ipv6:[::1]:50123"))
        revoked, created = _events(store)
        assert (revoked.action, revoked.key_id, revoked.occurred_at) == (
            AuditAction.KEY_REVOKED,
            key.id,
            at,
        )
        assert (revoked.actor, revoked.peer) == ("ops@example.com", "ipv6:[::1]:50123")
        assert created.action is AuditAction.KEY_CREATED

    def test_a_repeated_revoke_records_nothing(self, store: SqlKeyStore) -> None:
        """Revoking a revoked key changes nothing, so the trail keeps the first revocation only."""
        key = _api_key()
        _insert(store, key)
        first = T0 + timedelta(hours=1)
        store.revoke("acct_1", key.id, first, ADMIN)
        store.revoke("acct_1", key.id, first + timedelta(hours=1), Actor("other", "ipv4:x:1"))
        revocations = [e for e in _events(store) if e.action is AuditAction.KEY_REVOKED]
        assert [(e.actor, e.occurred_at) for e in revocations] == [(ADMIN.name, first)]

    def test_revoking_another_accounts_key_records_nothing(self, store: SqlKeyStore) -> None:
        """A revocation refused for the account adds no event to either account."""
        theirs = _api_key(account_id="acct_other")
        _insert(store, theirs)
        store.revoke("acct_1", theirs.id, T0 + timedelta(hours=1), ADMIN)
        assert _events(store) == []
        assert [e.action for e in _events(store, "acct_other")] == [AuditAction.KEY_CREATED]

    def test_a_revocation_whose_event_cannot_be_written_is_rolled_back(
        self, store: SqlKeyStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Revocation and event are one transaction: when the event fails, the key stays active."""
        monkeypatch.setattr(sql, "_new_event_id", lambda: "sameEventId00000")
        key = _api_key()
        _insert(store, key)
        with pytest.raises(sa.exc.IntegrityError):
            store.revoke("acct_1", key.id, T0 + timedelta(hours=1), ADMIN)
        stored = store.get("acct_1", key.id)
        assert stored is not None and stored.status_at(T0) is KeyStatus.ACTIVE
        assert [e.action for e in _events(store)] == [AuditAction.KEY_CREATED]


class TestAuditEventsAreAppendOnly:
    def test_the_database_refuses_update(self, engine: sa.Engine) -> None:
        """An UPDATE of a recorded event, from any client, is refused and changes nothing."""
        event_id = _one_event(engine)
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError, match="append-only"):
            conn.exec_driver_sql("UPDATE audit_events SET actor = 'someone else'")
        [event] = _events(SqlKeyStore(engine))
        assert (event.id, event.actor) == (event_id, ADMIN.name)

    def test_the_database_refuses_delete(self, engine: sa.Engine) -> None:
        """A DELETE of recorded events, from any client, is refused and removes nothing."""
        event_id = _one_event(engine)
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError, match="append-only"):
            conn.exec_driver_sql("DELETE FROM audit_events")
        assert [e.id for e in _events(SqlKeyStore(engine))] == [event_id]

    def test_the_database_refuses_an_overwriting_insert(self, engine: sa.Engine) -> None:
        """An insert that would replace an event with the same id (an upsert) is refused."""
        event_id = _one_event(engine)
        upsert = {
            "sqlite": "INSERT OR REPLACE INTO audit_events"
            " SELECT id, account_id, action, key_id, 'forged', peer, occurred_at,"
            " reason, related_key_id, changes"
            " FROM audit_events",
            "postgresql": "INSERT INTO audit_events SELECT * FROM audit_events"
            " ON CONFLICT (id) DO UPDATE SET actor = 'forged'",
        }[engine.dialect.name]
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError, match="append-only"):
            conn.exec_driver_sql(upsert)
        [event] = _events(SqlKeyStore(engine))
        assert (event.id, event.actor) == (event_id, ADMIN.name)

    # SQLite has no TRUNCATE: its DELETE trigger covers a DELETE without WHERE.
    @pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
    def test_postgresql_refuses_truncate(self, engine: sa.Engine) -> None:
        """On PostgreSQL, TRUNCATE (which skips row triggers) is refused as well."""
        event_id = _one_event(engine)
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError, match="append-only"):
            conn.exec_driver_sql("TRUNCATE audit_events")
        assert [e.id for e in _events(SqlKeyStore(engine))] == [event_id]


class TestListAuditEvents:
    def test_lists_newest_first(self, store: SqlKeyStore) -> None:
        """An account's events come newest first, revocations among creations."""
        old, new = _api_key(created_at=T0), _api_key(created_at=T0 + timedelta(seconds=2))
        _insert(store, new, old)
        store.revoke("acct_1", old.id, T0 + timedelta(seconds=1), ADMIN)
        assert [(e.action, e.key_id) for e in _events(store)] == [
            (AuditAction.KEY_CREATED, new.id),
            (AuditAction.KEY_REVOKED, old.id),
            (AuditAction.KEY_CREATED, old.id),
        ]

    def test_never_lists_other_accounts_events(self, store: SqlKeyStore) -> None:
        """Only the account's own events are listed."""
        mine = _api_key()
        theirs = _api_key(account_id="acct_2")
        _insert(store, mine, theirs, _api_key(account_id="acct_10"))
        store.revoke("acct_2", theirs.id, T0 + timedelta(hours=1), ADMIN)
        assert [e.key_id for e in _events(store)] == [mine.id]
        assert _events(store, "acct_unknown") == []

    def test_pages_through_events_at_the_same_instant(self, store: SqlKeyStore) -> None:
        """Keyset pages cover every event exactly once, even when many share occurred_at."""
        _insert(store, *[_api_key(created_at=T0) for _ in range(7)])
        _insert(store, *[_api_key(created_at=T0 + timedelta(microseconds=1)) for _ in range(3)])
        pages: list[list[AuditEvent]] = []
        after: Cursor | None = None
        while page := store.list_audit_events("acct_1", limit=3, after=after):
            pages.append(page)
            after = Cursor(at=page[-1].occurred_at, id=page[-1].id)
        listed = [e for page in pages for e in page]
        assert [len(page) for page in pages] == [3, 3, 3, 1]
        assert listed == sorted(_events(store), key=lambda e: (e.occurred_at, e.id), reverse=True)
        assert len({e.id for e in listed}) == 10

    def test_limit_caps_the_page(self, store: SqlKeyStore) -> None:
        """At most `limit` events come back."""
        _insert(store, *[_api_key(created_at=T0 + timedelta(seconds=s)) for s in range(5)])
        assert len(store.list_audit_events("acct_1", limit=2, after=None)) == 2


class TestRecordLastUsed:
    def test_sets_last_used_at(self, store: SqlKeyStore) -> None:
        """A recorded use becomes the key's last_used_at."""
        key, untouched = _api_key(), _api_key()
        _insert(store, key, untouched)
        store.record_last_used({key.id: T0 + timedelta(minutes=5)})
        got = store.get("acct_1", key.id)
        assert got is not None and got.last_used_at == T0 + timedelta(minutes=5)
        other = store.get("acct_1", untouched.id)
        assert other is not None and other.last_used_at is None

    def test_never_moves_backwards(self, store: SqlKeyStore) -> None:
        """An older use flushed after a newer one leaves the newer time in place."""
        key = _api_key()
        _insert(store, key)
        newer, older = T0 + timedelta(minutes=10), T0 + timedelta(minutes=5)
        store.record_last_used({key.id: newer})
        store.record_last_used({key.id: older})
        got = store.get("acct_1", key.id)
        assert got is not None and got.last_used_at == newer

    def test_moves_forwards(self, store: SqlKeyStore) -> None:
        """A newer use replaces an older last_used_at."""
        key = _api_key()
        _insert(store, key)
        store.record_last_used({key.id: T0 + timedelta(minutes=5)})
        store.record_last_used({key.id: T0 + timedelta(minutes=6)})
        got = store.get("acct_1", key.id)
        assert got is not None and got.last_used_at == T0 + timedelta(minutes=6)

    def test_records_a_batch_and_ignores_unknown_ids(self, store: SqlKeyStore) -> None:
        """One batch updates every key in it; an id no key has is skipped without error."""
        first, second = _api_key(), _api_key()
        _insert(store, first, second)
        one, two = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
        store.record_last_used({first.id: one, second.id: two, keys.new_key_id(): T0})
        last_used = {k.id: k.last_used_at for k in _list_all(store)}
        assert last_used == {first.id: one, second.id: two}
        store.record_last_used({})


class TestReplaceVerifier:
    def test_swaps_only_the_expected_verifier(self, store: SqlKeyStore) -> None:
        """A new verifier replaces the old one only if the old one is still stored."""
        key = _api_key()
        _insert(store, key)
        store.replace_verifier(key.id, "not-the-stored-one", "$argon2id$lost")
        found = store.find(key.id)
        assert found is not None and found.verifier == f"$argon2id$verifier-of-{key.id}"
        store.replace_verifier(key.id, found.verifier, "$argon2id$new")
        found = store.find(key.id)
        assert found is not None and found.verifier == "$argon2id$new"


class TestUnavailable:
    def test_an_unreachable_database_raises_unavailable(self, tmp_path: Path) -> None:
        """A database that cannot be opened is reported as Unavailable, not as a driver error."""
        engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'keysvc.db'}")
        store = SqlKeyStore(engine)
        try:
            with pytest.raises(Unavailable):
                store.ping()
            with pytest.raises(Unavailable):
                store.get("acct_1", keys.new_key_id())
        finally:
            engine.dispose()

    def test_ping_succeeds_on_a_reachable_database(self, store: SqlKeyStore) -> None:
        """ping() returns quietly when the database answers."""
        store.ping()
