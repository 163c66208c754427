"""`keysvc health` and the loopback health listener (--health-listen): what a container's
HEALTHCHECK and an operator's probe ask."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import KEYSVC, ServerFactory, clean_environ, serve_command
from tests.services import free_port


def _health(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KEYSVC), "health", "--target", target],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestHealthCommand:
    def test_a_serving_server_is_healthy(self, server_factory: ServerFactory) -> None:
        """Against a running keysvc: SERVING, exit 0."""
        server = server_factory.start()
        result = _health(server.target)
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING")

    def test_nothing_listening_is_exit_2(self) -> None:
        """Against a port nobody listens on: exit 2, naming the target, never 0."""
        target = f"127.0.0.1:{free_port()}"
        result = _health(target)
        assert result.returncode == 2
        assert f"cannot ask {target}: UNAVAILABLE" in result.stderr


class TestHealthListener:
    def test_serves_the_health_service_alone(self, server_factory: ServerFactory) -> None:
        """--health-listen answers the health service in plaintext; keysvc's own RPCs are not
        served there."""
        port = free_port()
        server = server_factory.start("--health-listen", f"127.0.0.1:{port}")
        result = _health(f"127.0.0.1:{port}")
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING")
        scopes = subprocess.run(
            [str(KEYSVC), "scopes", "--target", f"127.0.0.1:{port}"],
            env=clean_environ({"KEYSVC_TOKEN": server.admin_token}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert scopes.returncode == 2 and "UNIMPLEMENTED" in scopes.stderr

    @pytest.mark.parametrize("address", ["0.0.0.0:50052", "[::]:50052", "10.0.0.7:50052"])
    def test_beyond_loopback_is_refused(self, tmp_path: Path, address: str) -> None:
        """The health listener is plaintext: anything but loopback stops keysvc at start."""
        result = subprocess.run(
            [*serve_command(tmp_path / "data"), "--health-listen", address],
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert f"--health-listen {address}" in result.stderr
