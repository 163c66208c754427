"""KeyAdmin, the admin use cases: create, get, list and revoke keys, and the audit trail of
those changes, on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keysvc.core import keys
from keysvc.core.errors import InvalidArgument, NotFound
from keysvc.core.model import Actor, AuditAction, CreatedKey, KeyStatus, Mode, Reason

from .conftest import Keysvc, dump_rows
from .support import async_test, secret_of

ADMIN = Actor("admin-token", "ipv4:127.0.0.1:50000")


async def _create(
    keysvc: Keysvc,
    *,
    account_id: str = "acct_1",
    name: str = "Production server",
    mode: Mode = Mode.LIVE,
    scopes: tuple[str, ...] = ("links:read",),
) -> CreatedKey:
    created = await keysvc.admin.create_key(account_id, name, mode, scopes, ADMIN)
    keysvc.clock.advance(1)
    return created


class TestCreateKey:
    @async_test
    async def test_returns_the_key_and_its_secret(self, keysvc: Keysvc) -> None:
        """A new key is active, named, prefixed and scoped as asked, and its secret parses to it."""
        created = await keysvc.admin.create_key(
            "acct_1",
            "  WooCommerce plugin ",
            Mode.LIVE,
            ["sessions:write", "links:read", "links:read"],
            ADMIN,
        )
        key = created.key
        assert key.account_id == "acct_1"
        assert key.name == "WooCommerce plugin"
        assert key.mode is Mode.LIVE
        assert key.scopes == ("links:read", "sessions:write")
        assert key.prefix == keys.display_prefix(Mode.LIVE, key.id)
        assert created.raw_key.startswith(key.prefix)
        assert key.created_at == keysvc.clock.now
        assert key.status_at(keysvc.clock.now) is KeyStatus.ACTIVE
        assert key.last_used_at is None and key.revoked_at is None
        parsed = keys.parse(created.raw_key)
        assert parsed is not None and (parsed.mode, parsed.key_id) == (Mode.LIVE, key.id)

    @async_test
    async def test_test_mode_keys_start_ck_test(self, keysvc: Keysvc) -> None:
        """A test-mode key's secret and prefix start ck_test_."""
        created = await _create(keysvc, mode=Mode.TEST)
        assert created.raw_key.startswith("ck_test_")
        assert created.key.prefix.startswith("ck_test_")

    @async_test
    async def test_stores_the_key(self, keysvc: Keysvc) -> None:
        """The created key is in the store exactly as returned."""
        created = await _create(keysvc)
        assert keysvc.store.get("acct_1", created.key.id) == created.key

    @async_test
    async def test_each_key_is_distinct(self, keysvc: Keysvc) -> None:
        """Two keys created alike get different ids and secrets."""
        first, second = await _create(keysvc), await _create(keysvc)
        assert first.key.id != second.key.id
        assert first.raw_key != second.raw_key

    @async_test
    async def test_repr_never_shows_the_secret(self, keysvc: Keysvc) -> None:
        """A created key can be logged: its repr holds neither the raw key nor its secret."""
        created = await _create(keysvc)
        assert created.raw_key not in repr(created)
        assert secret_of(created.raw_key) not in repr(created)

    @async_test
    async def test_the_raw_key_is_in_no_row(
        self, keysvc: Keysvc, engine: Engine, database_path: Path
    ) -> None:
        """The database holds neither the raw key nor its secret: dump every row and look."""
        created = [await _create(keysvc, mode=mode) for mode in (Mode.LIVE, Mode.TEST)]
        dump = dump_rows(engine)
        assert created[0].key.id in dump  # the dump does hold the keys
        for key in created:
            assert key.raw_key not in dump
            assert secret_of(key.raw_key) not in dump
        on_disk = b"".join(p.read_bytes() for p in database_path.parent.glob("keysvc.db*"))
        for key in created:
            assert secret_of(key.raw_key).encode() not in on_disk

    @pytest.mark.parametrize(
        ("account_id", "name", "scopes", "message"),
        [
            ("", "Production server", ["links:read"], "account_id"),
            ("acct 1", "Production server", ["links:read"], "account_id"),
            ("acct_1", "   ", ["links:read"], "name"),
            ("acct_1", "bad\x00name", ["links:read"], "name"),
            ("acct_1", "n" * 101, ["links:read"], "name"),
            ("acct_1", "Production server", [], "at least one scope"),
            ("acct_1", "Production server", ["links:admin"], "links:admin"),
        ],
    )
    @async_test
    async def test_refuses_bad_requests_and_stores_nothing(
        self, keysvc: Keysvc, account_id: str, name: str, scopes: list[str], message: str
    ) -> None:
        """A bad account id, name or scope list is refused, saying which, and no key is made."""
        with pytest.raises(InvalidArgument, match=message):
            await keysvc.admin.create_key(account_id, name, Mode.LIVE, scopes, ADMIN)
        assert (await keysvc.admin.list_keys("acct_1")).keys == []


class TestGetKey:
    @async_test
    async def test_returns_the_accounts_key(self, keysvc: Keysvc) -> None:
        """An account reads its key back by id."""
        created = await _create(keysvc)
        assert await keysvc.admin.get_key("acct_1", created.key.id) == created.key

    @async_test
    async def test_another_accounts_key_is_not_found(self, keysvc: Keysvc) -> None:
        """Another account's key is reported as not found, as if it did not exist."""
        created = await _create(keysvc, account_id="acct_other")
        with pytest.raises(NotFound):
            await keysvc.admin.get_key("acct_1", created.key.id)

    @async_test
    async def test_an_unknown_key_is_not_found(self, keysvc: Keysvc) -> None:
        """An id no key has is not found."""
        with pytest.raises(NotFound):
            await keysvc.admin.get_key("acct_1", keys.new_key_id())

    @async_test
    async def test_a_malformed_id_is_invalid(self, keysvc: Keysvc) -> None:
        """Something that is not a key id (e.g. a whole raw key) is refused as invalid."""
        created = await _create(keysvc)
        with pytest.raises(InvalidArgument, match="id: not a key id"):
            await keysvc.admin.get_key("acct_1", created.raw_key)


class TestListKeys:
    @async_test
    async def test_lists_newest_first_with_revoked_keys(self, keysvc: Keysvc) -> None:
        """Keys come newest first; a revoked key stays listed with its revoked_at."""
        first, second, third = [await _create(keysvc) for _ in range(3)]
        await keysvc.admin.revoke_key("acct_1", second.key.id, ADMIN)
        page = await keysvc.admin.list_keys("acct_1")
        assert [k.id for k in page.keys] == [third.key.id, second.key.id, first.key.id]
        assert [k.status_at(keysvc.clock.now) for k in page.keys] == [
            KeyStatus.ACTIVE,
            KeyStatus.REVOKED,
            KeyStatus.ACTIVE,
        ]
        assert page.keys[1].revoked_at is not None
        assert page.next_page_token == ""

    @async_test
    async def test_never_lists_other_accounts_keys(self, keysvc: Keysvc) -> None:
        """An account sees only its own keys."""
        mine = await _create(keysvc)
        await _create(keysvc, account_id="acct_other")
        assert [k.id for k in (await keysvc.admin.list_keys("acct_1")).keys] == [mine.key.id]

    @async_test
    async def test_pages_through_every_key_once(self, keysvc: Keysvc) -> None:
        """Following next_page_token visits every key once, newest first, and ends with ''."""
        created = [await _create(keysvc) for _ in range(5)]
        seen, sizes, token = [], [], ""
        while True:
            page = await keysvc.admin.list_keys("acct_1", page_size=2, page_token=token)
            seen += [k.id for k in page.keys]
            sizes.append(len(page.keys))
            token = page.next_page_token
            if not token:
                break
        assert sizes == [2, 2, 1]
        assert seen == [c.key.id for c in reversed(created)]

    @async_test
    async def test_a_full_last_page_has_no_token(self, keysvc: Keysvc) -> None:
        """When the keys fill the last page exactly, it says so: no empty page follows."""
        for _ in range(4):
            await _create(keysvc)
        first = await keysvc.admin.list_keys("acct_1", page_size=2)
        last = await keysvc.admin.list_keys("acct_1", page_size=2, page_token=first.next_page_token)
        assert len(last.keys) == 2
        assert last.next_page_token == ""

    @async_test
    async def test_pages_across_keys_created_at_the_same_instant(self, keysvc: Keysvc) -> None:
        """Keys sharing a created_at are each listed once across pages."""
        created = [
            await keysvc.admin.create_key("acct_1", "same", Mode.LIVE, ["links:read"], ADMIN)
            for _ in range(5)
        ]
        seen, token = [], ""
        while True:
            page = await keysvc.admin.list_keys("acct_1", page_size=2, page_token=token)
            seen += [k.id for k in page.keys]
            if not (token := page.next_page_token):
                break
        assert sorted(seen) == sorted(c.key.id for c in created)
        assert len(seen) == 5

    @async_test
    async def test_filters_by_mode_and_status(self, keysvc: Keysvc) -> None:
        """Mode and status filters narrow the list."""
        live = await _create(keysvc, mode=Mode.LIVE)
        test = await _create(keysvc, mode=Mode.TEST)
        gone = await _create(keysvc, mode=Mode.TEST)
        await keysvc.admin.revoke_key("acct_1", gone.key.id, ADMIN)

        async def ids(mode: Mode | None = None, status: KeyStatus | None = None) -> list[str]:
            page = await keysvc.admin.list_keys("acct_1", mode=mode, status=status)
            return [k.id for k in page.keys]

        assert await ids(mode=Mode.LIVE) == [live.key.id]
        assert await ids(mode=Mode.TEST) == [gone.key.id, test.key.id]
        assert await ids(status=KeyStatus.REVOKED) == [gone.key.id]
        assert await ids(mode=Mode.TEST, status=KeyStatus.ACTIVE) == [test.key.id]

    @async_test
    async def test_refuses_bad_page_requests(self, keysvc: Keysvc) -> None:
        """A garbage page token or an out-of-range page size is invalid."""
        with pytest.raises(InvalidArgument, match="page_token"):
            await keysvc.admin.list_keys("acct_1", page_token="garbage")
        with pytest.raises(InvalidArgument, match="page_size"):
            await keysvc.admin.list_keys("acct_1", page_size=501)
        with pytest.raises(InvalidArgument, match="account_id"):
            await keysvc.admin.list_keys("")


class TestRevokeKey:
    @async_test
    async def test_marks_the_key_revoked_now(self, keysvc: Keysvc) -> None:
        """Revoking returns the key revoked at the current time, and the store agrees."""
        created = await _create(keysvc)
        revoked = await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        assert revoked.status_at(keysvc.clock.now) is KeyStatus.REVOKED
        assert revoked.revoked_at == keysvc.clock.now
        assert await keysvc.admin.get_key("acct_1", created.key.id) == revoked

    @async_test
    async def test_is_idempotent_and_keeps_the_first_time(self, keysvc: Keysvc) -> None:
        """Revoking again succeeds and keeps the first revoked_at."""
        created = await _create(keysvc)
        first = await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        keysvc.clock.advance(3600)
        again = await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        assert again.revoked_at == first.revoked_at
        decision = await keysvc.authorizer.authorize(created.raw_key)
        assert decision.reason is Reason.REVOKED

    @async_test
    async def test_another_accounts_key_is_not_found_and_stays_usable(self, keysvc: Keysvc) -> None:
        """Revoking another account's key is not found, and that key keeps working."""
        theirs = await _create(keysvc, account_id="acct_other")
        with pytest.raises(NotFound):
            await keysvc.admin.revoke_key("acct_1", theirs.key.id, ADMIN)
        assert (await keysvc.admin.get_key("acct_other", theirs.key.id)).status_at(
            keysvc.clock.now
        ) is KeyStatus.ACTIVE
        assert (await keysvc.authorizer.authorize(theirs.raw_key)).reason is Reason.ALLOWED
        replica = await keysvc.replica()
        assert (await replica.authorizer.authorize(theirs.raw_key)).reason is Reason.ALLOWED

    @async_test
    async def test_an_unknown_key_is_not_found(self, keysvc: Keysvc) -> None:
        """Revoking an id no key has is not found."""
        with pytest.raises(NotFound):
            await keysvc.admin.revoke_key("acct_1", keys.new_key_id(), ADMIN)


class TestListAuditEvents:
    @async_test
    async def test_records_who_created_and_revoked_when_and_from_where(
        self, keysvc: Keysvc
    ) -> None:
        """Creating and revoking a key each leave an event naming the actor, its peer and the
        time, newest first."""
        dashboard = Actor("dashboard", "ipv4:10.1.2.3:40000")
        created = await keysvc.admin.create_key("acct_1", "n", Mode.LIVE, ["links:read"], ADMIN)
        created_at = keysvc.clock.now
        revoked_at = keysvc.clock.advance(60)
        await keysvc.admin.revoke_key("acct_1", created.key.id, dashboard)

        page = await keysvc.admin.list_audit_events("acct_1")

        revocation, creation = page.events
        assert (revocation.action, revocation.key_id, revocation.occurred_at) == (
            AuditAction.KEY_REVOKED,
            created.key.id,
            revoked_at,
        )
        assert (revocation.actor, revocation.peer) == ("dashboard", "ipv4:10.1.2.3:40000")
        assert (creation.action, creation.key_id, creation.occurred_at) == (
            AuditAction.KEY_CREATED,
            created.key.id,
            created_at,
        )
        assert (creation.actor, creation.peer) == ("admin-token", "ipv4:127.0.0.1:50000")
        assert {revocation.account_id, creation.account_id} == {"acct_1"}
        assert page.next_page_token == ""

    @async_test
    async def test_a_repeated_revoke_records_nothing(self, keysvc: Keysvc) -> None:
        """Revoking again is harmless and leaves the trail as the first revocation left it."""
        created = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        keysvc.clock.advance(3600)
        await keysvc.admin.revoke_key("acct_1", created.key.id, Actor("someone", "ipv4:x:1"))
        events = (await keysvc.admin.list_audit_events("acct_1")).events
        assert [(e.action, e.actor) for e in events] == [
            (AuditAction.KEY_REVOKED, "admin-token"),
            (AuditAction.KEY_CREATED, "admin-token"),
        ]

    @async_test
    async def test_refused_changes_record_nothing(self, keysvc: Keysvc) -> None:
        """A refused creation and a revocation of an unknown key leave no event."""
        with pytest.raises(InvalidArgument):
            await keysvc.admin.create_key("acct_1", "n", Mode.LIVE, ["links:admin"], ADMIN)
        with pytest.raises(NotFound):
            await keysvc.admin.revoke_key("acct_1", keys.new_key_id(), ADMIN)
        assert (await keysvc.admin.list_audit_events("acct_1")).events == []

    @async_test
    async def test_never_lists_other_accounts_events(self, keysvc: Keysvc) -> None:
        """An account sees only its own events, even of keys it tried to revoke."""
        theirs = await _create(keysvc, account_id="acct_other")
        with pytest.raises(NotFound):
            await keysvc.admin.revoke_key("acct_1", theirs.key.id, ADMIN)
        mine = await _create(keysvc)
        events = (await keysvc.admin.list_audit_events("acct_1")).events
        assert [e.key_id for e in events] == [mine.key.id]

    @async_test
    async def test_pages_through_every_event_once(self, keysvc: Keysvc) -> None:
        """Following next_page_token visits every event once, newest first, and ends with ''."""
        created = [await _create(keysvc) for _ in range(3)]
        for key in created[:2]:
            await keysvc.admin.revoke_key("acct_1", key.key.id, ADMIN)
            keysvc.clock.advance(1)
        everything = (await keysvc.admin.list_audit_events("acct_1")).events
        seen, sizes, token = [], [], ""
        while True:
            page = await keysvc.admin.list_audit_events("acct_1", page_size=2, page_token=token)
            seen += page.events
            sizes.append(len(page.events))
            if not (token := page.next_page_token):
                break
        assert sizes == [2, 2, 1]
        assert seen == everything
        assert [e.occurred_at for e in seen] == sorted((e.occurred_at for e in seen), reverse=True)

    @async_test
    async def test_refuses_bad_requests(self, keysvc: Keysvc) -> None:
        """A bad account id, page size or page token (a ListKeys one included) is invalid."""
        for _ in range(2):
            await _create(keysvc)
        keys_token = (await keysvc.admin.list_keys("acct_1", page_size=1)).next_page_token
        assert keys_token
        with pytest.raises(InvalidArgument, match=r"^page_token: not a token from ListAuditEvents"):
            await keysvc.admin.list_audit_events("acct_1", page_token=keys_token)
        with pytest.raises(InvalidArgument, match=r"^page_token"):
            await keysvc.admin.list_audit_events("acct_1", page_token="garbage")
        with pytest.raises(InvalidArgument, match=r"^page_size"):
            await keysvc.admin.list_audit_events("acct_1", page_size=501)
        with pytest.raises(InvalidArgument, match=r"^page_size"):
            await keysvc.admin.list_audit_events("acct_1", page_size=-1)
        with pytest.raises(InvalidArgument, match=r"^account_id"):
            await keysvc.admin.list_audit_events("acct 1")
