"""What the forward-auth tests put around keysvc (the echo upstream is conftest.Upstream): a
keysvc serving forward-auth, a real NGINX started from examples/nginx.conf, and a plain HTTP
client that sends exactly the headers it is given, from the loopback address it is given."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import ServerFactory, ServerProcess
from tests.services import START_TIMEOUT, _binary, answers, free_port, unavailable, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NGINX_CONF = EXAMPLES / "nginx.conf"

# The addresses examples/nginx.conf is written with (its header says so), which the tests
# replace with free loopback ports: each must appear in the file exactly once.
NGINX_LISTEN = "127.0.0.1:8080"
KEYSVC_HTTP = "127.0.0.1:8081"
API_SERVER = "127.0.0.1:8000"


# -- a client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The one value of header `name`; fails if it came more than once."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"{name} came {len(values)} times: {values}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    address: str,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    *,
    body: bytes | None = None,
    source: str | None = None,
) -> Response:
    """One HTTP/1.1 request to `address` (HOST:PORT) with exactly these headers (repeats and
    all), on a connection of its own, from the local address `source` if given (any of
    127.0.0.0/8 works on loopback: a peer other than 127.0.0.1)."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(
        host.strip("[]"),
        int(port),
        timeout=30,
        source_address=None if source is None else (source, 0),
    )
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return Response(answer.status, tuple(answer.getheaders()), answer.read())
    finally:
        connection.close()


# -- keysvc -------------------------------------------------------------------------------

# The shipped route table (GET and POST /api/v1/links, GET /api/v1/links/{link_id}, ...).
GATEWAY_ROUTES = EXAMPLES / "gateway-routes.toml"


def start_keysvc(factory: ServerFactory, *args: str) -> ServerProcess:
    """A keysvc serving forward-auth on an HTTP listener of its own (port 0), with the shipped
    route table."""
    return factory.start(
        "--http-listen", "127.0.0.1:0", "--gateway-routes", str(GATEWAY_ROUTES), *args
    )


def http_address(server: ServerProcess) -> str:
    """HOST:PORT of the server's HTTP listener."""
    assert server.http_url.startswith("http://"), server.http_url
    return server.http_url.removeprefix("http://")


# -- NGINX --------------------------------------------------------------------------------


def nginx_config(*, listen: str, keysvc: str, api: str) -> str:
    """examples/nginx.conf with its three addresses replaced (each once, outside comments),
    and nothing else changed."""
    lines = NGINX_CONF.read_text().splitlines(keepends=True)
    for written, actual in ((NGINX_LISTEN, listen), (KEYSVC_HTTP, keysvc), (API_SERVER, api)):
        found = [i for i, line in enumerate(lines) if written in line.split("#", 1)[0]]
        assert len(found) == 1, f"{NGINX_CONF} names {written} {len(found)} times, not once"
        lines[found[0]] = lines[found[0]].replace(written, actual)
    return "".join(lines)


def _worker_user() -> str | None:
    """The user the config's `user` directive names, when NGINX's master runs as root."""
    if os.geteuid() != 0:
        return None
    for line in NGINX_CONF.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["user"]:
            return words[1].rstrip(";")
    raise AssertionError(f"{NGINX_CONF} has no user directive: its workers would run as root")


class Nginx:
    """A real NGINX (`nginx -p PREFIX -c FILE -g 'daemon off;'`) with examples/nginx.conf,
    its pid file, logs and temporary files in a directory of its own, on a free loopback port.
    As root, its workers run as the config's `user` (the directory is theirs); as anyone else,
    as that user."""

    def __init__(self, *, keysvc: str, api: str) -> None:
        self.binary = _binary("nginx", "/usr/sbin/nginx")
        if (
            b"--with-http_auth_request_module"
            not in subprocess.run([self.binary, "-V"], capture_output=True, check=True).stderr
        ):
            unavailable(f"{self.binary} is built without auth_request")
        self.prefix = Path(tempfile.mkdtemp(prefix="keysvc-nginx-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = self.prefix / "nginx.conf"
        self.config.write_text(nginx_config(listen=self.address, keysvc=keysvc, api=api))
        self.error_log = self.prefix / "error.log"
        user = _worker_user()
        if user is not None:
            # Workers write the temporary files under the prefix: theirs, not root's.
            try:
                pwd.getpwnam(user)
            except KeyError:
                unavailable(f"NGINX's worker user {user} does not exist")
            shutil.chown(self.prefix, user=user)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "-p", f"{self.prefix}/", "-c", str(self.config)]
        command += ["-e", str(self.error_log), "-g", "daemon off;"]
        checked = subprocess.run([*command, "-t"], capture_output=True, check=False)
        assert checked.returncode == 0, f"nginx -t refused the config: {checked.stderr.decode()}"
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for(self._listening, timeout=START_TIMEOUT, what="nginx listening")

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            stderr = self.process.stderr.read().decode() if self.process.stderr else ""
            raise AssertionError(f"nginx exited with {self.process.returncode}: {stderr}")
        return answers(("127.0.0.1", self.port))

    def worker_uids(self) -> list[int]:
        """The real user ids of the master's children (its workers)."""
        assert self.process is not None
        uids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
            except OSError:
                continue
            if int(fields.get("PPid", "0").strip()) == self.process.pid:
                uids.append(int(fields["Uid"].split()[0]))
        return uids

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        # SIGQUIT: a graceful shutdown, its workers with it.
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
