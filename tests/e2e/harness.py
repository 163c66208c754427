"""Runs real `keysvc serve` processes for the end-to-end tests.

A server binds port 0, logs to a file, writes the address it listens on to its address
file (`keysvc serve --address-file`), and counts as started once it has, and answers health
checks SERVING. Stopping is SIGTERM, and anything but exit
code 0 is a failure: graceful shutdown is part of what the tests check.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from keysvc_client import AuthorizeResponse, CreateKeyResponse, KeyServiceClient, keysvc_pb2
from keysvc_client import aio as keysvc_aio
from keysvc_client.v1 import keysvc_pb2_grpc

# The tests run from the venv that has keysvc installed: its tools sit next to python.
PYTHON = sys.executable
BIN = Path(sys.executable).parent
KEYSVC = BIN / "keysvc"
GRPCURL = BIN / "grpcurl"

SERVICE = "keysvc.v1.KeyService"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0

# Every keysvc key, as the scanner regex in keysvc/keys.py documents it.
KEY_PATTERN = re.compile(r"\bck_(?:live|test)_[0-9A-Za-z]{50}\b")

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

T = TypeVar("T")

# The new_key fixture: new_key(mode="live", scopes=(...), name=..., account_id=...).
NewKey = Callable[..., CreateKeyResponse]


# The lease of every server the harness starts: short, so that RevokeKey's wait is short; the
# protocol is the same.
LEASE_SECONDS = 0.3
# How long after keysvc's last answer a Guard's near cache may still allow a hot key: the lease,
# and the margin a test's own timing needs.
NEAR_CACHE_GRACE = LEASE_SECONDS + 0.7


def poll(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy result of `check`, retried until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError `call` raises; fails the test if the call succeeds."""
    try:
        call()
    except grpc.RpcError as err:
        return err
    raise AssertionError("expected the call to fail with an RPC error, but it succeeded")


def with_checksum(unsigned: str) -> str:
    """`unsigned` (mode prefix, key id, secret) completed with its six-digit checksum.

    Written from the key format keysvc/keys.py documents (CRC32 of everything before
    it, in base62) rather than imported, so forged keys follow the published rules.
    """
    value = zlib.crc32(unsigned.encode("utf-8"))
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, len(BASE62))
        digits = BASE62[digit] + digits
    return unsigned + digits


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without KEYSVC_* settings, plus `extra`.

    A developer's own KEYSVC_ADMIN_TOKEN or KEYSVC_TARGET must not leak into a test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSVC_")}
    env.update(extra or {})
    return env


def serve_command(data_dir: Path, *args: str, listen: str = "127.0.0.1:0") -> list[str]:
    return [
        PYTHON,
        "-m",
        "keysvc",
        "serve",
        "--listen",
        listen,
        "--data-dir",
        str(data_dir),
        "--last-used-flush-seconds",
        "0.2",
        "--lease-seconds",
        str(LEASE_SECONDS),
        # Later flags win, so callers can override the ones above.
        *args,
    ]


def verdict(decision: AuthorizeResponse) -> tuple[int, str]:
    """An Authorize decision as (http_status, reason name), which reads well in a failure."""
    return decision.http_status, keysvc_pb2.Reason.Name(decision.reason)


def when(message: Message, field: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime, or None when it is unset."""
    if not message.HasField(field):
        return None
    stamp: Any = getattr(message, field)
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


class ServerProcess:
    """One running `keysvc serve` and the ways the tests reach it."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        data_dir: Path,
        log_path: Path,
        address_path: Path,
        env: Mapping[str, str],
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.process = process
        self.data_dir = data_dir
        self.log_path = log_path
        self.address_path = address_path
        self.env = dict(env)
        # TLS credentials of the harness's own channels (readiness, client(), channel()).
        self.credentials = credentials
        self.target = ""
        self.admin_token = ""
        # With --http-listen: the HTTP listener's http[s]://HOST:PORT (the address file's
        # second line); "" without.
        self.http_url = ""
        # With --metrics-listen: http://HOST:PORT/metrics (the address file's line after
        # those); "" without.
        self.metrics_url = ""

    # -- state --------------------------------------------------------------------------

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),)

    def health(self, service: str = "") -> int:
        """The health status the server reports for `service` ("" is the whole server)."""
        with self.channel() as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        status: int = response.status
        return status

    # -- clients ------------------------------------------------------------------------

    def client(self, *, admin: bool = True, token: str | None = None) -> KeyServiceClient:
        """A blocking client; with the server's admin token unless `token` or admin=False."""
        chosen = token if token is not None else (self.admin_token if admin else None)
        return KeyServiceClient(
            self.target, admin_token=chosen, timeout=10.0, credentials=self.credentials
        )

    def async_client(
        self, *, admin: bool = True, token: str | None = None
    ) -> keysvc_aio.KeyServiceClient:
        """An asyncio client; create it inside the event loop that uses it."""
        chosen = token if token is not None else (self.admin_token if admin else None)
        return keysvc_aio.KeyServiceClient(
            self.target, admin_token=chosen, timeout=10.0, credentials=self.credentials
        )

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.credentials)

    def stub(self, channel: grpc.Channel) -> keysvc_pb2_grpc.KeyServiceStub:
        """The generated stub, for requests the typed client refuses to build."""
        return keysvc_pb2_grpc.KeyServiceStub(channel)

    # -- command-line tools -------------------------------------------------------------

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs the `keysvc` command against this server, as an operator on its host would."""
        environ = clean_environ(
            {"KEYSVC_TARGET": self.target, "KEYSVC_DATA_DIR": str(self.data_dir), **(env or {})}
        )
        return subprocess.run(
            [str(KEYSVC), *args],
            env=environ,
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def grpcurl(
        self, *args: str, token: str | None = None, data: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs `grpcurl -plaintext [-H ...] [-d ...] TARGET args...` against this server."""
        command = [str(GRPCURL), "-plaintext", "-emit-defaults"]
        if token is not None:
            command += ["-H", f"authorization: Bearer {token}"]
        if data is not None:
            command += ["-d", data]
        command += [self.target, *args]
        return subprocess.run(
            command,
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `sig` and returns the exit code; kills the process if it outlives `timeout`."""
        if self.running:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"keysvc did not exit within {timeout}s of {sig.name}; log:\n{self.read_log()}"
            ) from None

    def wait_until_ready(self) -> None:
        address, *urls = poll(self._bound_address, timeout=START_TIMEOUT, what="the address file")
        host, _, port = address.rpartition(":")
        # A server bound to every interface is reached over loopback only.
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        self.target = f"{host}:{port}"
        self.http_url = next((url for url in urls if not url.endswith("/metrics")), "")
        self.metrics_url = next((url for url in urls if url.endswith("/metrics")), "")
        poll(self._serving, timeout=START_TIMEOUT, what="health SERVING")
        token = self.env.get("KEYSVC_ADMIN_TOKEN")
        token_file = self.data_dir / "admin-token"
        # No file when the callers file names the admins: then admin_token stays "".
        if not token and token_file.exists():
            token = token_file.read_text().strip()
        self.admin_token = token or ""

    def _bound_address(self) -> list[str] | None:
        """The address file's lines: the gRPC address, then the HTTP listener's URL and the
        metrics' URL, each if any."""
        if self.address_path.exists():
            return self.address_path.read_text().split()
        if not self.running:
            raise AssertionError(
                f"keysvc exited with {self.process.returncode} before listening;"
                f" log:\n{self.read_log()}"
            )
        return None

    def _serving(self) -> bool:
        try:
            return self.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


class ServerFactory:
    """Starts servers under `base`; close() stops those still running and checks they exit 0.

    `args` and `env` go to every server it starts (a database or Redis URL, say);
    each start() can add more.
    """

    def __init__(
        self, base: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self._base = base
        self._args = tuple(args)
        self._env = dict(env or {})
        self._servers: list[ServerProcess] = []

    def start(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> ServerProcess:
        """A healthy server started with `keysvc serve` plus `args`, and `env` on top of ours.

        Reusing `data_dir` restarts on an earlier server's database and admin token.
        A TLS server needs `credentials` the harness can connect with (mutual TLS: with a
        client certificate), for the readiness check and for client() and channel().
        """
        number = len(self._servers) + 1
        data_dir = data_dir or self._base / f"server-{number}" / "data"
        log_path = self._base / f"server-{number}.log"
        address_path = self._base / f"server-{number}.address"
        environ = clean_environ({**self._env, **(env or {})})
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*serve_command(data_dir, *self._args, *args), "--address-file", str(address_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=self._base,
            )
        server = ServerProcess(
            process,
            data_dir=data_dir,
            log_path=log_path,
            address_path=address_path,
            env=environ,
            credentials=credentials,
        )
        self._servers.append(server)
        server.wait_until_ready()
        return server

    @property
    def log_paths(self) -> list[Path]:
        return [server.log_path for server in self._servers]

    def close(self) -> None:
        failures = []
        for server in self._servers:
            if not server.running:
                continue
            try:
                code = server.stop()
            except AssertionError as err:
                failures.append(str(err))
                continue
            if code != 0:
                failures.append(f"keysvc exited with {code} on SIGTERM; log:\n{server.read_log()}")
        if failures:
            raise AssertionError("\n\n".join(failures))
