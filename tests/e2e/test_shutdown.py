"""Start-up failures and graceful shutdown: SIGTERM and SIGINT finish work, flush, exit 0."""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from keysvc_client import Guard, keysvc_pb2

from .harness import (
    COMMAND_TIMEOUT,
    ServerFactory,
    ServerProcess,
    clean_environ,
    serve_command,
    verdict,
    when,
)

pytestmark = pytest.mark.slow

pb = keysvc_pb2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def last_used(server: ServerProcess, account: str, key_id: str) -> datetime | None:
    with server.client() as client:
        return when(client.get_key(account, key_id), "last_used_at")


class TestGracefulShutdown:
    def test_sigterm_flushes_last_used(self, server_factory: ServerFactory) -> None:
        """Uses not yet flushed are written on SIGTERM, and a new server on the data reads them."""
        first = server_factory.start("--last-used-flush-seconds", "3600")
        with first.client() as admin:
            created = admin.create_key("acct_flush", "n", "live", ["links:read"])
            before = datetime.now(UTC)
            assert admin.authorize(created.secret).allowed
            after = datetime.now(UTC)
            # An hour between flushes: nothing is written while the server runs.
            assert when(admin.get_key("acct_flush", created.key.id), "last_used_at") is None

        assert first.stop(signal.SIGTERM) == 0

        second = server_factory.start(data_dir=first.data_dir)
        used = last_used(second, "acct_flush", created.key.id)
        assert used is not None
        assert before - timedelta(seconds=1) <= used <= after + timedelta(seconds=1)

    def test_sigint_is_graceful_too(self, server_factory: ServerFactory) -> None:
        """SIGINT (Ctrl-C) also flushes last-used, logs the stop and exits 0."""
        first = server_factory.start("--last-used-flush-seconds", "3600")
        with first.client() as admin:
            created = admin.create_key("acct_sigint", "n", "test", ["links:read"])
            assert admin.authorize(created.secret).allowed

        assert first.stop(signal.SIGINT) == 0
        assert "keysvc stopped" in first.read_log()
        assert "Traceback" not in first.read_log()

        second = server_factory.start(data_dir=first.data_dir)
        assert last_used(second, "acct_sigint", created.key.id) is not None

    def test_health_turns_not_serving(self, server_factory: ServerFactory) -> None:
        """A health watcher sees SERVING turn NOT_SERVING when SIGTERM arrives."""
        server = server_factory.start()
        with server.channel() as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service="keysvc.v1.KeyService"), timeout=30
            )
            statuses = iter(watch)
            assert next(statuses).status == SERVING

            server.process.send_signal(signal.SIGTERM)

            assert next(statuses).status == NOT_SERVING
            # The watch is an in-flight call: end it, or shutdown waits out its grace.
            watch.cancel()

        assert server.stop() == 0

    def test_guards_sessions_do_not_hold_the_shutdown(self, server_factory: ServerFactory) -> None:
        """A Guard keeps its Session stream open for good; SIGTERM ends it rather than waiting
        out the 60 s grace period, and the Guard, cut off, never allows on a guess."""
        server = server_factory.start("--shutdown-grace-seconds", "60")
        with server.client() as admin:
            secret = admin.create_key("acct_guarded", "n", "live", ["links:read"]).secret
        with Guard(server.target, timeout=1.0) as guard:
            assert guard.check(f"Bearer {secret}").status == 200
            assert guard.stats().sessions_up == 1

            assert server.stop(timeout=20) == 0

            assert guard.check("Bearer ck_live_unknown").status in (401, 503)

    def test_in_flight_calls_finish(self, server_factory: ServerFactory) -> None:
        """A CreateKey still hashing when SIGTERM arrives completes, and its key is kept."""
        # Costly argon2 keeps CreateKey busy for a while after the server received it.
        server = server_factory.start("--argon2-time-cost", "60")
        with server.channel() as channel:
            stub = server.stub(channel)
            request = pb.CreateKeyRequest(
                account_id="acct_inflight", name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
            )
            pending = stub.CreateKey.future(request, metadata=server.admin_metadata, timeout=30)
            # Calls on one connection arrive in order: once this one is answered,
            # the server has taken the CreateKey sent before it.
            stub.ListScopes(pb.ListScopesRequest(), metadata=server.admin_metadata, timeout=10)
            assert not pending.done()

            server.process.send_signal(signal.SIGTERM)
            created = pending.result()

        assert server.stop() == 0
        assert "shutting down" in server.read_log()
        restarted = server_factory.start(data_dir=server.data_dir)
        with restarted.client() as admin:
            assert admin.get_key("acct_inflight", created.key.id).id == created.key.id
            assert verdict(admin.authorize(created.secret)) == (200, "REASON_ALLOWED")

    def test_keys_and_revocations_survive_a_restart(self, server_factory: ServerFactory) -> None:
        """After a restart an active key is still allowed and a revoked one still refused."""
        first = server_factory.start()
        with first.client() as admin:
            kept = admin.create_key("acct_restart", "kept", "live", ["links:read"])
            gone = admin.create_key("acct_restart", "gone", "live", ["links:read"])
            admin.revoke_key("acct_restart", gone.key.id)
        assert first.stop() == 0

        second = server_factory.start(data_dir=first.data_dir)
        with second.client() as client:
            assert verdict(client.authorize(kept.secret)) == (200, "REASON_ALLOWED")
            assert verdict(client.authorize(gone.secret)) == (401, "REASON_REVOKED")
            assert [k.id for k in client.iter_keys("acct_restart")] == [gone.key.id, kept.key.id]


class TestStartupFailure:
    def test_port_in_use(self, server_factory: ServerFactory, tmp_path: Path) -> None:
        """`keysvc serve` on a port another server holds exits non-zero and says why."""
        holder = server_factory.start()
        address = f"127.0.0.1:{holder.port}"

        result = subprocess.run(
            serve_command(tmp_path / "data", listen=address),
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode != 0
        assert f"keysvc: cannot listen on {address}" in result.stderr
        assert "Traceback" not in result.stderr
        # The first server is unharmed.
        assert holder.health() == SERVING

    def test_bad_setting_in_the_environment(self, tmp_path: Path) -> None:
        """A malformed KEYSVC_* number stops start-up with a message naming the variable."""
        result = subprocess.run(
            serve_command(tmp_path / "data"),
            env=clean_environ({"KEYSVC_MAX_MESSAGE_BYTES": "lots"}),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode != 0
        assert "$KEYSVC_MAX_MESSAGE_BYTES" in result.stderr
        assert "Traceback" not in result.stderr

    def test_unreadable_admin_token_file(self, tmp_path: Path) -> None:
        """A world-readable admin-token file stops start-up with the chmod to run."""
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        token_file = data_dir / "admin-token"
        token_file.write_text("ksadm_shared\n")
        token_file.chmod(0o644)

        result = subprocess.run(
            serve_command(data_dir),
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode == 1
        assert f"chmod 600 {token_file}" in result.stderr
        assert "ksadm_shared" not in result.stderr
