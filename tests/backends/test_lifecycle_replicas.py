"""The key lifecycle on real servers: a roll's grace, expiry reached while a key is hot, and a
scope removed under load, each on two replicas of one PostgreSQL and one Redis (and the roll
and expiry on the embedded default too). Times are real: the replicas judge expiry by their
clocks, which on one machine are the test's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from keysvc_client import keysvc_pb2

from tests.conftest import Backend, new_backend
from tests.e2e.harness import ServerFactory, ServerProcess
from tests.services import wait_for
from tests.unit.support import async_test, within_deadline

READ, WRITE = "links:read", "links:write"
ACCOUNT = "acct_lifecycle"

Replicas = tuple[ServerProcess, ...]


@pytest.fixture(params=["embedded", "postgres+redis"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    """Two replicas on PostgreSQL and Redis; the embedded default has one."""
    backend: Backend = new_backend(request.param, request)
    factory = ServerFactory(tmp_path, args=backend.server_args)
    try:
        first = factory.start()
        if backend.name == "embedded":
            yield (first,)
        else:
            second = factory.start(env={"KEYSVC_ADMIN_TOKEN": first.admin_token})
            yield first, second
    finally:
        factory.close()


@pytest.fixture
def production(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    backend = new_backend("postgres+redis", request)
    factory = ServerFactory(tmp_path, args=backend.server_args)
    try:
        first = factory.start()
        yield first, factory.start(env={"KEYSVC_ADMIN_TOKEN": first.admin_token})
    finally:
        factory.close()


def _reasons(replicas: Replicas, secret: str, scopes: tuple[str, ...] = (READ,)) -> set[str]:
    found = set()
    for replica in replicas:
        with replica.client(admin=False) as public:
            reason = public.authorize(secret, scopes).reason
        found.add(keysvc_pb2.Reason.Name(reason))
    return found


def _expires(key: keysvc_pb2.Key) -> datetime:
    assert key.HasField("expire_time")
    return key.expire_time.ToDatetime(tzinfo=UTC)


class TestRollKey:
    def test_the_old_key_works_through_the_grace_then_is_expired_on_every_replica(
        self, replicas: Replicas
    ) -> None:
        """Rolled with a 2 s grace: old and new keys are allowed on every replica; once the
        grace is over the old key is 401 EXPIRED everywhere, and the new one still allowed."""
        with replicas[0].client() as admin:
            old = admin.create_key(ACCOUNT, "Checkout", "live", [READ])
            assert _reasons(replicas, old.secret) == {"REASON_ALLOWED"}
            rolled = admin.roll_key(ACCOUNT, old.key.id, grace=timedelta(seconds=2))
        ends = _expires(rolled.rolled)
        assert timedelta(seconds=1) < ends - datetime.now(UTC) <= timedelta(seconds=2)
        assert rolled.key.name == "Checkout" and list(rolled.key.scopes) == [READ]
        assert _reasons(replicas, old.secret) == {"REASON_ALLOWED"}
        assert _reasons(replicas, rolled.secret) == {"REASON_ALLOWED"}
        wait_for(lambda: datetime.now(UTC) > ends, timeout=5, what="the grace to end")
        assert _reasons(replicas, old.secret) == {"REASON_EXPIRED"}
        assert _reasons(replicas, rolled.secret) == {"REASON_ALLOWED"}
        with replicas[-1].client() as admin:
            assert admin.get_key(ACCOUNT, old.key.id).status == keysvc_pb2.KEY_STATUS_EXPIRED

    def test_a_roll_cannot_extend_an_expiring_key(self, replicas: Replicas) -> None:
        """A key expiring in a minute, rolled with a day's grace: both keys end in a minute."""
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
        with replicas[0].client() as admin:
            old = admin.create_key(ACCOUNT, "Trial", "test", [READ], expire_time=soon)
            rolled = admin.roll_key(ACCOUNT, old.key.id, grace=timedelta(days=1))
        assert _expires(rolled.rolled) == soon
        assert _expires(rolled.key) == soon

    def test_rolling_a_revoked_key_is_refused(self, replicas: Replicas) -> None:
        with replicas[0].client() as admin:
            old = admin.create_key(ACCOUNT, "Old", "live", [READ])
            admin.revoke_key(ACCOUNT, old.key.id, reason="unused")
            with replicas[0].channel() as channel:
                stub = replicas[0].stub(channel)
                request = keysvc_pb2.RollKeyRequest(account_id=ACCOUNT, id=old.key.id)
                request.grace.FromTimedelta(timedelta(hours=1))
                with pytest.raises(Exception) as raised:
                    stub.RollKey(request, metadata=replicas[0].admin_metadata, timeout=10)
        assert raised.value.code().name == "FAILED_PRECONDITION"  # type: ignore[attr-defined]
        assert "revoked" in raised.value.details()  # type: ignore[attr-defined]


class TestExpiry:
    @async_test
    async def test_no_request_sent_after_the_expire_time_is_allowed(
        self, replicas: Replicas
    ) -> None:
        """Clients on every replica hammer a key that expires in 2 s: not one request sent
        after its expire_time is allowed, and some were sent."""
        ends = datetime.now(UTC) + timedelta(seconds=2)
        async with replicas[0].async_client() as admin:
            created = await admin.create_key(
                ACCOUNT, "Short-lived", "live", [READ], expire_time=ends
            )
        records: list[tuple[datetime, str]] = []

        async def hammer(replica: ServerProcess) -> None:
            async with replica.async_client(admin=False) as public:
                while True:
                    sent = datetime.now(UTC)
                    decision = await public.authorize(created.secret, [READ])
                    records.append((sent, keysvc_pb2.Reason.Name(decision.reason)))
                    if sent > ends + timedelta(seconds=0.5):
                        return

        await within_deadline(asyncio.gather(*(hammer(r) for r in replicas * 4)))
        before = {reason for sent, reason in records if sent < ends - timedelta(seconds=0.1)}
        after = {reason for sent, reason in records if sent > ends}
        assert before == {"REASON_ALLOWED"}
        assert after == {"REASON_EXPIRED"}


async def _hammer_and_narrow(a: ServerProcess, b: ServerProcess, account: str) -> list[str]:
    """Clients on both replicas use one key's links:write in a loop; mid-way, A removes that
    scope. The reasons answered to requests sent after UpdateKey returned."""
    async with a.async_client() as admin:
        created = await admin.create_key(account, "Under load", "live", [READ, WRITE])
        returned_at = float("inf")
        updated = asyncio.Event()
        flowing = asyncio.Event()
        records: list[tuple[float, str]] = []

        async def hammer(replica: ServerProcess) -> None:
            async with replica.async_client(admin=False) as public:
                left = 20
                while left:
                    sent = time.monotonic()
                    decision = await public.authorize(created.secret, [WRITE])
                    records.append((sent, keysvc_pb2.Reason.Name(decision.reason)))
                    if len(records) >= 200:
                        flowing.set()
                    if updated.is_set():
                        left -= 1

        async def narrow() -> None:
            nonlocal returned_at
            await flowing.wait()
            await admin.update_key(account, created.key.id, scopes=[READ])
            returned_at = time.monotonic()
            updated.set()

        await within_deadline(asyncio.gather(narrow(), *(hammer(r) for r in (a, b) * 8)))
    assert {reason for sent, reason in records if sent < returned_at} >= {"REASON_ALLOWED"}
    return [reason for sent, reason in records if sent > returned_at]


class TestScopeRemovedUnderLoad:
    @async_test
    async def test_no_request_sent_after_update_key_returned_gets_the_scope(
        self, production: Replicas
    ) -> None:
        """16 clients on two replicas use links:write; UpdateKey through A removes it: every
        request sent after it returned is 403 INSUFFICIENT_SCOPE, on both replicas, three
        times over."""
        a, b = production
        for repetition in range(3):
            after = await _hammer_and_narrow(a, b, f"{ACCOUNT}_{repetition}")
            assert after and set(after) == {"REASON_INSUFFICIENT_SCOPE"}, repetition
