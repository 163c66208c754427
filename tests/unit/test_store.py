"""SqlKeyStore and the migrations, on a real SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from keysvc import keys
from keysvc.errors import Unavailable
from keysvc.model import ApiKey, KeyStatus, Mode
from keysvc.store import Cursor, KeyIdTaken, migrate
from keysvc.store.sql import SqlKeyStore, create_engine

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


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
        store.insert(key, f"$argon2id$verifier-of-{key.id}")


def _list_all(
    store: SqlKeyStore,
    account_id: str = "acct_1",
    *,
    mode: Mode | None = None,
    status: KeyStatus | None = None,
) -> list[ApiKey]:
    return store.list(account_id, limit=1000, after=None, mode=mode, status=status)


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
        }

    def test_index_the_key_list(self, engine: sa.Engine) -> None:
        """The newest-first key list of one account is served by an index."""
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("api_keys")}
        assert indexes["ix_api_keys_account_created"] == ["account_id", "created_at", "id"]

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
        assert got.status is KeyStatus.ACTIVE
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
            page = store.list("acct_1", limit=3, after=after, mode=None, status=None)
            if not page:
                break
            pages.append(page)
            after = Cursor(created_at=page[-1].created_at, key_id=page[-1].id)
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
        store.revoke("acct_1", revoked.id, T0 + timedelta(hours=1))
        assert [k.id for k in _list_all(store, status=KeyStatus.ACTIVE)] == [active.id]
        assert [k.id for k in _list_all(store, status=KeyStatus.REVOKED)] == [revoked.id]
        assert [k.id for k in _list_all(store)] == [revoked.id, active.id]

    def test_limit_caps_the_page(self, store: SqlKeyStore) -> None:
        """At most `limit` keys come back."""
        _insert(store, *[_api_key(created_at=T0 + timedelta(seconds=s)) for s in range(5)])
        assert len(store.list("acct_1", limit=2, after=None, mode=None, status=None)) == 2


class TestRevoke:
    def test_sets_revoked_at(self, store: SqlKeyStore) -> None:
        """Revoking a key stamps it revoked at the given time and returns it so."""
        key = _api_key()
        _insert(store, key)
        at = T0 + timedelta(hours=1)
        revoked = store.revoke("acct_1", key.id, at)
        assert revoked is not None and revoked.revoked_at == at
        assert revoked.status is KeyStatus.REVOKED
        assert store.get("acct_1", key.id) == revoked

    def test_a_second_revoke_keeps_the_first_time(self, store: SqlKeyStore) -> None:
        """Revoking a revoked key changes nothing: revoked_at stays the first revocation's."""
        key = _api_key()
        _insert(store, key)
        first = T0 + timedelta(hours=1)
        store.revoke("acct_1", key.id, first)
        again = store.revoke("acct_1", key.id, first + timedelta(hours=1))
        assert again is not None and again.revoked_at == first
        stored = store.get("acct_1", key.id)
        assert stored is not None and stored.revoked_at == first

    def test_another_accounts_key_is_not_revoked(self, store: SqlKeyStore) -> None:
        """Revoking another account's key returns None and leaves that key active."""
        theirs = _api_key(account_id="acct_other")
        _insert(store, theirs)
        assert store.revoke("acct_1", theirs.id, T0 + timedelta(hours=1)) is None
        stored = store.get("acct_other", theirs.id)
        assert stored is not None and stored.status is KeyStatus.ACTIVE

    def test_an_unknown_key_is_none(self, store: SqlKeyStore) -> None:
        """Revoking an id no key has returns None."""
        assert store.revoke("acct_1", keys.new_key_id(), T0) is None


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
