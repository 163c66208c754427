"""The audit trail through a real server: every key creation and revocation is recorded with
who made it, from where and when; ListAuditEvents shows an account its own; the CLI too."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from keysvc_client import (
    InvalidArgument,
    KeyServiceClient,
    NotFound,
    Unauthenticated,
    keysvc_pb2,
)

from tests.conftest import Backend

from .harness import NewKey, ServerFactory, ServerProcess, when
from .test_cli import TIME, table

pytestmark = pytest.mark.slow

pb = keysvc_pb2
CREATED, REVOKED = pb.AUDIT_ACTION_KEY_CREATED, pb.AUDIT_ACTION_KEY_REVOKED
# How gRPC names a client on the loopback interface, as the harness's clients are.
LOOPBACK_PEER = re.compile(r"ipv4:127\.0\.0\.1:\d{1,5}")
EVENT_ID = re.compile(r"[0-9A-Za-z]{16}")


def trail(client: KeyServiceClient, account: str) -> list[tuple[int, str]]:
    """The account's events as (action, key id), newest first."""
    return [(e.action, e.key_id) for e in client.iter_audit_events(account)]


class TestListAuditEvents:
    def test_records_who_created_and_revoked_a_key_from_where_and_when(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A key created and revoked through the server shows both events, newest first, by
        "admin-token" from the client's loopback address, at created_at and revoked_at."""
        before = datetime.now(UTC)
        created = new_key()
        revoked = admin.revoke_key(account, created.key.id)
        after = datetime.now(UTC)

        page = admin.list_audit_events(account)

        revocation, creation = page.events
        assert (revocation.action, creation.action) == (REVOKED, CREATED)
        for event in page.events:
            assert (event.account_id, event.key_id, event.actor) == (
                account,
                created.key.id,
                "admin-token",
            )
            assert LOOPBACK_PEER.fullmatch(event.peer), event.peer
            assert EVENT_ID.fullmatch(event.id), event.id
        assert revocation.id != creation.id
        assert when(creation, "occurred_at") == when(created.key, "created_at")
        assert when(revocation, "occurred_at") == when(revoked, "revoked_at")
        creation_time = creation.occurred_at.ToDatetime(tzinfo=UTC)
        revocation_time = revocation.occurred_at.ToDatetime(tzinfo=UTC)
        assert before <= creation_time <= revocation_time <= after
        assert page.next_page_token == ""

    def test_a_revoked_keys_history_stays(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """A revoked key's creation and revocation stay in the trail as the account moves on,
        and revoking it again adds nothing."""
        old = new_key(name="Old server")
        admin.revoke_key(account, old.key.id)
        admin.revoke_key(account, old.key.id)
        new = new_key(name="New server")

        assert trail(admin, account) == [
            (CREATED, new.key.id),
            (REVOKED, old.key.id),
            (CREATED, old.key.id),
        ]

    def test_an_account_sees_only_its_own_events(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Account B sees none of account A's events, even after trying to revoke A's key."""
        other = f"{account}_b"
        theirs = new_key()
        with pytest.raises(NotFound):
            admin.revoke_key(other, theirs.key.id)

        assert trail(admin, other) == []
        assert trail(admin, account) == [(CREATED, theirs.key.id)]
        mine = new_key(account_id=other)
        assert trail(admin, other) == [(CREATED, mine.key.id)]

    def test_pages_through_every_event_once_newest_first(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """page_size and next_page_token walk every event once, newest first, ending with ''."""
        created = [new_key(name=f"key {i}") for i in range(5)]
        for key in created[:2]:
            admin.revoke_key(account, key.key.id)

        events: list[keysvc_pb2.AuditEvent] = []
        sizes: list[int] = []
        token = ""
        while True:
            page = admin.list_audit_events(account, page_size=3, page_token=token)
            events += page.events
            sizes.append(len(page.events))
            if not (token := page.next_page_token):
                break

        assert sizes == [3, 3, 1]
        assert len({e.id for e in events}) == 7
        times = [e.occurred_at.ToDatetime(tzinfo=UTC) for e in events]
        assert times == sorted(times, reverse=True)
        assert [e.id for e in events] == [e.id for e in admin.iter_audit_events(account)]

    def test_a_list_keys_token_is_refused(
        self, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """ListAuditEvents refuses a ListKeys page token as INVALID_ARGUMENT naming page_token."""
        new_key()
        new_key()
        token = admin.list_keys(account, page_size=1).next_page_token

        with pytest.raises(InvalidArgument) as raised:
            admin.list_audit_events(account, page_token=token)

        assert raised.value.details.startswith("page_token: "), raised.value.details


class TestAdminOnly:
    def test_without_a_token_is_unauthenticated(self, server: ServerProcess, account: str) -> None:
        """ListAuditEvents without a credential is UNAUTHENTICATED, like every admin RPC."""
        with server.client(admin=False) as anonymous, pytest.raises(Unauthenticated) as raised:
            anonymous.list_audit_events(account)

        assert "credential required" in raised.value.details

    def test_with_a_wrong_token_is_unauthenticated(
        self, server: ServerProcess, account: str
    ) -> None:
        """ListAuditEvents with a token keysvc does not know is UNAUTHENTICATED."""
        with server.client(token="kst_not-the-token") as stranger, pytest.raises(Unauthenticated):
            stranger.list_audit_events(account)


DASHBOARD_TOKEN = "kst_" + secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def callers_server(
    tmp_path_factory: pytest.TempPathFactory, module_backend: Backend
) -> Iterator[ServerProcess]:
    """A server whose callers file names one admin, "dashboard", and no admin token."""
    base = tmp_path_factory.mktemp("audit-callers")
    callers = base / "callers.toml"
    digest = hashlib.sha256(DASHBOARD_TOKEN.encode()).hexdigest()
    callers.write_text(
        f'[[callers]]\nname = "dashboard"\nrole = "admin"\ntoken_sha256 = "{digest}"\n'
    )
    factory = ServerFactory(base, args=[*module_backend.server_args, "--callers", str(callers)])
    try:
        yield factory.start()
    finally:
        factory.close()


class TestNamedCallers:
    def test_records_the_callers_name(self, callers_server: ServerProcess, account: str) -> None:
        """A change made with a token from the callers file is recorded under the caller's name."""
        with callers_server.client(token=DASHBOARD_TOKEN) as dashboard:
            created = dashboard.create_key(account, "n", "live", ["links:read"])
            dashboard.revoke_key(account, created.key.id)
            events = list(dashboard.iter_audit_events(account))

        assert [(e.action, e.actor) for e in events] == [
            (REVOKED, "dashboard"),
            (CREATED, "dashboard"),
        ]


class TestOnBehalfOf:
    """An admin tool acting for its own users (the dashboard) says for whom; the trail names
    both."""

    def test_records_the_user_and_the_caller(
        self, callers_server: ServerProcess, account: str
    ) -> None:
        with callers_server.channel() as channel:
            stub = callers_server.stub(channel)
            metadata = (
                ("authorization", f"Bearer {DASHBOARD_TOKEN}"),
                ("x-keysvc-on-behalf-of", "alice@example.com"),
            )
            request = pb.CreateKeyRequest(
                account_id=account, name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
            )
            created = stub.CreateKey(request, metadata=metadata, timeout=10)
            stub.RevokeKey(
                pb.RevokeKeyRequest(account_id=account, id=created.key.id),
                metadata=metadata,
                timeout=10,
            )
        with callers_server.client(token=DASHBOARD_TOKEN) as dashboard:
            events = list(dashboard.iter_audit_events(account))
        assert [(e.action, e.actor) for e in events] == [
            (REVOKED, "alice@example.com via dashboard"),
            (CREATED, "alice@example.com via dashboard"),
        ]

    @pytest.mark.parametrize("user", ["", "   ", "a" * 101], ids=["empty", "blank", "long"])
    def test_a_bad_user_name_is_refused_and_nothing_written(
        self, callers_server: ServerProcess, account: str, user: str
    ) -> None:
        with callers_server.channel() as channel:
            stub = callers_server.stub(channel)
            metadata = (
                ("authorization", f"Bearer {DASHBOARD_TOKEN}"),
                ("x-keysvc-on-behalf-of", user),
            )
            request = pb.CreateKeyRequest(
                account_id=account, name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
            )
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateKey(request, metadata=metadata, timeout=10)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "x-keysvc-on-behalf-of" in (raised.value.details() or "")
        with callers_server.client(token=DASHBOARD_TOKEN) as dashboard:
            assert list(dashboard.iter_audit_events(account)) == []
            assert list(dashboard.list_keys(account).keys) == []


class TestCli:
    def test_audit_list_prints_the_trail_as_a_table(
        self, server: ServerProcess, admin: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """`keysvc audit list` prints TIME, ACTION, KEY ID, ACTOR and PEER, newest first."""
        created = new_key()
        admin.revoke_key(account, created.key.id)

        result = server.cli("audit", "list", "--account", account)

        assert result.returncode == 0, result.stderr
        rows = table(result.stdout)
        assert list(rows[0]) == ["TIME", "ACTION", "KEY ID", "ACTOR", "PEER"]
        assert [(r["ACTION"], r["KEY ID"], r["ACTOR"]) for r in rows] == [
            ("key_revoked", created.key.id, "admin-token"),
            ("key_created", created.key.id, "admin-token"),
        ]
        for row in rows:
            assert TIME.fullmatch(row["TIME"]), row
            assert LOOPBACK_PEER.fullmatch(row["PEER"]), row

    def test_audit_list_json(self, server: ServerProcess, account: str, new_key: NewKey) -> None:
        """`keysvc audit list --json` prints a JSON list of the events, every field named."""
        created = new_key()

        result = server.cli("audit", "list", "--json", "--account", account)

        assert result.returncode == 0, result.stderr
        [event] = json.loads(result.stdout)
        assert event["action"] == "AUDIT_ACTION_KEY_CREATED"
        assert (event["key_id"], event["actor"], event["account_id"]) == (
            created.key.id,
            "admin-token",
            account,
        )
        assert LOOPBACK_PEER.fullmatch(event["peer"])
        assert event["occurred_at"].endswith("Z")

    def test_audit_list_of_an_account_without_events(
        self, server: ServerProcess, account: str
    ) -> None:
        """An account with no events says so and exits 0."""
        result = server.cli("audit", "list", "--account", account)

        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"No audit events in account {account}."
