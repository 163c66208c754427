"""The example API server (`make example`) runs as its own process against a running keysvc
and answers real HTTP requests over loopback, as the README's walk-through shows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import KEY_PATTERN, ServerProcess, clean_environ, poll

from .conftest import Keys, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Any  # case-insensitive, as urllib gives them
    body: Any


@dataclass
class Example:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def request(self, method: str, path: str, key: str | None = None, body: Any = None) -> Reply:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Reply(response.status, response.headers, json.load(response))
        except urllib.error.HTTPError as err:
            with err:
                return Reply(err.code, err.headers, json.load(err))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[Callable[..., Example]]:
    """run_example(keysvc_target, *args, env=...): `python -m examples.api_server` on a free
    port, started and answering /healthz."""
    started: list[Example] = []

    def run(keysvc_target: str, *args: str, env: Mapping[str, str] | None = None) -> Example:
        # On --port when given, else on PORT.
        port = int(args[args.index("--port") + 1]) if "--port" in args else free_port()
        log_path = tmp_path / f"example-{port}.log"
        environ = clean_environ({"KEYSVC_TARGET": keysvc_target, "PORT": str(port), **(env or {})})
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "examples.api_server", *args],
                cwd=ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        example = Example(process, port, log_path)
        started.append(example)

        def healthy() -> bool:
            if process.poll() is not None:
                code = process.returncode
                raise AssertionError(f"the example exited with {code}: {example.log()}")
            try:
                return example.request("GET", "/healthz").status == 200
            except OSError:
                return False

        poll(healthy, timeout=30, what="the example's /healthz")
        return example

    yield run
    for example in started:
        if example.process.poll() is None:
            example.process.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then ends by the signal it was sent.
            assert example.process.wait(20) in (0, -signal.SIGTERM), example.log()


# The first sight of a key costs keysvc an argon2 verification, which a busy CI machine can
# stretch past the Guard's 50 ms default; the example's walk-through is what is tested here.
RELAXED = {"KEYSVC_TIMEOUT_SECONDS": "5"}


class TestExampleServer:
    def test_the_readme_walk_through(
        self, run_example: Callable[..., Example], server: ServerProcess, keys: Keys
    ) -> None:
        example = run_example(server.target, env=RELAXED)
        reader, writer = keys.new(["links:read"]), keys.new(["links:read", "links:write"])

        missing = example.request("GET", "/api/v1/links")
        assert (missing.status, missing.body["error"]["reason"]) == (401, "missing")
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="api"'

        listed = example.request("GET", "/api/v1/links", reader.secret)
        assert listed.status == 200
        assert listed.body["data"] == []
        assert listed.body["key"]["key_id"] == reader.key.id

        link = {"name": "T-shirt", "amount": 2500, "currency": "eur"}
        denied = example.request("POST", "/api/v1/links", reader.secret, link)
        assert (denied.status, denied.body["error"]["missing_scopes"]) == (403, ["links:write"])

        created = example.request("POST", "/api/v1/links", writer.secret, link)
        assert created.status == 201
        assert created.body["account_id"] == keys.account and created.body["livemode"] is True
        listed = example.request("GET", "/api/v1/links", reader.secret)
        assert [item["id"] for item in listed.body["data"]] == [created.body["id"]]
        fetched = example.request("GET", f"/api/v1/links/{created.body['id']}", reader.secret)
        assert fetched.body == created.body

        keys.revoke(reader)
        revoked = example.request("GET", "/api/v1/links", reader.secret)
        assert (revoked.status, revoked.body["error"]["reason"]) == (401, "revoked")

        assert not KEY_PATTERN.search(example.log())

    def test_port_and_mode_from_the_command_line(
        self, run_example: Callable[..., Example], server: ServerProcess, keys: Keys
    ) -> None:
        """--port wins over PORT; KEYSVC_REQUIRED_MODE=test makes a staging server."""
        environ = {**RELAXED, "KEYSVC_REQUIRED_MODE": "test", "PORT": str(free_port())}
        example = run_example(server.target, "--port", str(free_port()), env=environ)
        assert str(example.port) != environ["PORT"]
        refused = example.request("GET", "/api/v1/links", keys.new(mode="live").secret)
        assert (refused.status, refused.body["error"]["reason"]) == (403, "wrong_mode")
        assert example.request("GET", "/api/v1/links", keys.new(mode="test").secret).status == 200

    def test_without_keysvc_it_runs_and_answers_503(
        self, run_example: Callable[..., Example], nowhere: str
    ) -> None:
        example = run_example(nowhere)
        down = example.request("GET", "/api/v1/links", "ck_live_" + "A" * 50)
        assert (down.status, down.body["error"]["reason"]) == (503, "unavailable")
        assert down.headers["Retry-After"] == "1"
        assert "does not answer yet" in example.log()


def test_make_example_runs_the_example_server() -> None:
    """`make example` is the README's one command: it runs this module on 127.0.0.1:8000."""
    dry_run = subprocess.run(
        ["make", "-n", "example"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    assert dry_run.returncode == 0, dry_run.stderr
    assert "-m examples.api_server" in dry_run.stdout
