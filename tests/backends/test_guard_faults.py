"""Revocation through API servers' near caches, under the faults that matter to them: the
Guard's session stream cut, the replica it talks to stalled, the API server's own process
paused across a revocation (docs/revocation.md, "Leases handed on").

Each test runs real `keysvc serve` processes and real Guards (keysvc_client, near cache on as
by default), and checks the promise from the API server's side: no check of a key made after
RevokeKey returned is allowed, whatever the Guard held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from keysvc_client import CreateKeyResponse, Guard, KeyServiceClient

from tests.e2e.harness import ServerFactory, ServerProcess, clean_environ, poll
from tests.proxy import TcpProxy
from tests.services import SharedPostgres, SharedRedis

pytestmark = pytest.mark.slow

# A lease long enough to watch a Guard serve from memory while cut off, short enough to wait.
LEASE = 2.0
# What a lease becomes in real time at worst (keysvc.usecases.change_log.CLOCK_DRIFT).
LEASE_AT_WORST = LEASE / (1 - 0.01)
SETTLE = 15.0
BEARER = "Bearer {}"


@pytest.fixture
def servers(
    tmp_path: Path, shared_postgres: SharedPostgres, shared_redis: SharedRedis
) -> Iterator[ServerFactory]:
    """Replicas on one fresh database and one Redis prefix, with a lease of LEASE."""
    namespace = f"{shared_redis.prefix}{uuid.uuid4().hex[:8]}:"
    factory = ServerFactory(
        tmp_path / "keysvc",
        args=[
            "--database-url", shared_postgres.fresh_database(),
            "--redis-url", shared_redis.url,
            "--redis-namespace", namespace,
            "--lease-seconds", str(LEASE),
        ],
    )  # fmt: skip
    (tmp_path / "keysvc").mkdir()
    yield factory
    factory.close()


def _account() -> str:
    return f"acct_{uuid.uuid4().hex[:12]}"


def _admin(server: ServerProcess) -> KeyServiceClient:
    # RevokeKey waits out the lease: more than the harness's default deadline allows for.
    return KeyServiceClient(server.target, admin_token=server.admin_token, timeout=60.0)


def _create(admin: KeyServiceClient, account: str) -> CreateKeyResponse:
    return admin.create_key(account, "Production server", "live", ["links:read"])


class Checks:
    """Checks of keys through one Guard, each with the time it was made."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.made: list[tuple[float, str, int]] = []

    def check(self, api_key: str) -> int:
        at = time.monotonic()
        status = self.guard.check(BEARER.format(api_key), ["links:read"]).status
        self.made.append((at, api_key, status))
        return status

    def allowed_after(self, moment: float, api_key: str) -> list[float]:
        return [
            at for at, key, status in self.made if key == api_key and at > moment and status == 200
        ]


class TestAGuardWhoseStreamIsCut:
    def test_serves_a_hot_key_only_until_its_deadline_and_a_revoked_one_not_after_revoke(
        self, servers: ServerFactory
    ) -> None:
        """The Guard reaches keysvc through a proxy that is then cut (no stream, no pushes, no
        unary either). It goes on allowing a hot key from memory, but only until the deadline
        its lease set; a key revoked meanwhile is never allowed once RevokeKey returned; and
        when the network heals, the revoked key is refused and the other allowed again."""
        server = servers.start()
        proxy = TcpProxy(("127.0.0.1", server.port)).start()
        account = _account()
        try:
            with _admin(server) as admin, Guard(f"127.0.0.1:{proxy.port}", timeout=0.5) as guard:
                hot, doomed = _create(admin, account), _create(admin, account)
                checks = Checks(guard)
                fetched = time.monotonic()
                assert checks.check(hot.secret) == 200
                assert checks.check(doomed.secret) == 200

                proxy.cut()
                # Served from memory: keysvc cannot be reached at all.
                assert checks.check(hot.secret) == 200
                admin.revoke_key(account, doomed.key.id)
                returned = time.monotonic()
                assert checks.check(doomed.secret) != 200
                # The hot key is served until its deadline, then keysvc is needed: 503.
                poll(
                    lambda: checks.check(hot.secret) == 503,
                    timeout=SETTLE,
                    what="the hot key's deadline to pass",
                    interval=0.01,
                )
                served = [at for at, key, s in checks.made if key == hot.secret and s == 200]
                assert max(served) < fetched + LEASE_AT_WORST
                assert checks.allowed_after(returned, doomed.secret) == []

                proxy.heal()
                poll(
                    lambda: checks.check(doomed.secret) == 401,
                    timeout=SETTLE,
                    what="the Guard to reach keysvc again",
                )
                assert checks.check(hot.secret) == 200
                assert checks.allowed_after(returned, doomed.secret) == []
        finally:
            proxy.close()


class TestAStalledReplica:
    def test_a_replica_stopped_across_a_revocation_hands_its_guard_nothing_stale(
        self, servers: ServerFactory
    ) -> None:
        """The Guard's replica B is stopped (SIGSTOP) while the key is revoked through A, then
        continued. Checks throughout — served from memory, timing out on B, answered by B
        after it resumes — never allow the key once RevokeKey returned."""
        a = servers.start()
        b = servers.start(env={"KEYSVC_ADMIN_TOKEN": a.admin_token})
        account = _account()
        with _admin(a) as admin, Guard(b.target, timeout=0.3) as guard:
            created = _create(admin, account)
            checks = Checks(guard)
            assert checks.check(created.secret) == 200
            stop = threading.Event()

            def keep_checking() -> None:
                while not stop.is_set():
                    checks.check(created.secret)

            checker = threading.Thread(target=keep_checking)
            checker.start()
            try:
                os.kill(b.process.pid, signal.SIGSTOP)
                try:
                    admin.revoke_key(account, created.key.id)
                    returned = time.monotonic()
                    time.sleep(0.5)  # B stays stopped a while after the revocation
                finally:
                    os.kill(b.process.pid, signal.SIGCONT)
                poll(
                    lambda: checks.made[-1][2] == 401,
                    timeout=SETTLE,
                    what="B to refuse the key once continued",
                )
            finally:
                stop.set()
                checker.join(timeout=SETTLE)
        assert checks.allowed_after(returned, created.secret) == []


class TestAGuardProcessPaused:
    def test_an_api_server_stopped_across_a_revocation_allows_nothing_when_continued(
        self, servers: ServerFactory, tmp_path: Path
    ) -> None:
        """A real API-server process checks the key in a loop through its Guard; it is stopped
        (SIGSTOP) holding the key's entry, the key is revoked, and it is continued, its network
        to keysvc held meanwhile so that no push can reach it first: no check it makes
        afterwards is allowed. Its entry's deadline passed while it was stopped."""
        server = servers.start()
        proxy = TcpProxy(("127.0.0.1", server.port)).start()
        account = _account()
        log = tmp_path / "checks.txt"

        def made() -> list[tuple[float, int]]:
            rows = [line.split() for line in log.read_text().splitlines()]
            return [(float(row[0]), int(row[1])) for row in rows if len(row) == 2]

        with _admin(server) as admin, log.open("w") as output:
            created = _create(admin, account)
            checker = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.backends.guard_checker",
                    f"127.0.0.1:{proxy.port}", created.secret,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=clean_environ(),
                cwd=Path(__file__).resolve().parents[2],
            )  # fmt: skip
            try:
                poll(
                    lambda: any(status == 200 for _, status in made()),
                    timeout=SETTLE,
                    what="the API server to allow the key",
                )
                checker.send_signal(signal.SIGSTOP)
                proxy.stall()
                admin.revoke_key(account, created.key.id)
                returned = time.monotonic()
                checker.send_signal(signal.SIGCONT)
                # Checks made after the revocation, with keysvc out of reach.
                poll(
                    lambda: len([at for at, _ in made() if at > returned]) >= 3,
                    timeout=SETTLE,
                    what="the API server to check again",
                )
                proxy.resume()
                poll(
                    lambda: any(at > returned and status == 401 for at, status in made()),
                    timeout=SETTLE,
                    what="the API server to refuse the key",
                )
            finally:
                checker.kill()
                checker.wait()
                proxy.close()
        assert [at for at, status in made() if at > returned and status == 200] == []
        assert any(status == 200 for at, status in made() if at < returned)
