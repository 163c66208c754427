"""Revocation under the faults that break key services: tried on real processes, the way an
attacker and a bad day in production would (docs/revocation.md, "Faults").

Each test runs real `keysvc serve` replicas on PostgreSQL and private redis-servers, breaks
something for real (a snapshot restored, a lagging replica promoted, a replica cut off from
Redis, a caller giving up on a locked row, values written into Redis, a proxy that stalls,
a closed log pipe, a flood of made-up keys), and checks the one promise: once RevokeKey has
returned, or the database holds the revocation, the key is refused on every replica.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from keysvc_client import CreateKeyResponse, Guard, KeyServiceClient, keysvc_pb2

from tests.e2e.harness import (
    ServerFactory,
    ServerProcess,
    clean_environ,
    poll,
    serve_command,
    verdict,
    with_checksum,
)
from tests.proxy import TcpProxy
from tests.services import PrivateRedis, SharedPostgres, free_port, sessions_waiting_on_locks

pytestmark = pytest.mark.slow

PREFIX = "keysvc-revocation:"
LEASE = 0.3
SERVER_ARGS = (
    "--redis-namespace", PREFIX,
    "--redis-timeout-seconds", "0.2",
    "--lease-seconds", str(LEASE),
    "--health-check-seconds", "0.2",
)  # fmt: skip
ALLOWED = (200, "REASON_ALLOWED")
REVOKED = (401, "REASON_REVOKED")
NOT_FOUND = (401, "REASON_NOT_FOUND")
# How long anything that should happen "within the lease" may take on a loaded machine.
SETTLE = 10.0


class Cache:
    """keysvc's entries in one Redis, as keysvc/cache/redis.py and codec.py lay them out."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def raw(self, key_id: str) -> bytes | None:
        with self._client() as client:
            value = client.get(f"{PREFIX}grant:{key_id}")
        return None if value is None else bytes(value)

    def put_raw(self, key_id: str, value: bytes) -> None:
        with self._client() as client:
            client.set(f"{PREFIX}grant:{key_id}", value)

    def evict(self, key_id: str) -> None:
        with self._client() as client:
            client.delete(f"{PREFIX}grant:{key_id}")

    def status(self, key_id: str) -> str | None:
        """ "A" (active) or "R" (revoked) for the key's grant; None when Redis holds none."""
        value = self.raw(key_id)
        if value is None:
            return None
        return "R" if json.loads(value[1:-32])["r"] else "A"


@pytest.fixture
def database(shared_postgres: SharedPostgres) -> str:
    return shared_postgres.fresh_database()


def _redis(path: Path, *options: str, password: str | None = None) -> PrivateRedis:
    path.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(path, options=options, password=password)
    server.start()
    return server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = _redis(tmp_path / "redis")
    yield server
    server.kill()


@pytest.fixture
def servers(tmp_path: Path, database: str) -> Iterator[ServerFactory]:
    """Starts keysvc replicas on the test's database; each is given its Redis URL."""
    factory = ServerFactory(tmp_path / "keysvc", args=["--database-url", database, *SERVER_ARGS])
    (tmp_path / "keysvc").mkdir()
    try:
        yield factory
    finally:
        factory.close()


def _replicas(
    servers: ServerFactory, redis_url: str, *extra: str, count: int = 2
) -> list[ServerProcess]:
    first = servers.start("--redis-url", redis_url, *extra)
    others = [
        servers.start(
            "--redis-url", redis_url, *extra, env={"KEYSVC_ADMIN_TOKEN": first.admin_token}
        )
        for _ in range(count - 1)
    ]
    for other in others:
        other.admin_token = first.admin_token
    return [first, *others]


def _account() -> str:
    return f"acct_{uuid.uuid4().hex[:12]}"


def _create(server: ServerProcess, account: str) -> CreateKeyResponse:
    with server.client() as admin:
        return admin.create_key(account, "Production server", "live", ["links:read"])


# One Guard per replica for the test's length, as an API server keeps one: a key it allowed
# before a fault sits in its near cache across the fault.
_GUARDS: dict[str, Guard] = {}


@pytest.fixture(autouse=True)
def _close_guards() -> Iterator[None]:
    yield
    for guard in _GUARDS.values():
        guard.close()
    _GUARDS.clear()


def _decisions(
    replicas: list[ServerProcess], api_key: str, rounds: int = 3
) -> set[tuple[int, str]]:
    """Every decision the replicas give the key, `rounds` times each: asked directly with
    Authorize, and through an API server's Guard (near cache on) attached to each replica."""
    seen = set()
    for server in replicas:
        guard = _GUARDS.setdefault(server.target, Guard(server.target, timeout=2.0))
        with server.client(admin=False) as public:
            for _ in range(rounds):
                seen.add(verdict(public.authorize(api_key)))
                checked = guard.check(f"Bearer {api_key}")
                seen.add((checked.status, f"REASON_{checked.reason.upper()}"))
    return seen


class TestRedisRestoredFromAnOlderCopy:
    """Redis brought back from a snapshot taken before a revocation holds the key's active grant
    again; every replica refuses the key all the same."""

    def test_an_rdb_snapshot(self, tmp_path: Path, servers: ServerFactory) -> None:
        """create → authorize → SAVE → RevokeKey OK → Redis killed and restarted from its dump:
        401 on both replicas, and on a replica started afterwards."""
        server = _redis(tmp_path / "rdb")
        try:
            a, b = _replicas(servers, server.url)
            account = _account()
            created = _create(a, account)
            assert _decisions([b], created.secret) == {ALLOWED}
            with redis.Redis.from_url(server.url) as client:
                client.save()
            with a.client() as admin:
                admin.revoke_key(account, created.key.id)
            assert _decisions([a, b], created.secret) == {REVOKED}

            server.kill()
            server.start()

            assert Cache(server.url).status(created.key.id) == "A"  # the snapshot's grant
            late = servers.start("--redis-url", server.url)
            assert _decisions([a, b, late], created.secret) == {REVOKED}
        finally:
            server.kill()

    def test_an_append_only_file_that_lost_its_last_writes(
        self, tmp_path: Path, servers: ServerFactory
    ) -> None:
        """With AOF on, Redis restarted from a copy of its append-only file made before the
        revocation (as a crash losing the last second would leave it): 401 on both replicas."""
        workdir = tmp_path / "aof"
        server = _redis(workdir, "--appendonly", "yes", "--appendfsync", "always")
        try:
            a, b = _replicas(servers, server.url)
            account = _account()
            created = _create(a, account)
            assert _decisions([b], created.secret) == {ALLOWED}
            shutil.copytree(workdir / "appendonlydir", tmp_path / "aof-before")
            with a.client() as admin:
                admin.revoke_key(account, created.key.id)
            assert Cache(server.url).status(created.key.id) == "R"

            server.kill()
            shutil.rmtree(workdir / "appendonlydir")
            shutil.copytree(tmp_path / "aof-before", workdir / "appendonlydir")
            server.start()

            assert Cache(server.url).status(created.key.id) == "A"
            assert _decisions([a, b], created.secret) == {REVOKED}
        finally:
            server.kill()


class TestRedisFailedOverToALaggingReplica:
    def test_the_promoted_replica_missed_the_revocation(
        self, tmp_path: Path, servers: ServerFactory
    ) -> None:
        """keysvc reaches Redis through one address. The link from the primary to its replica
        stalls while the key is revoked, the primary dies, the replica is promoted and the
        address moved to it: it holds the active grant, and both keysvc replicas refuse."""
        primary = _redis(tmp_path / "primary")
        link = TcpProxy(("127.0.0.1", primary.port)).start()
        replica = _redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(link.port))
        address = TcpProxy(("127.0.0.1", primary.port)).start()
        try:
            a, b = _replicas(servers, address.url())
            account = _account()
            created = _create(a, account)
            assert _decisions([b], created.secret) == {ALLOWED}
            poll(
                lambda: Cache(replica.url).status(created.key.id) == "A",
                timeout=SETTLE,
                what="the grant to reach the Redis replica",
            )

            link.stall()  # replication is asynchronous: what follows never reaches the replica
            with a.client() as admin:
                admin.revoke_key(account, created.key.id)
            assert Cache(primary.url).status(created.key.id) == "R"
            primary.kill()
            link.cut()
            with redis.Redis.from_url(replica.url) as client:
                client.replicaof("NO", "ONE")
            address.point_to(("127.0.0.1", replica.port))

            assert Cache(replica.url).status(created.key.id) == "A"
            assert _decisions([a, b], created.secret) == {REVOKED}
        finally:
            address.close()
            link.close()
            replica.kill()
            primary.kill()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TestAReplicaCutOffFromRedis:
    # argon2id at 19 MiB and 80 passes: about a second per verification, so that a cold
    # look-up is still verifying when a revocation has come and gone.
    SLOW_ARGON2 = ("--argon2-time-cost", "80")

    def test_a_request_after_the_revocation_never_joins_an_older_look_up(
        self, servers: ServerFactory, private_redis: PrivateRedis
    ) -> None:
        """Replica B cannot reach Redis. A request starts a cold look-up on B; while it runs
        argon2 on what it read, the key is revoked through A; a request sent to B after
        RevokeKey returned is refused, not handed the older look-up's answer."""
        a = servers.start("--redis-url", private_redis.url, *self.SLOW_ARGON2)
        dead_redis = f"redis://127.0.0.1:{free_port()}/0"
        b = servers.start(
            "--redis-url", dead_redis, *self.SLOW_ARGON2,
            env={"KEYSVC_ADMIN_TOKEN": a.admin_token},
        )  # fmt: skip
        account = _account()
        created = _create(a, account)
        with (
            a.client() as admin,
            b.client(admin=False) as public_b,
            ThreadPoolExecutor(1) as pool,
        ):
            cpu_before = _cpu_seconds(b.process.pid)
            first = pool.submit(public_b.authorize, created.secret)
            # B has read the key and is running argon2 once it burns CPU.
            poll(
                lambda: _cpu_seconds(b.process.pid) - cpu_before > 0.1,
                timeout=SETTLE,
                what="replica B to verify the key",
            )
            admin.revoke_key(account, created.key.id)
            assert not first.done(), "argon2 finished before the revocation: make it slower"

            after = public_b.authorize(created.secret)

            assert verdict(after) == REVOKED
            first.result(timeout=SETTLE)  # it arrived before the revocation: either answer


class TestARevokeWhoseCallerGivesUp:
    def test_the_committed_revocation_holds_on_every_replica(
        self, servers: ServerFactory, private_redis: PrivateRedis, database: str
    ) -> None:
        """The key's row is locked for 1.5 s; RevokeKey's caller gives up after 0.5 s
        (DEADLINE_EXCEEDED); the revocation then commits. Nobody retries anything, yet the key
        is soon refused on both replicas (one had it cached), and stays refused."""
        a, b = _replicas(servers, private_redis.url)
        account = _account()
        created = _create(a, account)
        assert _decisions([b], created.secret) == {ALLOWED}

        with psycopg.connect(database) as lock:
            lock.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (created.key.id,))
            started = time.monotonic()
            request = keysvc_pb2.RevokeKeyRequest(account_id=account, id=created.key.id)
            with a.channel() as channel, pytest.raises(grpc.RpcError) as raised:
                a.stub(channel).RevokeKey(request, metadata=a.admin_metadata, timeout=0.5)
            poll(lambda: sessions_waiting_on_locks(database) > 0, timeout=SETTLE, what="the revoke")
            time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))  # the lock's length
            lock.commit()
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

        with a.client() as admin:
            poll(
                lambda: (
                    admin.get_key(account, created.key.id).status == keysvc_pb2.KEY_STATUS_REVOKED
                ),
                timeout=SETTLE,
                what="the revocation to commit",
            )
        poll(
            lambda: _decisions([a, b], created.secret, rounds=1) == {REVOKED},
            timeout=SETTLE,
            what="both replicas to refuse the key",
        )
        assert _decisions([a, b], created.secret, rounds=10) == {REVOKED}


class TestValuesWrittenIntoRedis:
    """Write access to Redis mints no key and brings no revoked key back."""

    def test_a_made_up_grant_allows_nothing(
        self, servers: ServerFactory, private_redis: PrivateRedis
    ) -> None:
        """Grants for a key nobody issued, in the old layout and in the current one with a
        made-up tag, any scopes: the key is 401 NOT_FOUND."""
        (server,) = _replicas(servers, private_redis.url, count=1)
        key_id = secrets.token_hex(6)
        made_up = with_checksum(f"ck_live_{key_id}{secrets.token_hex(16)}")
        digest = hashlib.sha256(made_up.encode()).hexdigest()
        body = {"k": key_id, "a": "acct_x", "m": "live", "s": ["links:read"], "d": digest}
        cache = Cache(private_redis.url)
        for value in (
            b"A" + json.dumps(body).encode(),
            b"3" + json.dumps({**body, "r": False, "q": 10**9}).encode() + b"0" * 32,
        ):
            cache.put_raw(key_id, value)
            assert _decisions([server], made_up) == {NOT_FOUND}

    def test_a_replayed_grant_brings_no_revoked_key_back(
        self, servers: ServerFactory, private_redis: PrivateRedis
    ) -> None:
        """The key's authentic active grant, saved before RevokeKey and written back after it:
        401 REVOKED on both replicas."""
        a, b = _replicas(servers, private_redis.url)
        account = _account()
        created = _create(a, account)
        assert _decisions([b], created.secret) == {ALLOWED}
        cache = Cache(private_redis.url)
        saved = cache.raw(created.key.id)
        with a.client() as admin:
            admin.revoke_key(account, created.key.id)
        assert saved is not None
        cache.put_raw(created.key.id, saved)
        assert _decisions([a, b], created.secret) == {REVOKED}

    def test_a_staging_keysvc_sharing_the_redis_grants_nothing(
        self,
        tmp_path: Path,
        servers: ServerFactory,
        private_redis: PrivateRedis,
        shared_postgres: SharedPostgres,
    ) -> None:
        """A staging keysvc on its own database but the same Redis and prefix caches its keys
        there; production refuses them (401 NOT_FOUND), and its own keys still work."""
        (production,) = _replicas(servers, private_redis.url, count=1)
        staging_factory = ServerFactory(
            tmp_path / "staging",
            args=[
                "--database-url", shared_postgres.fresh_database(),
                "--redis-url", private_redis.url, *SERVER_ARGS,
            ],
        )  # fmt: skip
        (tmp_path / "staging").mkdir()
        try:
            staging = staging_factory.start()
            theirs = _create(staging, _account())
            assert Cache(private_redis.url).status(theirs.key.id) == "A"
            ours = _create(production, _account())
            assert _decisions([production], theirs.secret) == {NOT_FOUND}
            assert _decisions([production], ours.secret) == {ALLOWED}
        finally:
            staging_factory.close()


class TestCancelledLookUpsLeakNoConnection:
    def test_look_ups_cancelled_while_connecting_leave_nothing_open(
        self, tmp_path: Path, servers: ServerFactory
    ) -> None:
        """Redis needs a password and sits behind a proxy that holds every byte: each Authorize
        of a key the replica has not seen (a made-up key id: it asks Redis first), given up by
        its caller after 50 ms while keysvc is still setting up its connection, leaves no
        connection open."""
        password = secrets.token_hex(8)
        server = _redis(tmp_path / "redis-auth", password=password)
        proxy = TcpProxy(("127.0.0.1", server.port)).start()
        try:
            (keysvc,) = _replicas(servers, f"redis://:{password}@127.0.0.1:{proxy.port}/0", count=1)
            proxy.stall()
            with keysvc.channel() as channel:
                stub = keysvc.stub(channel)
                for _ in range(100):
                    made_up = with_checksum(
                        f"ck_live_{secrets.token_hex(6)}{secrets.token_hex(16)}"
                    )
                    request = keysvc_pb2.AuthorizeRequest(api_key=made_up)
                    with pytest.raises(grpc.RpcError) as raised:
                        stub.Authorize(request, timeout=0.05)
                    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            poll(
                lambda: proxy.open_connections <= 2,
                timeout=SETTLE,
                what=f"keysvc to close its connections (open: {proxy.open_connections})",
            )
        finally:
            proxy.close()
            server.kill()


class TestServerLogs:
    def test_a_closed_log_pipe_does_not_kill_the_server(self, tmp_path: Path) -> None:
        """keysvc logs into a pipe whose reader has gone: it keeps serving, and exits 0 on
        SIGTERM, rather than dying of SIGPIPE."""
        process = subprocess.Popen(
            serve_command(tmp_path / "data"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_environ(),
            cwd=tmp_path,
        )
        try:
            assert process.stdout is not None
            target = None
            for line in iter(process.stdout.readline, b""):
                if b"keysvc listening on " in line:
                    target = line.rsplit(b" ", 1)[1].decode().strip()
                    break
            assert target, "keysvc exited before listening"
            process.stdout.close()  # nobody reads keysvc's log any more

            token = (tmp_path / "data" / "admin-token").read_text().strip()
            with KeyServiceClient(target, admin_token=token, timeout=10) as admin:
                for n in range(20):  # each creation logs a line
                    created = admin.create_key(_account(), f"key {n}", "test", ["links:read"])
                    assert admin.authorize(created.secret).allowed
            assert process.poll() is None, f"keysvc died with {process.returncode}"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def test_a_redis_password_in_the_url_query_is_not_logged(
        self, tmp_path: Path, servers: ServerFactory
    ) -> None:
        """A Redis URL carrying its password as ?password= works, and the log masks it."""
        password = secrets.token_hex(12)
        server = _redis(tmp_path / "redis-query", password=password)
        try:
            (keysvc,) = _replicas(
                servers, f"redis://127.0.0.1:{server.port}/0?password={password}", count=1
            )
            created = _create(keysvc, _account())
            assert (
                Cache(f"redis://:{password}@127.0.0.1:{server.port}/0").status(created.key.id)
                == "A"
            )
            log = keysvc.read_log()
            assert "password=***" in log
            assert password not in log
        finally:
            server.kill()


def _key_reads(database: str) -> int:
    """Index and sequential scans of api_keys so far, as PostgreSQL's statistics count them."""
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables"
            " WHERE relname = 'api_keys'"
        ).fetchone()
    assert row is not None
    return int(row[0])


class TestAFloodOfMadeUpKeyIds:
    def test_costs_no_read_of_keys_and_keeps_revocation_and_new_keys_working(
        self, servers: ServerFactory, private_redis: PrivateRedis, database: str
    ) -> None:
        """Thousands of well-formed keys, each with a key id of its own that nobody issued, read
        no key from the database; meanwhile RevokeKey returns within its usual bound and a
        real key's first Authorize on a replica that never saw it is allowed."""
        a, b = _replicas(servers, private_redis.url)
        account = _account()
        doomed, fresh = _create(a, account), _create(a, account)
        Cache(private_redis.url).evict(fresh.key.id)  # B must look it up cold
        flood = [
            with_checksum(f"ck_live_{secrets.token_hex(6)}{secrets.token_hex(16)}")
            for _ in range(3000)
        ]
        before = _key_reads(database)
        sent = 0
        flowing = threading.Event()

        def flood_b(made_up: list[str]) -> set[tuple[int, str]]:
            nonlocal sent
            seen = set()
            with b.client(admin=False) as public:
                for api_key in made_up:
                    seen.add(verdict(public.authorize(api_key)))
                    sent += 1
                    if sent >= 300:
                        flowing.set()
            return seen

        with ThreadPoolExecutor(3) as pool, a.client() as admin, b.client(admin=False) as public:
            floods = [pool.submit(flood_b, flood[n::3]) for n in range(3)]
            assert flowing.wait(timeout=60)
            started = time.monotonic()
            admin.revoke_key(account, doomed.key.id)
            revoke_took = time.monotonic() - started
            first_use = verdict(public.authorize(fresh.secret))
            still_flooding = not all(f.done() for f in floods)
            refused = set().union(*(f.result() for f in floods))

        assert still_flooding, "the flood ended before RevokeKey and the first use were done"
        assert refused == {NOT_FOUND}
        assert revoke_took < LEASE + 2.0
        assert first_use == ALLOWED
        # A PostgreSQL backend reports its statistics by the time it exits: stop keysvc, whose
        # connections then close, and count. The admin calls, the real key's look-up and the
        # last-used writes read a handful of keys; the flood read none (9,000 before).
        for server in (a, b):
            assert server.stop() == 0
        poll(lambda: _key_reads(database) > before, timeout=30, what="PostgreSQL's statistics")
        assert _key_reads(database) - before <= 20
