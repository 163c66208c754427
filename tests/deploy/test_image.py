"""The container image, as docs/operations.md says to run it: the Dockerfile's final stage read as
written and its command run with its environment, a temporary directory standing in for the
volume and real certificates (made now) for the mounted TLS files (tests/deploy/local.py)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.deploy.local import Image, Mounts, environment, local_mounts, run
from tests.e2e.harness import KEY_PATTERN, poll
from tests.services import free_port

pytestmark = pytest.mark.slow

START_TIMEOUT = 60.0


@dataclass
class Container:
    """The image's process, started as `docker run -p PORT:50051 -v … keysvc` would."""

    process: subprocess.Popen[str]
    image: Image
    env: dict[str, str]
    workdir: Path
    port: int
    ca: Path | None
    log: Path

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The keysvc command from the host, as the docs show it."""
        tls = ["--tls-ca", str(self.ca)] if self.ca else []
        return subprocess.run(
            ["keysvc", *args, "--target", f"localhost:{self.port}", *tls],
            env=self.env,
            cwd=self.workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def healthy(self) -> bool:
        """The image's HEALTHCHECK, run as the engine runs it: inside, with the image's env."""
        if self.process.poll() is not None:
            raise AssertionError(f"keysvc exited with {self.process.returncode}: {self.logs()}")
        return run(self.image.healthcheck, self.env, self.workdir).returncode == 0

    def logs(self) -> str:
        return self.log.read_text()


def _tls(directory: Path, image: Image, mounts: Mounts) -> Path:
    """A certificate for localhost, written where the image expects its mounted TLS files;
    returns the CA's certificate, for clients."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    Path(mounts.apply(image.env["KEYSVC_TLS_CERT"])).write_bytes(
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    )
    Path(mounts.apply(image.env["KEYSVC_TLS_KEY"])).write_bytes(leaf.private_key_pem.bytes())
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.cert_pem.bytes())
    return ca_path


Start = Callable[..., Container]


@pytest.fixture
def image() -> Image:
    return Image.read()


@pytest.fixture
def start(image: Image, tmp_path: Path) -> Iterator[Start]:
    started: list[Container] = []

    def start(*, tls: bool = True, extra: dict[str, str] | None = None) -> Container:
        volume, certs = tmp_path / "volume", tmp_path / "tls"
        volume.mkdir(exist_ok=True)
        certs.mkdir(exist_ok=True)
        mounts = local_mounts(volume, certs)
        ca = _tls(tmp_path, image, mounts) if tls else None
        # -p: the container's ports published on free ones of this machine.
        port, health_port = free_port(), free_port()
        published = {
            "KEYSVC_LISTEN": image.env["KEYSVC_LISTEN"].replace(":50051", f":{port}"),
            "KEYSVC_HEALTH_LISTEN": image.env["KEYSVC_HEALTH_LISTEN"].replace(
                ":50052", f":{health_port}"
            ),
        }
        env = environment(image, mounts, {**published, **(extra or {})})
        image.healthcheck = [part.replace("50052", str(health_port)) for part in image.healthcheck]
        workdir = Path(mounts.apply(image.workdir))
        log = tmp_path / "container.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                image.entrypoint + image.cmd,
                env=env,
                cwd=workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
        container = Container(process, image, env, workdir, port, ca, log)
        started.append(container)
        return container

    yield start
    for container in started:
        if container.process.poll() is None:
            container.process.send_signal(signal.SIGTERM)
            assert container.process.wait(timeout=30) == 0, container.logs()


def _walk_through(container: Container) -> None:
    """The README's walk-through against the container, with the admin token from its volume."""
    token = (container.workdir / "admin-token").read_text().strip()
    container.env["KEYSVC_TOKEN"] = token
    created = container.cli(
        "keys", "create", "--account", "acct_docker", "--name", "Docker", "--mode", "live",
        "--scope", "links:read",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    (raw_key,) = KEY_PATTERN.findall(created.stdout)
    allowed = container.cli("authorize", "--scope", "links:read", stdin=raw_key)
    assert (allowed.returncode, allowed.stdout.split()[:2]) == (0, ["200", "ALLOWED"])
    key_id = raw_key[8:20]
    assert container.cli("keys", "revoke", "--account", "acct_docker", key_id).returncode == 0
    refused = container.cli("authorize", stdin=raw_key)
    assert (refused.returncode, refused.stdout.split()[:2]) == (1, ["401", "REVOKED"])


class TestTheImage:
    def test_runs_as_documented(self, image: Image) -> None:
        """The image runs `keysvc serve` as a user of its own, keeps its data in a volume,
        serves TLS from files under /etc/keysvc/tls, and checks its health over gRPC."""
        assert (image.entrypoint, image.cmd) == (["keysvc"], ["serve"])
        assert image.user == "keysvc" and image.user != "root"
        assert image.volumes == ["/var/lib/keysvc"] and image.workdir == "/var/lib/keysvc"
        assert image.env["KEYSVC_TLS_CERT"].startswith("/etc/keysvc/tls/")
        assert image.healthcheck[:2] == ["keysvc", "health"]

    def test_serves_tls_from_the_mounted_certificate(self, start: Start) -> None:
        """`docker run -p 50051:50051 -v keysvc-data:/var/lib/keysvc -v ./tls:/etc/keysvc/tls`:
        healthy by its own HEALTHCHECK, and the walk-through works over TLS."""
        container = start()
        poll(container.healthy, timeout=START_TIMEOUT, what="the image's health check")
        _walk_through(container)
        assert "transport: TLS" in container.logs()

    def test_serves_plaintext_behind_a_mesh(self, start: Start) -> None:
        """`-e KEYSVC_TLS_CERT= -e KEYSVC_TLS_KEY= -e KEYSVC_INSECURE=true`: plaintext, for a
        sidecar that terminates TLS in front of keysvc, with a warning in the log."""
        container = start(
            tls=False,
            extra={"KEYSVC_TLS_CERT": "", "KEYSVC_TLS_KEY": "", "KEYSVC_INSECURE": "true"},
        )
        poll(container.healthy, timeout=START_TIMEOUT, what="the image's health check")
        _walk_through(container)
        assert "--insecure: serving 0.0.0.0" in container.logs()

    def test_without_certificates_it_says_what_is_missing(self, start: Start) -> None:
        """Run without the TLS mount, it exits 1 at once, naming the file it needs."""
        container = start(tls=False)
        assert container.process.wait(timeout=START_TIMEOUT) == 1
        assert "cannot read TLS file" in container.logs()
        assert "tls.crt" in container.logs()
