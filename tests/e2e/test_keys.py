"""The admin RPCs through keysvc_client: CreateKey, GetKey, ListKeys, RevokeKey, ListScopes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from keysvc_client import KeyServiceClient, Unauthenticated, keysvc_pb2

from .harness import KEY_PATTERN, NewKey, ServerProcess, when

pytestmark = pytest.mark.slow

# Clocks of the test and the server are the same machine's; the slack absorbs rounding.
SLACK = timedelta(seconds=1)
# The scopes table of the product page.
CATALOGUE = {
    "links:read": "List and retrieve payment links",
    "links:write": "Create, update, and delete payment links",
    "sessions:read": "List and retrieve checkout sessions",
    "sessions:write": "Create checkout sessions",
    "webhooks:read": "List and retrieve webhook endpoints",
    "webhooks:write": "Create and delete webhook endpoints",
    "events:read": "List and retrieve events",
    "customers:read": "List and retrieve customers",
    "customers:write": "Create and update customers",
}


def now() -> datetime:
    return datetime.now(UTC)


class TestCreateKey:
    def test_returns_the_key_and_its_secret(self, admin: KeyServiceClient, account: str) -> None:
        """CreateKey answers with the key's public fields, status ACTIVE, and its raw secret."""
        before = now()
        created = admin.create_key(
            account, "Production server", "live", ["links:write", "links:read"]
        )
        after = now()

        key = created.key
        assert KEY_PATTERN.fullmatch(created.secret)
        assert created.secret.startswith("ck_live_")
        assert key.account_id == account
        assert key.name == "Production server"
        assert key.mode == keysvc_pb2.MODE_LIVE
        assert key.status == keysvc_pb2.KEY_STATUS_ACTIVE
        assert list(key.scopes) == ["links:read", "links:write"]
        assert key.prefix == created.secret[:14]
        assert key.id == created.secret[8:20]
        created_at = when(key, "created_at")
        assert created_at is not None
        assert before - SLACK <= created_at <= after + SLACK
        assert when(key, "last_used_at") is None
        assert when(key, "revoked_at") is None

    def test_test_mode_keys_carry_the_test_prefix(self, new_key: NewKey) -> None:
        """A test-mode key starts with ck_test_ and is reported as MODE_TEST."""
        created = new_key(mode="test")

        assert created.secret.startswith("ck_test_")
        assert created.key.prefix.startswith("ck_test_")
        assert created.key.mode == keysvc_pb2.MODE_TEST

    def test_duplicate_scopes_are_folded_and_sorted(self, new_key: NewKey) -> None:
        """Scopes asked for twice are granted once, and the list comes back sorted."""
        created = new_key(scopes=["sessions:write", "events:read", "sessions:write"])

        assert list(created.key.scopes) == ["events:read", "sessions:write"]

    def test_name_is_trimmed(self, new_key: NewKey) -> None:
        """Surrounding whitespace is not part of the stored name."""
        created = new_key(name="  WooCommerce plugin \t")

        assert created.key.name == "WooCommerce plugin"

    def test_every_key_gets_its_own_id_and_secret(self, new_key: NewKey) -> None:
        """Two keys created alike still differ in id and secret."""
        first, second = new_key(), new_key()

        assert first.key.id != second.key.id
        assert first.secret != second.secret


class TestGetKey:
    def test_returns_the_stored_key(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """GetKey returns the same fields CreateKey reported."""
        created = new_key(mode="test", scopes=["webhooks:read"], name="Webhook consumer")

        key = admin.get_key(account, created.key.id)

        assert key == created.key

    def test_never_returns_the_secret(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Neither GetKey nor ListKeys carries any part of the secret in its bytes."""
        created = new_key()
        secret_part = created.secret[20:52].encode()

        fetched = admin.get_key(account, created.key.id).SerializeToString()
        listed = admin.list_keys(account).SerializeToString()

        assert secret_part not in fetched
        assert secret_part not in listed


class TestListKeys:
    def test_lists_newest_first(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Keys come back in reverse order of creation, and the last page has no token."""
        ids = [new_key(name=f"key {i}").key.id for i in range(3)]

        page = admin.list_keys(account)

        assert [key.id for key in page.keys] == ids[::-1]
        assert page.next_page_token == ""

    def test_pages_through_more_keys_than_a_page_holds(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """page_size and next_page_token walk every key once, newest first, ending with ''."""
        ids = [new_key(name=f"key {i}").key.id for i in range(5)]

        pages = []
        token = ""
        while True:
            page = admin.list_keys(account, page_size=2, page_token=token)
            pages.append([key.id for key in page.keys])
            token = page.next_page_token
            if not token:
                break

        assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]

    def test_a_full_last_page_has_no_token(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """When the keys fill the pages exactly, the last full page ends the listing."""
        for i in range(4):
            new_key(name=f"key {i}")

        first = admin.list_keys(account, page_size=2)
        second = admin.list_keys(account, page_size=2, page_token=first.next_page_token)

        assert first.next_page_token != ""
        assert len(second.keys) == 2
        assert second.next_page_token == ""

    def test_iter_keys_follows_every_page(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """The client's iter_keys yields all keys across pages."""
        ids = [new_key(name=f"key {i}").key.id for i in range(3)]

        assert [key.id for key in admin.iter_keys(account, page_size=1)] == ids[::-1]

    def test_filters_by_mode_and_status(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """The mode and status filters each narrow the list, and they combine."""
        live = new_key(mode="live").key.id
        test = new_key(mode="test").key.id
        revoked_live = new_key(mode="live").key.id
        admin.revoke_key(account, revoked_live)

        def listed(**filters: str) -> set[str]:
            return {key.id for key in admin.list_keys(account, **filters).keys}  # type: ignore[arg-type]

        assert listed() == {live, test, revoked_live}
        assert listed(mode="live") == {live, revoked_live}
        assert listed(mode="test") == {test}
        assert listed(status="active") == {live, test}
        assert listed(status="revoked") == {revoked_live}
        assert listed(mode="live", status="active") == {live}
        assert listed(mode="test", status="revoked") == set()

    def test_filters_hold_across_pages(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Paging a filtered list returns only matching keys, newest first."""
        tests = []
        for i in range(3):
            new_key(mode="live", name=f"live {i}")
            tests.append(new_key(mode="test", name=f"test {i}").key.id)

        listed = [key.id for key in admin.iter_keys(account, page_size=2, mode="test")]

        assert listed == tests[::-1]

    def test_revoked_keys_stay_listed_with_revoked_at(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A revoked key remains in the list, marked REVOKED with the time of revocation."""
        kept, revoked = new_key(name="kept"), new_key(name="revoked")
        revoked_key = admin.revoke_key(account, revoked.key.id)

        listed = {key.id: key for key in admin.list_keys(account).keys}

        assert listed[revoked.key.id].status == keysvc_pb2.KEY_STATUS_REVOKED
        assert when(listed[revoked.key.id], "revoked_at") == when(revoked_key, "revoked_at")
        assert listed[kept.key.id].status == keysvc_pb2.KEY_STATUS_ACTIVE
        assert when(listed[kept.key.id], "revoked_at") is None

    def test_an_account_without_keys_lists_nothing(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """ListKeys of an account that never had a key is an empty page, not an error."""
        page = admin.list_keys(account)

        assert list(page.keys) == []
        assert page.next_page_token == ""

    def test_lists_only_the_accounts_own_keys(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A key of account A never appears in the list of account B."""
        other = f"{account}-other"
        mine = new_key().key.id
        theirs = new_key(account_id=other).key.id

        assert [key.id for key in admin.iter_keys(account)] == [mine]
        assert [key.id for key in admin.iter_keys(other)] == [theirs]


class TestRevokeKey:
    def test_revokes_at_once(self, admin: KeyServiceClient, account: str, new_key: NewKey) -> None:
        """RevokeKey returns the key with status REVOKED and revoked_at set to now."""
        created = new_key()

        before = now()
        revoked = admin.revoke_key(account, created.key.id)
        after = now()

        assert revoked.id == created.key.id
        assert revoked.status == keysvc_pb2.KEY_STATUS_REVOKED
        revoked_at = when(revoked, "revoked_at")
        assert revoked_at is not None
        assert before - SLACK <= revoked_at <= after + SLACK
        assert admin.get_key(account, created.key.id) == revoked

    def test_revoking_twice_keeps_the_first_revoked_at(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A second RevokeKey succeeds and leaves the first revocation time unchanged."""
        created = new_key()
        first = admin.revoke_key(account, created.key.id)

        second = admin.revoke_key(account, created.key.id)

        assert second.status == keysvc_pb2.KEY_STATUS_REVOKED
        assert when(second, "revoked_at") == when(first, "revoked_at")


class TestListScopes:
    def test_returns_the_nine_catalogue_scopes(self, admin: KeyServiceClient) -> None:
        """ListScopes returns exactly the product page's nine scopes with their descriptions."""
        scopes = admin.list_scopes()

        assert {scope.name: scope.description for scope in scopes} == CATALOGUE
        assert len(scopes) == 9


class TestAsyncClient:
    def test_create_get_revoke(self, server: ServerProcess, account: str) -> None:
        """The asyncio client creates, fetches and revokes a key like the blocking one."""

        async def scenario() -> tuple[keysvc_pb2.CreateKeyResponse, keysvc_pb2.Key, keysvc_pb2.Key]:
            async with server.async_client() as client:
                created = await client.create_key(account, "Async", "test", ["events:read"])
                fetched = await client.get_key(account, created.key.id)
                revoked = await client.revoke_key(account, created.key.id)
            return created, fetched, revoked

        created, fetched, revoked = asyncio.run(scenario())

        assert fetched == created.key
        assert revoked.status == keysvc_pb2.KEY_STATUS_REVOKED
        assert when(revoked, "revoked_at") is not None

    def test_iter_keys_and_list_scopes(self, server: ServerProcess, account: str) -> None:
        """The asyncio iter_keys walks every page newest first; list_scopes has nine scopes."""

        async def scenario() -> tuple[list[str], list[str], int]:
            async with server.async_client() as client:
                ids = []
                for i in range(3):
                    created = await client.create_key(account, f"k{i}", "live", ["links:read"])
                    ids.append(created.key.id)
                listed = [key.id async for key in client.iter_keys(account, page_size=2)]
                scopes = await client.list_scopes()
            return ids, listed, len(scopes)

        ids, listed, scope_count = asyncio.run(scenario())

        assert listed == ids[::-1]
        assert scope_count == 9

    def test_concurrent_authorizations_all_decide(
        self, server: ServerProcess, new_key: NewKey
    ) -> None:
        """Fifty concurrent Authorize calls of one key all answer 200 ALLOWED."""
        secret = new_key(scopes=["links:read"]).secret

        async def scenario() -> list[keysvc_pb2.AuthorizeResponse]:
            async with server.async_client(admin=False) as client:
                return await asyncio.gather(
                    *(client.authorize(secret, ["links:read"]) for _ in range(50))
                )

        decisions = asyncio.run(scenario())

        assert {(d.http_status, d.reason) for d in decisions} == {(200, keysvc_pb2.REASON_ALLOWED)}

    def test_admin_call_without_token_raises_unauthenticated(self, server: ServerProcess) -> None:
        """The asyncio client raises Unauthenticated for an admin RPC without a token."""

        async def scenario() -> None:
            async with server.async_client(admin=False) as client:
                await client.list_scopes()

        with pytest.raises(Unauthenticated):
            asyncio.run(scenario())
