"""Sample API servers run as their own processes (uvicorn, werkzeug), and a client for them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import clean_environ, poll

from .conftest import TIMEOUT, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Any  # case-insensitive, as urllib gives them
    body: Any

    @property
    def reason(self) -> str | None:
        """The `reason` of a keysvc refusal, None for any other answer."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("reason") if isinstance(error, dict) else None


@dataclass
class SampleServer:
    """A sample app served on loopback by its own process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def request(
        self,
        method: str,
        path: str,
        authorization: str | None = None,
        *,
        json_body: Any = None,
        data: bytes | None = None,
    ) -> Reply:
        if json_body is not None:
            data = json.dumps(json_body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method, data=data
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if authorization is not None:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, response.headers, _json(response.read()))
        except urllib.error.HTTPError as err:
            with err:
                return Reply(err.code, err.headers, _json(err.read()))

    def ran(self, path: str = "/_ran") -> list[str]:
        """The handlers (and dependency side effects) that have run, in order."""
        ran: list[str] = self.request("GET", path).body
        return ran

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _env(keysvc_target: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        "KEYSVC_TARGET": keysvc_target,
        "KEYSVC_TIMEOUT_SECONDS": str(TIMEOUT),
        "SAMPLE_APPS_LOG": "1",
        **(extra or {}),
    }


def _start(
    command: list[str],
    port: int,
    log_path: Path,
    env: Mapping[str, str],
    listening: socket.socket | None = None,
) -> SampleServer:
    """Starts `command`, handing it the `listening` socket if given, and waits for an answer."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=clean_environ(dict(env)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=() if listening is None else (listening.fileno(),),
        )
    if listening is not None:
        listening.close()  # the server's own copy is the one that accepts
    served = SampleServer(process, port, log_path)

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"the sample server exited with {process.returncode}: {served.log()}"
            )
        try:
            return served.request("GET", "/_ran").status == 200
        except OSError:
            return False

    try:
        poll(answering, timeout=30, what=f"the sample server on port {port}")
    except BaseException:
        served.stop()
        raise
    return served


# A port found free can be taken by another process before the server binds it: the start is
# then retried on another.
PORT_ATTEMPTS = 3


@contextmanager
def asgi(
    factory: str,
    keysvc_target: str,
    directory: Path,
    *uvicorn_args: str,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
) -> Iterator[SampleServer]:
    """`uvicorn --factory tests.integrations.sample_apps:<factory>` on a free loopback port
    (`host` "::" listens on every address, IPv4 and IPv6)."""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        listening = None
        if host == "::":
            # uvicorn (asyncio) binds "::" to IPv6 only: it is handed a dual-stack socket.
            listening = _dual_stack(port)
            where = ["--fd", str(listening.fileno())]
        else:
            where = ["--host", host, "--port", str(port)]
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"tests.integrations.sample_apps:{factory}",
            *where,
            "--lifespan",
            "on",  # a table that does not match the app stops the start, loudly
            "--no-access-log",
            *uvicorn_args,
        ]
        log_path = directory / f"{factory}-{port}.log"
        try:
            served = _start(command, port, log_path, _env(keysvc_target, env), listening)
        except AssertionError as err:
            # The free port was taken by another process between the check and the bind.
            if "in use" not in str(err) or attempt == PORT_ATTEMPTS - 1:
                raise
            continue
        break
    try:
        yield served
    finally:
        served.stop()


@contextmanager
def wsgi(
    app: str,
    keysvc_target: str,
    directory: Path,
    *,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
) -> Iterator[SampleServer]:
    """`python -m tests.integrations.sample_apps <app>`: werkzeug, on a free loopback port."""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        command = [sys.executable, "-m", "tests.integrations.sample_apps", app]
        command += ["--host", host, "--port", str(port)]
        log_path = directory / f"{app}-{port}.log"
        try:
            served = _start(command, port, log_path, _env(keysvc_target, env))
        except AssertionError as err:
            # The free port was taken by another process between the check and the bind.
            if "in use" not in str(err) or attempt == PORT_ATTEMPTS - 1:
                raise
            continue
        break
    try:
        yield served
    finally:
        served.stop()


def _dual_stack(port: int) -> socket.socket:
    """A socket listening on `port` of every address, IPv4 (as IPv4-mapped IPv6) and IPv6."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock
