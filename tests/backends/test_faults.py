"""keysvc under real backend faults: PostgreSQL and Redis killed, stopped or unanswering.

Each test breaks a private backend for real (SIGKILL, SIGSTOP, a port that never
answers), checks what a running keysvc answers meanwhile, mends the backend and
checks that the same keysvc process recovers, without a restart.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2
from keysvc_client import CreateKeyResponse, KeyServiceClient, errors, keysvc_pb2
from psycopg import sql

from tests.e2e.harness import (
    SERVICE,
    ServerFactory,
    ServerProcess,
    poll,
    verdict,
    when,
    with_checksum,
)
from tests.services import PrivatePostgres, PrivateRedis, sessions_waiting_on_locks

pytestmark = pytest.mark.slow

REDIS_PREFIX = "keysvc-faults:"
# Short enough for a fault to show within a test, long enough for a loaded machine.
SERVER_ARGS = (
    "--redis-namespace", REDIS_PREFIX,
    "--redis-timeout-seconds", "0.2",
    "--database-timeout-seconds", "1",
    "--health-check-seconds", "0.2",
    "--last-used-flush-seconds", "0.2",
)  # fmt: skip

ALLOWED = (200, "REASON_ALLOWED")
REVOKED = (401, "REASON_REVOKED")
NOT_FOUND = (401, "REASON_NOT_FOUND")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Generous: the timeouts are 0.2 s (Redis) and 1 s (database). These tests are about
# correctness; the bound only proves that a hung backend does not hang the call.
BOUND = 5.0
# The admin RPCs' database threads (keysvc.workers), each with a connection of its own.
POOL_SIZE = 4
# How long a recovery (health, last-used flush, a restarted backend) may take.
RECOVERY = 15.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this module's own, on a free port, removed at the end."""
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def database(postgres: PrivatePostgres) -> str:
    """The URL of a new, empty database on the private cluster."""
    name = f"keysvc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{postgres.url.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, on a free port."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = PrivateRedis(workdir)
    server.start()
    yield server
    server.kill()


def restore(server: PrivatePostgres | PrivateRedis) -> None:
    """Brings a killed server back and lets a paused one carry on."""
    if server.process is None:
        server.start()
    else:
        server.resume()


@pytest.fixture
def servers(
    tmp_path: Path, postgres: PrivatePostgres, database: str, private_redis: PrivateRedis
) -> Iterator[ServerFactory]:
    """Starts keysvc servers on the test's database and Redis; each must exit 0 at the end."""
    base = tmp_path / "keysvc"
    base.mkdir()
    factory = ServerFactory(
        base,
        args=["--database-url", database, "--redis-url", private_redis.url, *SERVER_ARGS],
    )
    try:
        yield factory
    finally:
        restore(private_redis)
        restore(postgres)
        factory.close()


class CacheView:
    """Reads and evicts keysvc's entries in a Redis, laid out as keysvc/cache/redis.py and
    keysvc/cache/codec.py document: {prefix}grant:{key_id} holds "2", the grant's JSON, and
    a 32-digit tag."""

    def __init__(self, url: str) -> None:
        self._url = url

    def _grant(self, key_id: str) -> str:
        return f"{REDIS_PREFIX}grant:{key_id}"

    def raw(self, key_id: str) -> bytes | None:
        with redis.Redis.from_url(self._url) as client:
            value = client.get(self._grant(key_id))
        return None if value is None else bytes(value)

    def put_raw(self, key_id: str, value: bytes) -> None:
        with redis.Redis.from_url(self._url) as client:
            client.set(self._grant(key_id), value)

    def status(self, key_id: str) -> str | None:
        """ "A" or "R" for the key's cached grant, None when the cache holds none."""
        value = self.raw(key_id)
        if value is None:
            return None
        return "R" if json.loads(value[1:-32])["r"] else "A"

    def evict(self, key_id: str) -> None:
        with redis.Redis.from_url(self._url) as client:
            client.delete(self._grant(key_id))


@pytest.fixture
def cache(private_redis: PrivateRedis) -> CacheView:
    return CacheView(private_redis.url)


class SilentPort:
    """A port that accepts connections and never answers: a hung Redis, as the network sees it."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._held: list[socket.socket] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-port", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # Held open, never read from nor written to.
            self._held.append(connection)

    @property
    def accepted(self) -> int:
        return len(self._held)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def silent_port() -> Iterator[SilentPort]:
    port = SilentPort()
    yield port
    port.close()


@pytest.fixture
def server(servers: ServerFactory) -> ServerProcess:
    return servers.start()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[KeyServiceClient]:
    with server.client() as client:
        yield client


@pytest.fixture
def public(server: ServerProcess) -> Iterator[KeyServiceClient]:
    """A client without the admin token, as an API server calls Authorize."""
    with server.client(admin=False) as client:
        yield client


@pytest.fixture
def account() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


NewKey = Callable[..., CreateKeyResponse]


@pytest.fixture
def new_key(admin: KeyServiceClient, account: str) -> NewKey:
    def create(name: str = "Production server") -> CreateKeyResponse:
        return admin.create_key(account, name, "live", ["links:read"])

    return create


@pytest.fixture
def cold_key(
    servers: ServerFactory, server: ServerProcess, account: str, cache: CacheView
) -> NewKey:
    """Creates keys `server` holds in no cache: through another replica, then taken out of
    Redis (each replica keeps the keys it decided in its own memory)."""
    elsewhere = servers.start()

    def create(name: str = "Production server") -> CreateKeyResponse:
        with elsewhere.client() as admin:
            created = admin.create_key(account, name, "live", ["links:read"])
        cache.evict(created.key.id)
        return created

    return create


def wrong_secret(created: CreateKeyResponse) -> str:
    """The key's id with another, well-formed secret (a fresh checksum included)."""
    return with_checksum(created.secret[:20] + uuid.uuid4().hex)


def status(admin: KeyServiceClient, account: str, key_id: str) -> int:
    (key,) = [key for key in admin.list_keys(account).keys if key.id == key_id]
    result: int = key.status
    return result


def health(server: ServerProcess) -> int:
    return server.health(SERVICE)


class TestRedisKilled:
    """With Redis killed, Authorize decides from PostgreSQL, and RevokeKey works: the change
    log, not the cache, is what makes a revocation hold."""

    def test_authorize_decides_from_the_database(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        private_redis: PrivateRedis,
    ) -> None:
        """An active key is 200, a key revoked before the fault 401 REVOKED, a wrong secret
        401 NOT_FOUND: decisions, never RPC errors."""
        active, revoked = new_key(), new_key()
        admin.revoke_key(account, revoked.key.id)

        private_redis.kill()

        for _ in range(3):
            assert verdict(public.authorize(active.secret)) == ALLOWED
            assert verdict(public.authorize(revoked.secret)) == REVOKED
            assert verdict(public.authorize(wrong_secret(active))) == NOT_FOUND

    def test_revoke_succeeds_and_holds_when_redis_returns_with_the_old_grant(
        self,
        servers: ServerFactory,
        private_redis: PrivateRedis,
        account: str,
        cache: CacheView,
    ) -> None:
        """RevokeKey answers OK without Redis, and the key is 401 REVOKED on both replicas at
        once; when Redis comes back still holding the key as active, it stays refused."""
        first, second = servers.start(), servers.start()
        with first.client() as admin, second.client(admin=False) as other:
            created = admin.create_key(account, "Production server", "live", ["links:read"])
            assert verdict(other.authorize(created.secret)) == ALLOWED
            stale = cache.raw(created.key.id)

            private_redis.kill()
            revoked = admin.revoke_key(account, created.key.id)
            assert revoked.status == keysvc_pb2.KEY_STATUS_REVOKED
            assert verdict(other.authorize(created.secret)) == REVOKED

            private_redis.start()
            assert stale is not None
            cache.put_raw(created.key.id, stale)  # as if Redis had kept it
            assert cache.status(created.key.id) == "A"
            for _ in range(3):
                assert verdict(other.authorize(created.secret)) == REVOKED
            with first.client(admin=False) as own:
                assert verdict(own.authorize(created.secret)) == REVOKED

    def test_create_key_works_without_redis(
        self,
        public: KeyServiceClient,
        new_key: NewKey,
        private_redis: PrivateRedis,
    ) -> None:
        """CreateKey succeeds while Redis is down, and the new key authorizes from the database."""
        private_redis.kill()

        created = new_key()

        assert verdict(public.authorize(created.secret)) == ALLOWED
        assert verdict(public.authorize(wrong_secret(created))) == NOT_FOUND

    def test_the_cache_is_used_again_once_redis_returns(
        self,
        servers: ServerFactory,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        private_redis: PrivateRedis,
        cache: CacheView,
    ) -> None:
        """After Redis restarts, keysvc caches keys there again and revokes through it."""
        before = new_key()
        private_redis.kill()
        assert verdict(public.authorize(before.secret)) == ALLOWED

        private_redis.start()

        # A key created before the outage is cached again on its first use by a replica that
        # has not decided it yet...
        with servers.start().client(admin=False) as other:
            assert verdict(other.authorize(before.secret)) == ALLOWED
        assert cache.status(before.key.id) == "A"
        # ...a new key is cached as it is created...
        after = new_key()
        assert cache.status(after.key.id) == "A"
        assert verdict(public.authorize(after.secret)) == ALLOWED
        # ...and a revocation lands in the cache.
        admin.revoke_key(account, after.key.id)
        assert cache.status(after.key.id) == "R"
        assert verdict(public.authorize(after.secret)) == REVOKED


class TestRedisPaused:
    """With Redis stopped (SIGSTOP), Authorize and RevokeKey still work within a bounded time,
    and all works again after SIGCONT."""

    def test_authorize_decides_in_bounded_time(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        private_redis: PrivateRedis,
    ) -> None:
        """Every decision is the right one and arrives within a few seconds."""
        active, revoked = new_key(), new_key()
        admin.revoke_key(account, revoked.key.id)

        private_redis.pause()

        for api_key, expected in [
            (active.secret, ALLOWED),
            (revoked.secret, REVOKED),
            (wrong_secret(active), NOT_FOUND),
        ]:
            started = time.monotonic()
            decision = public.authorize(api_key)
            assert time.monotonic() - started < BOUND
            assert verdict(decision) == expected

    def test_revoke_works_and_holds_after_sigcont(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        private_redis: PrivateRedis,
        cache: CacheView,
    ) -> None:
        """RevokeKey answers OK in bounded time; after SIGCONT, with Redis holding the key as
        active (its marker lost), the key is 401 REVOKED all the same; new keys are cached and
        allowed."""
        created, other = new_key(), new_key()
        assert verdict(public.authorize(created.secret)) == ALLOWED
        stale = cache.raw(created.key.id)

        private_redis.pause()

        started = time.monotonic()
        admin.revoke_key(account, created.key.id)
        assert time.monotonic() - started < BOUND
        assert verdict(public.authorize(created.secret)) == REVOKED

        private_redis.resume()

        assert stale is not None
        cache.put_raw(created.key.id, stale)
        assert cache.status(created.key.id) == "A"
        assert verdict(public.authorize(created.secret)) == REVOKED
        assert verdict(public.authorize(other.secret)) == ALLOWED
        fresh = new_key()
        assert cache.status(fresh.key.id) == "A"
        assert verdict(public.authorize(fresh.secret)) == ALLOWED


class TestRedisPortSilent:
    """With Redis's port accepting connections but never answering, Authorize decides from the
    database and RevokeKey works."""

    def test_decisions_come_from_the_database(
        self, servers: ServerFactory, silent_port: SilentPort, account: str
    ) -> None:
        """Keys are created, decided and revoked correctly within a bounded time."""
        server = servers.start("--redis-url", silent_port.url)
        with server.client() as admin, server.client(admin=False) as public:
            active = admin.create_key(account, "Production server", "live", ["links:read"])
            doomed = admin.create_key(account, "Old server", "live", ["links:read"])

            for api_key, expected in [
                (active.secret, ALLOWED),
                (wrong_secret(active), NOT_FOUND),
            ]:
                started = time.monotonic()
                decision = public.authorize(api_key)
                assert time.monotonic() - started < BOUND
                assert verdict(decision) == expected

            started = time.monotonic()
            admin.revoke_key(account, doomed.key.id)
            assert time.monotonic() - started < BOUND
            assert verdict(public.authorize(doomed.secret)) == REVOKED

        # The answers above came with Redis's port really reached, not refused.
        assert silent_port.accepted > 0


class TestPostgresKilled:
    """With PostgreSQL killed, a cached key is allowed for at most the lease, never after;
    refusals the cache can prove stay; whatever needs SQL answers UNAVAILABLE and health turns
    NOT_SERVING; all recovers when it restarts."""

    def test_cached_keys_are_allowed_no_longer_than_the_lease(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        postgres: PrivatePostgres,
    ) -> None:
        """Once the lease has run out with no read of the change log, a cached active key is
        UNAVAILABLE (a revocation keysvc cannot read may exist), while a cached revoked key is
        still 401 REVOKED and a wrong secret for a cached key 401 NOT_FOUND."""
        active, revoked = new_key(), new_key()
        admin.revoke_key(account, revoked.key.id)
        assert verdict(public.authorize(revoked.secret)) == REVOKED

        postgres.kill()

        def unavailable() -> bool:
            try:
                public.authorize(active.secret)
            except errors.Unavailable:
                return True
            return False

        poll(unavailable, timeout=RECOVERY, what="the cached key to stop being allowed")
        for _ in range(3):
            with pytest.raises(errors.Unavailable):
                public.authorize(active.secret)
            assert verdict(public.authorize(revoked.secret)) == REVOKED
            assert verdict(public.authorize(wrong_secret(active))) == NOT_FOUND

    def test_a_key_not_in_the_cache_is_unavailable(
        self, public: KeyServiceClient, cold_key: NewKey, postgres: PrivatePostgres
    ) -> None:
        """A key the cache does not hold gets UNAVAILABLE: neither allowed nor refused."""
        cold = cold_key()

        postgres.kill()

        for api_key in [cold.secret, wrong_secret(cold)]:
            with pytest.raises(errors.Unavailable):
                public.authorize(api_key)

    def test_admin_rpcs_are_unavailable(
        self,
        admin: KeyServiceClient,
        account: str,
        new_key: NewKey,
        postgres: PrivatePostgres,
    ) -> None:
        """CreateKey, ListKeys, GetKey and RevokeKey answer UNAVAILABLE."""
        created = new_key()

        postgres.kill()

        with pytest.raises(errors.Unavailable):
            admin.create_key(account, "Another server", "live", ["links:read"])
        with pytest.raises(errors.Unavailable):
            admin.list_keys(account)
        with pytest.raises(errors.Unavailable):
            admin.get_key(account, created.key.id)
        with pytest.raises(errors.Unavailable):
            admin.revoke_key(account, created.key.id)

    def test_everything_recovers_when_postgres_restarts(
        self,
        server: ServerProcess,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        cold_key: NewKey,
        postgres: PrivatePostgres,
    ) -> None:
        """Health is NOT_SERVING while PostgreSQL is down and SERVING once it is back; then admin
        RPCs work and a key the cache did not hold authorizes, without restarting keysvc."""
        cold = cold_key()

        postgres.kill()
        poll(lambda: health(server) == NOT_SERVING, timeout=RECOVERY, what="NOT_SERVING")
        with pytest.raises(errors.Unavailable):
            public.authorize(cold.secret)

        postgres.start()
        poll(lambda: health(server) == SERVING, timeout=RECOVERY, what="SERVING again")

        assert verdict(public.authorize(cold.secret)) == ALLOWED
        created = new_key(name="After the outage")
        assert admin.get_key(account, created.key.id).name == "After the outage"
        assert admin.revoke_key(account, cold.key.id).status == keysvc_pb2.KEY_STATUS_REVOKED
        assert verdict(public.authorize(cold.secret)) == REVOKED
        assert {key.id for key in admin.list_keys(account).keys} == {cold.key.id, created.key.id}


def attempted_writes(database: str) -> tuple[int, int]:
    """Rows inserted into and updated in api_keys so far, committed or rolled back alike
    (PostgreSQL's statistics count both, once the transaction has ended)."""
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'api_keys'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def fill_connection_pool(admin: KeyServiceClient, account: str, database: str) -> None:
    """Leaves keysvc's pool holding POOL_SIZE open connections to `database`.

    The table is locked while as many ListKeys wait on it, each on a connection of
    its own, so that later calls check out connections already open: a stopped
    backend then receives their statements, rather than a new connection timing out.
    """
    with psycopg.connect(database) as lock, ThreadPoolExecutor(POOL_SIZE) as callers:
        lock.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        calls = [callers.submit(admin.list_keys, account) for _ in range(POOL_SIZE)]
        poll(
            lambda: sessions_waiting_on_locks(database) >= POOL_SIZE,
            timeout=RECOVERY,
            what="ListKeys waiting on the lock",
        )
        lock.commit()
        for call in calls:
            # A ListKeys that outlived the database timeout still leaves its connection.
            with contextlib.suppress(errors.Unavailable):
                call.result()


class TestPostgresPaused:
    """With PostgreSQL stopped (SIGSTOP), admin RPCs answer UNAVAILABLE within the database
    timeout, and the writes so refused leave nothing behind."""

    def test_calls_needing_the_database_are_unavailable_in_bounded_time(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        postgres: PrivatePostgres,
        cache: CacheView,
    ) -> None:
        """CreateKey, ListKeys, GetKey, RevokeKey, the Authorize of a key the cache lacks and,
        the lease having run out meanwhile, of a cached key each answer UNAVAILABLE within
        seconds."""
        cached, cold = new_key(), new_key()
        cache.evict(cold.key.id)

        postgres.pause()

        calls: list[Callable[[], object]] = [
            lambda: admin.create_key(account, "Another server", "live", ["links:read"]),
            lambda: admin.list_keys(account),
            lambda: admin.get_key(account, cached.key.id),
            lambda: admin.revoke_key(account, cached.key.id),
            lambda: public.authorize(cold.secret),
            lambda: public.authorize(cached.secret),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(errors.Unavailable):
                call()
            assert time.monotonic() - started < BOUND

    def test_refused_writes_leave_nothing_behind(
        self,
        server: ServerProcess,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        postgres: PrivatePostgres,
        database: str,
    ) -> None:
        """A CreateKey and a RevokeKey that reached the stopped database and were answered
        UNAVAILABLE leave nothing once it resumes: no such key, and the other still active."""
        kept = new_key()
        fill_connection_pool(admin, account, database)
        inserted, updated = attempted_writes(database)

        postgres.pause()
        with pytest.raises(errors.Unavailable):
            admin.create_key(account, "Created during the pause", "live", ["links:read"])
        with pytest.raises(errors.Unavailable):
            admin.revoke_key(account, kept.key.id)
        postgres.resume()

        # Both writes were waiting on stopped backends: wait until they have run there and
        # ended, which keysvc must make a rollback, their deadline having passed.
        def both_ended() -> bool:
            now_inserted, now_updated = attempted_writes(database)
            return now_inserted > inserted and now_updated > updated

        poll(both_ended, timeout=RECOVERY, what="the INSERT and UPDATE to end on resumed backends")
        listed = admin.list_keys(account).keys
        assert [key.name for key in listed] == ["Production server"]
        assert listed[0].status == keysvc_pb2.KEY_STATUS_ACTIVE
        assert verdict(public.authorize(kept.secret)) == ALLOWED
        poll(lambda: health(server) == SERVING, timeout=RECOVERY, what="SERVING again")


class TestLastUsedAcrossRedisRestart:
    """last_used_at reaches PostgreSQL across a Redis restart, and never moves backwards."""

    def test_last_used_is_recorded_and_monotonic(
        self,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        account: str,
        new_key: NewKey,
        private_redis: PrivateRedis,
    ) -> None:
        """A use just before Redis is killed is recorded; a use after its restart moves
        last_used_at forward."""
        created = new_key()

        def used_since(moment: datetime) -> datetime | None:
            """last_used_at in ListKeys, once it is at or after `moment`."""
            (key,) = [key for key in admin.list_keys(account).keys if key.id == created.key.id]
            value = when(key, "last_used_at")
            return value if value is not None and value >= moment else None

        first_use = datetime.now(UTC)
        assert verdict(public.authorize(created.secret)) == ALLOWED
        private_redis.kill()
        private_redis.start()
        first = poll(lambda: used_since(first_use), timeout=RECOVERY, what="the first use")

        second_use = datetime.now(UTC)
        assert verdict(public.authorize(created.secret)) == ALLOWED
        second = poll(lambda: used_since(second_use), timeout=RECOVERY, what="the second use")

        assert second >= first


class TestReplicasAfterRedisOutage:
    """A revocation made while Redis is down holds on every replica, during the outage and
    after it, without anyone retrying it."""

    @pytest.mark.parametrize("fault", ["kill", "pause"])
    def test_the_other_replica_refuses_the_key(
        self,
        servers: ServerFactory,
        private_redis: PrivateRedis,
        account: str,
        fault: str,
    ) -> None:
        """RevokeKey through replica A answers OK during the outage; replica B, which had the
        key cached, answers 401 REVOKED then, and after Redis is back."""
        first, second = servers.start(), servers.start()
        with first.client() as admin, second.client(admin=False) as other:
            created = admin.create_key(account, "Production server", "live", ["links:read"])
            assert verdict(other.authorize(created.secret)) == ALLOWED

            if fault == "kill":
                private_redis.kill()
            else:
                private_redis.pause()
            admin.revoke_key(account, created.key.id)
            assert verdict(other.authorize(created.secret)) == REVOKED
            if fault == "kill":
                private_redis.start()
            else:
                private_redis.resume()

            for _ in range(3):
                assert verdict(other.authorize(created.secret)) == REVOKED
