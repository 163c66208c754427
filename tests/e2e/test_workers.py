"""`keysvc serve --workers N`: one port, N worker processes (each a full replica) taking its
connections, started, stopped and restarted by a supervisor.

Which worker took a connection is read from the kernel, not from keysvc: the worker whose
/proc/PID/fd holds the connection's accepted socket (/proc/net/tcp). Workers are found by their
command line (`--worker-of SUPERVISOR_PID`), whoever their parent is by then. Storage matters
only where workers coordinate (a key created through one, a revocation through one); the
rest runs on the embedded default.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from keysvc_client import keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

from keysvc.core.hashing import Argon2Parameters
from keysvc.runtime import config
from keysvc.runtime.supervisor import worker_environment
from tests.github_alerts import GitHubSigner, keys_document
from tests.services import answers, free_port

from .harness import (
    COMMAND_TIMEOUT,
    START_TIMEOUT,
    ServerFactory,
    ServerProcess,
    clean_environ,
    poll,
    serve_command,
    verdict,
)
from .test_metrics import scrape, value

pb = keysvc_pb2
T = TypeVar("T")
ALLOWED, REVOKED = (200, "REASON_ALLOWED"), (401, "REASON_REVOKED")
# Enough fresh connections that two workers each take one unless the kernel never spreads
# them (the chance that 64 land on one of two workers by luck is 2**-63).
TRIES = 64


# -- what the kernel says ---------------------------------------------------------------------


def workers_of(supervisor: int) -> set[int]:
    """The live processes started as workers of `supervisor`."""
    marker = f"\0--worker-of\0{supervisor}\0".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in command and state != "Z":
            found.add(int(entry.name))
    return found


def established(port: int) -> set[int]:
    """The inodes of the established TCP sockets whose local port is `port`: the accepted
    side of connections to it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(int(inode))
    return inodes


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    except OSError:  # the process has gone, or one of its descriptors has
        pass
    return inodes


def held(pids: set[int], port: int) -> dict[int, set[int]]:
    """For each of `pids`, the connections to `port` it holds."""
    accepted = established(port)
    return {pid: sockets_of(pid) & accepted for pid in pids}


# -- the workers, from outside ----------------------------------------------------------------


def authorize(channel: grpc.Channel, secret: str) -> tuple[int, str]:
    request = pb.AuthorizeRequest(api_key=secret, required_scopes=["links:read"])
    return verdict(keysvc_pb2_grpc.KeyServiceStub(channel).Authorize(request, timeout=10))


def health_check(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]


class Workers:
    """The workers of one `keysvc serve --workers N`: their pids, and which of them takes each
    new connection."""

    def __init__(self, server: ServerProcess, stack: ExitStack) -> None:
        self.server = server
        self._stack = stack

    @property
    def supervisor(self) -> int:
        return self.server.process.pid

    def pids(self) -> set[int]:
        return workers_of(self.supervisor)

    def takers(self, port: int, connect: Callable[[], object]) -> set[int]:
        """New connections to `port` (each opened and answered by `connect`) until every worker
        has taken one, or TRIES of them: the pids of the workers that took one."""
        pids = self.pids()
        taken: set[int] = set()
        for _ in range(TRIES):
            taken.add(self.taken_by(port, connect)[1])
            if taken == pids:
                break
        return taken

    def taken_by(self, port: int, connect: Callable[[], T]) -> tuple[T, int]:
        """What `connect` returns (having opened a connection to `port` and been answered on
        it), and the pid of the worker that holds that connection."""
        before = held(self.pids(), port)
        connection = connect()
        after = held(self.pids() | set(before), port)
        takers = {pid for pid, inodes in after.items() if inodes - before.get(pid, set())}
        assert len(takers) == 1, f"connection held by {takers}, workers {set(after)}"
        return connection, takers.pop()

    def channel(self) -> tuple[grpc.Channel, int]:
        """A channel on a connection of its own (not one shared with earlier channels), answered
        once, and the pid of the worker that took it."""

        def connect() -> grpc.Channel:
            channel = grpc.insecure_channel(
                self.server.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            self._stack.callback(channel.close)
            health_check(channel)
            return channel

        return self.taken_by(self.server.port, connect)

    def one_channel_each(self) -> dict[int, grpc.Channel]:
        """New channels until every worker has taken one: one for each worker, by pid."""
        pids = self.pids()
        taken: dict[int, grpc.Channel] = {}
        for _ in range(TRIES):
            channel, pid = self.channel()
            taken.setdefault(pid, channel)
            if set(taken) == pids:
                return taken
        raise AssertionError(f"{TRIES} new connections all went to {set(taken)} of {pids}")


@pytest.fixture
def embedded_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Servers on the embedded default, for what does not depend on storage."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def start_workers(factory: ServerFactory, stack: ExitStack, *args: str) -> Workers:
    server = factory.start("--workers", "2", *args)
    workers = Workers(server, stack)

    def no_orphans() -> None:
        # Should a test fail with its supervisor gone, none of its workers outlives the test.
        if not server.running:
            for pid in workers.pids():
                os.kill(pid, signal.SIGKILL)

    stack.callback(no_orphans)
    # The address file is written once every worker serves.
    assert len(workers.pids()) == 2
    return workers


def run_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`keysvc serve ARGS` expected to fail at start: its exit code and standard error, once
    it has exited and no worker of it is left."""
    process = subprocess.Popen(
        serve_command(tmp_path / "data", *args),
        env=clean_environ(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert workers_of(process.pid) == set(), stderr
    return process.returncode, stderr


# -- the specifications -----------------------------------------------------------------------

pytestmark = pytest.mark.slow


class TestOnePortManyWorkers:
    def test_new_connections_are_spread_over_every_worker(
        self, embedded_factory: ServerFactory, stack: ExitStack
    ) -> None:
        """With --workers 2 on port 0, both workers serve the one port the address file names:
        new connections land on each, and none on the supervisor."""
        workers = start_workers(embedded_factory, stack)
        assert workers.supervisor not in workers.pids()
        assert set(workers.one_channel_each()) == workers.pids()

    def test_http_and_health_listeners_are_shared_too(
        self, embedded_factory: ServerFactory, stack: ExitStack, tmp_path: Path
    ) -> None:
        """--http-listen (port 0) and --health-listen are each one port served by every worker;
        the address file holds the lines a single process writes: gRPC, then HTTP."""
        keys = tmp_path / "github-keys.json"
        keys.write_text(keys_document(GitHubSigner.new()))
        health_port = free_port()
        workers = start_workers(
            embedded_factory,
            stack,
            *("--http-listen", "127.0.0.1:0", "--github-keys-file", str(keys)),
            *("--health-listen", f"127.0.0.1:{health_port}"),
        )
        lines = workers.server.address_path.read_text().splitlines()
        assert lines == [workers.server.target, workers.server.http_url]
        http_port = int(workers.server.http_url.rsplit(":", 1)[1])
        assert http_port != workers.server.port

        def http_connection() -> http.client.HTTPConnection:
            connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            stack.callback(connection.close)
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            assert response.status == 404  # served (by Starlette), and the connection kept
            return connection

        def health_channel() -> grpc.Channel:
            channel = grpc.insecure_channel(
                f"127.0.0.1:{health_port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            stack.callback(channel.close)
            health_check(channel)
            return channel

        assert workers.takers(http_port, http_connection) == workers.pids()
        assert workers.takers(health_port, health_channel) == workers.pids()


class TestWorkersAreReplicas:
    def test_a_key_created_through_one_worker_is_allowed_by_every_worker(
        self, server_factory: ServerFactory, stack: ExitStack, account: str
    ) -> None:
        """CreateKey answered by one worker; Authorize through each worker allows the key."""
        workers = start_workers(server_factory, stack)
        channels = workers.one_channel_each()
        creator = next(iter(channels.values()))
        created = keysvc_pb2_grpc.KeyServiceStub(creator).CreateKey(
            pb.CreateKeyRequest(
                account_id=account, name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
            ),
            metadata=workers.server.admin_metadata,
            timeout=10,
        )
        for pid, channel in channels.items():
            assert authorize(channel, created.secret) == ALLOWED, pid

    def test_a_revocation_holds_on_the_next_request_to_every_worker(
        self, server_factory: ServerFactory, stack: ExitStack, account: str
    ) -> None:
        """Every worker has allowed (and cached) a key; once RevokeKey through one worker
        returns, the very next Authorize refuses it, through fresh connections to every worker
        and through the connections that allowed it."""
        workers = start_workers(server_factory, stack)
        channels = workers.one_channel_each()
        revoker = next(iter(channels.values()))
        admin = keysvc_pb2_grpc.KeyServiceStub(revoker)
        metadata = workers.server.admin_metadata
        created = admin.CreateKey(
            pb.CreateKeyRequest(
                account_id=account, name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
            ),
            metadata=metadata,
            timeout=10,
        )
        for channel in channels.values():
            assert authorize(channel, created.secret) == ALLOWED

        admin.RevokeKey(
            pb.RevokeKeyRequest(account_id=account, id=created.key.id),
            metadata=metadata,
            timeout=10,
        )

        refused_by: set[int] = set()
        for _ in range(TRIES):
            channel, pid = workers.channel()
            assert authorize(channel, created.secret) == REVOKED, pid
            refused_by.add(pid)
            if refused_by == workers.pids():
                break
        assert refused_by == workers.pids()
        for pid, channel in channels.items():
            assert authorize(channel, created.secret) == REVOKED, pid


class TestShutdown:
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    def test_a_signal_to_the_supervisor_stops_every_worker(
        self, embedded_factory: ServerFactory, stack: ExitStack, sig: signal.Signals
    ) -> None:
        """SIGTERM or SIGINT to the supervisor: every worker shuts down gracefully, the
        supervisor exits 0, and no process of it is left."""
        workers = start_workers(embedded_factory, stack)
        pids = workers.pids()

        assert workers.server.stop(sig) == 0

        assert workers.pids() == set()
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        log = workers.server.read_log()
        for pid in pids:
            assert re.search(
                rf"\[worker \d pid {pid}\] keysvc\.runtime\.server: keysvc stopped", log
            )
        assert "Traceback" not in log
        assert not answers(("127.0.0.1", workers.server.port))

    def test_workers_do_not_outlive_a_killed_supervisor(
        self, embedded_factory: ServerFactory, stack: ExitStack
    ) -> None:
        """SIGKILL to the supervisor (nothing of it runs to stop them): the workers stop."""
        workers = start_workers(embedded_factory, stack)

        workers.server.process.kill()
        workers.server.process.wait()

        poll(lambda: not workers.pids(), timeout=START_TIMEOUT, what="the workers to exit")
        assert not answers(("127.0.0.1", workers.server.port))


class TestRestart:
    def test_a_killed_worker_is_restarted_while_the_others_serve(
        self, embedded_factory: ServerFactory, stack: ExitStack
    ) -> None:
        """A worker killed with SIGKILL: the port keeps serving (on the other worker), the
        supervisor logs the death and starts a new worker, which serves too."""
        workers = start_workers(embedded_factory, stack)
        with workers.server.client() as admin:
            created = admin.create_key("acct_restart", "n", "live", ["links:read"])
        victim, survivor = sorted(workers.pids())

        os.kill(victim, signal.SIGKILL)
        poll(lambda: victim not in workers.pids(), timeout=10, what="the killed worker to go")

        for _ in range(8):
            channel, pid = workers.channel()
            assert authorize(channel, created.secret) == ALLOWED
            assert pid != victim
        replacement = poll(
            lambda: next(iter(workers.pids() - {survivor}), None),
            timeout=START_TIMEOUT,
            what="a new worker",
        )
        assert replacement != victim
        log = workers.server.read_log()
        assert re.search(
            rf"worker \d \(pid {victim}\) exited \(killed by SIGKILL\); starting it again", log
        )

        def replacement_answers() -> bool:
            channel, pid = workers.channel()
            assert authorize(channel, created.secret) == ALLOWED
            return pid == replacement

        poll(replacement_answers, timeout=START_TIMEOUT, what="the new worker to take a connection")
        assert workers.pids() == {survivor, replacement}


class TestStartupFailure:
    def test_a_bad_setting_fails_before_any_worker_starts(self, tmp_path: Path) -> None:
        """A setting the supervisor can judge: one clear error, exit 1, no worker started."""
        code, stderr = run_serve(tmp_path, "--workers", "2", "--health-listen", "0.0.0.0:0")
        assert code == 1
        assert "keysvc: --health-listen 0.0.0.0:0: the health listener is plaintext" in stderr
        assert "worker 1 started" not in stderr

    def test_a_port_already_served_is_refused(
        self, embedded_factory: ServerFactory, tmp_path: Path
    ) -> None:
        """Workers never join a port another server listens on: a single keysvc there, and
        --workers on its port fails at once, no worker started; the single one keeps it."""
        single = embedded_factory.start()

        code, stderr = run_serve(tmp_path, "--workers", "2", "--listen", single.target)

        assert code == 1
        assert f"keysvc: cannot listen on {single.target} (--listen): Address already in use" in (
            stderr
        )
        assert "worker 1 started" not in stderr
        assert single.health() == health_pb2.HealthCheckResponse.SERVING

    def test_a_worker_that_cannot_start_fails_the_whole(self, tmp_path: Path) -> None:
        """A setting only a worker finds wrong (a certificate and a key that are no pair, which
        only binding the listener tells): the supervisor stops the others and exits 1, the
        worker's error shown; no worker is left and nothing was announced."""
        ca = trustme.CA()
        certificate = tmp_path / "server.pem"
        certificate.write_bytes(ca.issue_cert("127.0.0.1").cert_chain_pems[0].bytes())
        other_key = tmp_path / "other-key.pem"
        other_key.write_bytes(ca.issue_cert("127.0.0.1").private_key_pem.bytes())
        address_file = tmp_path / "address"

        code, stderr = run_serve(
            tmp_path,
            *("--workers", "2", "--tls-cert", str(certificate), "--tls-key", str(other_key)),
            *("--address-file", str(address_file)),
        )

        assert code == 1
        assert "(are --tls-cert and --tls-key a matching pair?)" in stderr
        assert re.search(r"keysvc: worker \d could not start \(exit code 1\)", stderr)
        assert not address_file.exists()

    def test_the_number_of_workers_is_checked(self, tmp_path: Path) -> None:
        """--workers and $KEYSVC_WORKERS take a whole number, at least 1."""
        code, stderr = run_serve(tmp_path, "--workers", "0")
        assert code == 2 and "--workers: must be at least 1, got '0'" in stderr
        code, stderr = run_serve(tmp_path, env={"KEYSVC_WORKERS": "two"})
        assert code == 1 and "keysvc: $KEYSVC_WORKERS: expected a whole number" in stderr


class TestWorkerSettings:
    def test_a_worker_reads_the_supervisors_settings_whole(self) -> None:
        """The environment a worker starts with gives back the supervisor's settings, every
        option set or cleared, whatever the supervisor's own environment held."""
        parser = argparse.ArgumentParser()
        config.add_options(parser, config.SERVE_OPTIONS)
        settings = config.settings_from(
            parser.parse_args(
                [
                    *("--listen", "127.0.0.1:4321", "--workers", "3", "--insecure"),
                    *("--data-dir", "/var/lib/keysvc", "--lease-seconds", "0.3"),
                    *("--redis-url", "redis://:secret@cache:6379/0", "--log-level", "debug"),
                    *("--argon2-time-cost", "3", "--health-listen", "127.0.0.1:5432"),
                ]
            ),
            {"KEYSVC_ADMIN_TOKEN": "ksadm_x", "KEYSVC_REDIS_NAMESPACE": "other:"},
        )
        assert settings.argon2 == Argon2Parameters(time_cost=3)
        # Variables the supervisor's settings do not use are cleared, not inherited.
        inherited = {"KEYSVC_CALLERS": "/etc/callers.toml", "KEYSVC_REDIS_PREFIX": "old:"}

        environment = worker_environment(settings, {"PATH": "/bin", **inherited})

        assert config.settings_from(parser.parse_args([]), environment) == settings
        assert environment["PATH"] == "/bin"
        assert "KEYSVC_CALLERS" not in environment


class TestMetricsOverWorkers:
    def test_the_supervisor_serves_the_sum_of_its_workers_series(
        self, embedded_factory: ServerFactory, stack: ExitStack, account: str
    ) -> None:
        """With --metrics-listen, each worker counts and the supervisor serves the sum: the
        decisions made through every worker add up on its one /metrics."""
        workers = start_workers(embedded_factory, stack, "--metrics-listen", "127.0.0.1:0")
        assert workers.server.metrics_url.endswith("/metrics")
        channels = workers.one_channel_each()
        creator = next(iter(channels.values()))
        created = keysvc_pb2_grpc.KeyServiceStub(creator).CreateKey(
            pb.CreateKeyRequest(
                account_id=account, name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
            ),
            metadata=workers.server.admin_metadata,
            timeout=10,
        )
        for channel in channels.values():
            for _ in range(3):
                assert authorize(channel, created.secret) == ALLOWED

        samples = scrape(workers.server.metrics_url)

        decisions = value(
            samples, "keysvc_authorize_decisions_total", reason="allowed", transport="unary"
        )
        assert decisions == 3 * len(channels) == 6
