"""Self-hosting as compose.yaml describes it: the file read as written, each keysvc service's
command run with the environment compose and the image would give it, on a private
PostgreSQL and a private Redis standing in for the compose file's (tests/deploy/local.py).
A key revoked through one replica is refused by the other."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
from psycopg import sql

from tests.deploy.local import Image, compose, environment, local_mounts, run, substitute
from tests.e2e.harness import KEY_PATTERN, poll
from tests.services import PrivatePostgres, PrivateRedis, free_port

pytestmark = pytest.mark.slow

START_TIMEOUT = 60.0
# What the operator exports before `docker compose up` (the compose file refuses to start
# without them).
VARIABLES = {
    "KEYSVC_DB_PASSWORD": "db-password-for-the-test",
    "KEYSVC_REDIS_PASSWORD": "redis-password-for-the-test",
    "KEYSVC_ADMIN_TOKEN": "admin-token-for-the-test-0123456789",
}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    """The compose file's `postgres` service: its user, password and database."""
    server = PrivatePostgres()
    server.start()
    with psycopg.connect(server.url, autocommit=True) as conn:
        password = VARIABLES["KEYSVC_DB_PASSWORD"]
        conn.execute(sql.SQL("CREATE ROLE keysvc LOGIN PASSWORD {}").format(sql.Literal(password)))
        conn.execute("CREATE DATABASE keysvc OWNER keysvc")
    yield server
    server.remove()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """The compose file's `redis` service, started with the command the file gives it."""
    service = substitute(compose()["services"]["redis"], VARIABLES)
    command: list[str] = service["command"]
    assert command[0] == "redis-server"
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(
        tmp_path / "redis", password=VARIABLES["KEYSVC_REDIS_PASSWORD"], options=command[1:]
    )
    server.start()
    yield server
    server.kill()


class Project:
    """compose.yaml's keysvc services, run locally: service hosts become the private servers'
    addresses, `./tls` a directory of certificates made now, published ports free ones."""

    def __init__(self, tmp_path: Path, postgres: PrivatePostgres, redis: PrivateRedis) -> None:
        self.file = compose()
        self.image = Image.read()
        self.tmp = tmp_path
        self.hosts = {
            "postgres:5432": f"127.0.0.1:{postgres.port}",
            "redis:6379": f"127.0.0.1:{redis.port}",
        }
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.tls = tmp_path / "tls"
        self.tls.mkdir()
        (self.tls / "tls.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        (self.tls / "tls.key").write_bytes(leaf.private_key_pem.bytes())
        self.ca = tmp_path / "ca.pem"
        self.ca.write_bytes(ca.cert_pem.bytes())
        self.processes: list[subprocess.Popen[str]] = []

    def service(self, name: str) -> tuple[list[str], dict[str, str], Path, dict[str, Any]]:
        """The command, environment and working directory compose would give `name`."""
        service: dict[str, Any] = substitute(self.file["services"][name], VARIABLES)
        assert service["image"] == "keysvc"
        volume = self.tmp / name
        volume.mkdir(exist_ok=True)
        mounts = local_mounts(volume, self.tls)
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            assert (source, target) == ("./tls", "/etc/keysvc/tls"), mount
        extra = {}
        for key, value in service.get("environment", {}).items():
            for host, local in self.hosts.items():
                value = value.replace(f"@{host}/", f"@{local}/")
            extra[key] = value
        published = {}
        for port in service.get("ports", []):
            _, container = port.split(":")
            published["KEYSVC_LISTEN"] = self.image.env["KEYSVC_LISTEN"].replace(
                f":{container}", f":{free_port()}"
            )
        health = self.image.env["KEYSVC_HEALTH_LISTEN"].replace(":50052", f":{free_port()}")
        env = environment(
            self.image, mounts, {**extra, **published, "KEYSVC_HEALTH_LISTEN": health}
        )
        command = self.image.entrypoint + service["command"]
        return command, env, Path(mounts.apply(self.image.workdir)), service

    def start(self, name: str) -> tuple[str, dict[str, str]]:
        """Starts a replica; returns the host address its published port reaches, and its env."""
        command, env, workdir, _ = self.service(name)
        log = (self.tmp / f"{name}.log").open("w")
        process = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        self.processes.append(process)
        checks = [
            part.replace("127.0.0.1:50052", env["KEYSVC_HEALTH_LISTEN"])
            for part in self.image.healthcheck
        ]

        def healthy() -> bool:
            if process.poll() is not None:
                log_text = (self.tmp / f"{name}.log").read_text()
                raise AssertionError(f"{name} exited with {process.returncode}: {log_text}")
            return run(checks, env, workdir).returncode == 0

        poll(healthy, timeout=START_TIMEOUT, what=f"{name}'s health check")
        port = env["KEYSVC_LISTEN"].rsplit(":", 1)[1]
        return f"localhost:{port}", env

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0


@pytest.fixture
def project(
    tmp_path: Path, postgres: PrivatePostgres, redis_server: PrivateRedis
) -> Iterator[Project]:
    project = Project(tmp_path, postgres, redis_server)
    yield project
    project.stop()


class TestSelfHosting:
    def test_the_file_sets_up_what_the_docs_require(self) -> None:
        """Two replicas after a one-shot migrate, Redis without eviction, PostgreSQL and Redis
        behind passwords that must be given, the replicas' TLS mounted."""
        services = compose()["services"]
        assert {"postgres", "redis", "migrate", "keysvc-1", "keysvc-2"} <= set(services)
        assert services["migrate"]["command"] == ["migrate"]
        for replica in ("keysvc-1", "keysvc-2"):
            after = services[replica]["depends_on"]["migrate"]["condition"]
            assert after == "service_completed_successfully"
            assert "./tls:/etc/keysvc/tls:ro" in services[replica]["volumes"]
        assert (
            services["redis"]["command"][
                services["redis"]["command"].index("--maxmemory-policy") + 1
            ]
            == "noeviction"
        )
        assert ":?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]

    def test_a_key_revoked_through_one_replica_is_refused_by_the_other(
        self, project: Project
    ) -> None:
        """migrate runs to completion; both replicas come up healthy over TLS; a key created
        through one is allowed by the other, and once revoked through the first, refused by
        the second."""
        command, env, workdir, _ = project.service("migrate")
        migrated = run(command, env, workdir)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr

        first, env = project.start("keysvc-1")
        second, _ = project.start("keysvc-2")

        def cli(
            target: str, *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["keysvc", *args, "--target", target, "--tls-ca", str(project.ca)],
                env={**env, "KEYSVC_TOKEN": VARIABLES["KEYSVC_ADMIN_TOKEN"]},
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
            )

        created = cli(
            first, "keys", "create", "--account", "acct_compose", "--name", "Compose",
            "--mode", "live", "--scope", "links:read",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        (raw_key,) = KEY_PATTERN.findall(created.stdout)
        assert cli(second, "authorize", stdin=raw_key).stdout.split()[:2] == ["200", "ALLOWED"]
        assert (
            cli(first, "keys", "revoke", "--account", "acct_compose", raw_key[8:20]).returncode == 0
        )
        assert cli(second, "authorize", stdin=raw_key).stdout.split()[:2] == ["401", "REVOKED"]
