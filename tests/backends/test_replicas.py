"""Several replicas on one PostgreSQL and one Redis: revocation holds across all of them.

Once RevokeKey has returned OK on any replica, no replica answers `allowed` for
that key to a request sent afterwards, under load, and whatever the interleaving
of a cold look-up with the revocation (or with Redis losing its contents).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis
from keysvc_client import aio as keysvc_aio

from keysvc.core.model import Actor, KeyGrant, Mode, Reason
from keysvc.runtime.build import Keysvc, Seams, built
from keysvc.runtime.config import Settings
from keysvc.usecases.authorize import Authorizer
from tests.conftest import Backend, new_backend
from tests.e2e.harness import ServerFactory, ServerProcess, verdict, when
from tests.services import PrivateRedis, SharedPostgres, wait_for
from tests.unit.support import FAST_ARGON2, async_test, within_deadline

SCOPES = ["links:read"]
OPERATOR = Actor("operator", "ipv4:127.0.0.1:1")


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Backend:
    return new_backend("postgres+redis", request)


Replicas = tuple[ServerProcess, ServerProcess]


@pytest.fixture
def replicas(tmp_path: Path, production: Backend) -> Iterator[Replicas]:
    """Two keysvc servers on the same PostgreSQL database and the same Redis."""
    factory = ServerFactory(
        tmp_path, args=[*production.server_args, "--last-used-flush-seconds", "0.2"]
    )
    try:
        first = factory.start()
        second = factory.start(env={"KEYSVC_ADMIN_TOKEN": first.admin_token})
        yield first, second
    finally:
        factory.close()


class TestTwoReplicas:
    def test_a_key_created_on_one_replica_authorizes_on_the_other(self, replicas: Replicas) -> None:
        """A key created through replica A is allowed by replica B straight away."""
        a, b = replicas
        with a.client() as admin_a, b.client(admin=False) as public_b:
            created = admin_a.create_key("acct_replicas", "Backend", "live", SCOPES)
            assert verdict(public_b.authorize(created.secret, SCOPES)) == (200, "REASON_ALLOWED")

    def test_revoke_through_one_replica_refuses_at_once_on_the_other(
        self, replicas: Replicas
    ) -> None:
        """Revoked through A, the key is refused by B on the very next request: 401 REVOKED."""
        a, b = replicas
        with a.client() as admin_a, b.client(admin=False) as public_b:
            created = admin_a.create_key("acct_replicas", "Backend", "live", SCOPES)
            assert public_b.authorize(created.secret).allowed  # now cached, hot on B
            admin_a.revoke_key("acct_replicas", created.key.id)
            assert verdict(public_b.authorize(created.secret)) == (401, "REASON_REVOKED")

    def test_last_used_from_both_replicas_never_moves_backwards(self, replicas: Replicas) -> None:
        """Both replicas flush last-used for one key; the stored time only ever grows."""
        a, b = replicas
        with a.client() as admin_a, a.client(admin=False) as pa, b.client(admin=False) as pb:
            created = admin_a.create_key("acct_replicas", "Backend", "live", SCOPES)
            seen: list[datetime] = []
            for public in (pa, pb, pa, pb):
                assert public.authorize(created.secret).allowed

                def flushed(after: datetime | None = seen[-1] if seen else None) -> datetime | None:
                    stamp = when(admin_a.get_key("acct_replicas", created.key.id), "last_used_at")
                    return stamp if stamp and (after is None or stamp > after) else None

                seen.append(wait_for(flushed, timeout=10, what="last_used_at to move on"))
            assert seen == sorted(seen)


@dataclass
class LoadResult:
    revoked_at: float
    allowed_after_revoke: int
    refused_after_revoke: int
    requests: int


async def _hammer_and_revoke(a: ServerProcess, b: ServerProcess, account: str) -> LoadResult:
    """Clients on both replicas authorize one key in a loop; mid-way, A revokes it."""
    async with (
        a.async_client() as admin,
        a.async_client(admin=False) as pa,
        b.async_client(admin=False) as pb,
    ):
        created = await admin.create_key(account, "Under load", "live", SCOPES)
        revoked_returned = asyncio.Event()
        returned_at = float("inf")
        records: list[tuple[float, bool]] = []

        load_flowing = asyncio.Event()

        async def hammer(client: keysvc_aio.KeyServiceClient) -> None:
            # Each client goes on for 20 requests after the revocation returned.
            left_after_revoke = 20
            while left_after_revoke:
                sent = time.monotonic()
                decision = await client.authorize(created.secret, SCOPES)
                records.append((sent, decision.allowed))
                if len(records) >= 200:
                    load_flowing.set()
                if revoked_returned.is_set():
                    left_after_revoke -= 1

        async def revoke_mid_way() -> None:
            nonlocal returned_at
            await load_flowing.wait()
            await admin.revoke_key(account, created.key.id)
            returned_at = time.monotonic()
            revoked_returned.set()

        clients = [pa, pb] * 8
        await within_deadline(asyncio.gather(revoke_mid_way(), *(hammer(c) for c in clients)))
        after = [allowed for sent, allowed in records if sent > returned_at]
        return LoadResult(
            revoked_at=returned_at,
            allowed_after_revoke=sum(after),
            refused_after_revoke=len(after) - sum(after),
            requests=len(records),
        )


class TestRevocationUnderLoad:
    @async_test
    async def test_no_request_sent_after_revoke_returned_is_allowed(
        self, replicas: Replicas
    ) -> None:
        """16 clients on two replicas: not one request sent after RevokeKey returned is allowed."""
        a, b = replicas
        for repetition in range(10):
            result = await _hammer_and_revoke(a, b, f"acct_load_{repetition}")
            assert result.allowed_after_revoke == 0, result
            # The count means something only if requests did follow the revocation.
            assert result.refused_after_revoke > 0, result


class PausingAuthorizer(Authorizer):
    """An Authorizer whose cold look-up stops between its store read and its cache fill."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.paused = asyncio.Event()
        self.release = asyncio.Event()

    async def before_fill(self, grant: KeyGrant) -> None:
        if not self.paused.is_set():
            self.paused.set()
            await self.release.wait()


LEASE_SECONDS = 0.3


@asynccontextmanager
async def _replica(database_url: str, redis_url: str, namespace: str) -> AsyncIterator[Keysvc]:
    """keysvc as the server builds it, on PostgreSQL and Redis, in this process; its
    Authorizer pauses cold look-ups."""
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_namespace=namespace,
        redis_timeout_seconds=0.5,
        lease_seconds=LEASE_SECONDS,
        argon2=FAST_ARGON2,
    )
    async with built(settings, seams=Seams(authorizer_class=PausingAuthorizer)) as keysvc:
        yield keysvc


def _paused(replica: Keysvc) -> PausingAuthorizer:
    assert isinstance(replica.authorizer, PausingAuthorizer)
    return replica.authorizer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


class TestColdLookUpRacingARevoke:
    """A cold look-up on replica B reads the key, A revokes it, then B fills the cache with
    what it read: the look-up's own request (which arrived first) may be answered either way,
    but no later request is allowed, on either replica."""

    @async_test
    async def test_a_fill_after_the_revoke_allows_nothing_after_it(
        self, shared_postgres: SharedPostgres, private_redis: PrivateRedis
    ) -> None:
        """B's stale fill lands after the revocation: both replicas answer REVOKED from then on."""
        url = shared_postgres.fresh_database()
        async with (
            _replica(url, private_redis.url, "keysvc:") as a,
            _replica(url, private_redis.url, "keysvc:") as b,
        ):
            _paused(a).paused.set()  # only B's look-up pauses
            created = await a.admin.create_key("acct_race", "Race", Mode.LIVE, SCOPES, OPERATOR)
            _forget(private_redis.url, created.key.id)  # B's look-up must be cold
            look_up = asyncio.create_task(b.authorizer.authorize(created.raw_key, SCOPES))
            await within_deadline(_paused(b).paused.wait())  # B has read the key: active
            await a.admin.revoke_key("acct_race", created.key.id, OPERATOR)
            _paused(b).release.set()
            await within_deadline(look_up)
            cached = await b.cache.get(created.key.id)
            assert cached is not None and not cached.revoked  # the stale grant is in Redis
            for replica in (a, b):
                decision = await replica.authorizer.authorize(created.raw_key)
                assert decision.reason is Reason.REVOKED

    @async_test
    async def test_redis_losing_the_marker_mid_look_up_allows_nothing_after_it(
        self, shared_postgres: SharedPostgres, private_redis: PrivateRedis
    ) -> None:
        """As above, with Redis restarting empty between the revocation and B's fill."""
        url = shared_postgres.fresh_database()
        async with (
            _replica(url, private_redis.url, "keysvc:") as a,
            _replica(url, private_redis.url, "keysvc:") as b,
        ):
            _paused(a).paused.set()  # only B's look-up pauses
            created = await a.admin.create_key("acct_race", "Race", Mode.LIVE, SCOPES, OPERATOR)
            _forget(private_redis.url, created.key.id)
            look_up = asyncio.create_task(b.authorizer.authorize(created.raw_key, SCOPES))
            await within_deadline(_paused(b).paused.wait())
            await a.admin.revoke_key("acct_race", created.key.id, OPERATOR)
            # The restart loses the revocation marker (Redis keeps nothing on disk here).
            private_redis.kill()
            private_redis.start()
            _paused(b).release.set()
            await within_deadline(look_up)
            for replica in (a, b):
                decision = await replica.authorizer.authorize(created.raw_key)
                assert decision.reason is Reason.REVOKED


def _forget(redis_url: str, key_id: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(f"keysvc:grant:{key_id}")
    finally:
        client.close()


class TestRevocationTheCacheMissed:
    @async_test
    async def test_holds_on_every_replica_with_nobody_retrying_it(
        self, shared_postgres: SharedPostgres, private_redis: PrivateRedis
    ) -> None:
        """A revoke whose marker a paused Redis never got answers OK, and the other replica,
        which had the key cached, refuses it then and once Redis answers again."""
        url = shared_postgres.fresh_database()
        async with (
            _replica(url, private_redis.url, "keysvc:") as a,
            _replica(url, private_redis.url, "keysvc:") as b,
        ):
            created = await a.admin.create_key("acct_retry", "Retry", Mode.LIVE, SCOPES, OPERATOR)
            _paused(b).paused.set()  # no pause wanted in this test
            assert (await b.authorizer.authorize(created.raw_key)).allowed  # cached: active
            stale = await b.cache.get(created.key.id)
            private_redis.pause()
            try:
                await a.admin.revoke_key("acct_retry", created.key.id, OPERATOR)
                assert (await b.authorizer.authorize(created.raw_key)).reason is Reason.REVOKED
            finally:
                private_redis.resume()
            assert stale is not None and not stale.revoked
            await b.cache.put(stale)  # as if the marker had been lost
            assert (await b.authorizer.authorize(created.raw_key)).reason is Reason.REVOKED
