"""Smoke test of keysvc as production installs it; scripts/smoke_install.sh runs it with the
python of a fresh virtualenv holding the built wheels, from outside the source tree.

With that install alone: `keysvc migrate` and `keysvc serve` on a new data dir reach SERVING;
a key made with the client and one made with the CLI are each authorized by the other; a
revoked key makes `keysvc authorize` exit 1; SIGTERM exits 0. With --make-run SRC, `make run`
in SRC on this virtualenv serves on the README's default address, 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import keysvc_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from keysvc_client import KeyServiceClient, KeysvcError

import keysvc

T = TypeVar("T")

VENV = Path(sys.prefix)
KEYSVC = VENV / "bin" / "keysvc"
DEFAULT_LISTEN = "127.0.0.1:50051"
ACCOUNT = "acct_smoke"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0
LISTENING = re.compile(r"keysvc listening on (\S+:\d+)\s*$", re.MULTILINE)


class SmokeFailure(Exception):
    """A promise of the installed keysvc that did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def poll(probe: Callable[[], T | None], *, what: str, timeout: float = START_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without KEYSVC_* or make's own variables, plus `extra`."""
    dropped = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSVC_") and k not in dropped}
    env.update(extra or {})
    return env


def keysvc_command(
    *args: str, data_dir: Path, target: str = "", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = environ({"KEYSVC_DATA_DIR": str(data_dir)})
    if target:
        env["KEYSVC_TARGET"] = target
    return subprocess.run(
        [str(KEYSVC), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def serving(target: str) -> bool:
    """Whether the server at `target` reports SERVING for KeyService."""
    try:
        with grpc.insecure_channel(target) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service="keysvc.v1.KeyService"), timeout=5
            )
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def listening(process: subprocess.Popen[bytes], log: Path) -> str | None:
    """The address `keysvc serve` logged it listens on; fails if it exited first."""
    text = log.read_text(errors="replace") if log.exists() else ""
    match = LISTENING.search(text)
    if match is None and process.poll() is not None:
        raise SmokeFailure(f"keysvc exited with {process.returncode} before listening:\n{text}")
    return match[1] if match else None


def stop(process: subprocess.Popen[bytes], pid: int, log: Path) -> None:
    """SIGTERM to `pid`; `process` (that pid or its parent) must then exit 0."""
    os.kill(pid, signal.SIGTERM)
    try:
        code = process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise SmokeFailure(
            f"no exit within {STOP_TIMEOUT}s of SIGTERM:\n{log.read_text(errors='replace')}"
        ) from None
    check(code == 0, f"exit code {code} after SIGTERM, not 0:\n{log.read_text(errors='replace')}")


def check_the_install() -> None:
    step(f"keysvc and keysvc_client imported from {VENV}")
    for module in (keysvc, keysvc_client):
        origin = Path(module.__file__ or "").resolve()
        check(
            origin.is_relative_to(VENV.resolve()) and "site-packages" in origin.parts,
            f"{module.__name__} comes from {origin}, not from the virtualenv's site-packages",
        )


def migrate_serve_and_use(workdir: Path) -> None:
    data_dir = workdir / "data"
    step("keysvc migrate on a new data dir")
    migrated = keysvc_command("migrate", data_dir=data_dir)
    check(migrated.returncode == 0, f"keysvc migrate exited {migrated.returncode}:\n{migrated}")
    check("database schema is up to date" in migrated.stdout, f"keysvc migrate said {migrated}")
    database = data_dir / "keysvc.db"
    check(database.is_file(), "keysvc migrate made no keysvc.db")
    with contextlib.closing(sqlite3.connect(database)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    check(
        {"alembic_version", "api_keys", "audit_events"} <= tables,
        f"keysvc migrate left the tables {sorted(tables)}: are the migrations installed?",
    )

    step("keysvc serve")
    log = workdir / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(KEYSVC), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ(),
            cwd=workdir,
        )
    try:
        target = poll(lambda: listening(server, log), what="the listening line")
        poll(lambda: serving(target), what=f"health SERVING on {target}")
        step(f"SERVING on {target}")
        try:
            use(target, data_dir)
        except KeysvcError as err:
            raise SmokeFailure(
                f"{err!r}; keysvc's log:\n{log.read_text(errors='replace')}"
            ) from err
        step("SIGTERM")
        stop(server, server.pid, log)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def use(target: str, data_dir: Path) -> None:
    token = (data_dir / "admin-token").read_text().strip()
    with KeyServiceClient(target, admin_token=token, timeout=10.0) as client:
        step("a key created with the client, authorized with the CLI")
        by_client = client.create_key(ACCOUNT, "client key", "test", ["links:read"])
        authorized = keysvc_command(
            "authorize", "--scope", "links:read", data_dir=data_dir, target=target,
            stdin=by_client.secret,
        )  # fmt: skip
        check(
            authorized.returncode == 0 and authorized.stdout.startswith("200 ALLOWED"),
            f"keysvc authorize of the client's key: {authorized}",
        )

        step("a key created with the CLI, authorized with the client")
        created = keysvc_command(
            "keys", "create", "--account", ACCOUNT, "--name", "cli key", "--mode", "test",
            "--scope", "links:read", "--json", data_dir=data_dir, target=target,
        )  # fmt: skip
        check(created.returncode == 0, f"keysvc keys create: {created}")
        by_cli = json.loads(created.stdout)
        decision = client.authorize(f"Bearer {by_cli['secret']}", ["links:read"])
        check(
            decision.allowed and decision.http_status == 200,
            f"the CLI's key was not allowed: {decision}",
        )

        step("a revoked key: keysvc authorize exits 1")
        client.revoke_key(ACCOUNT, by_cli["key"]["id"])
        refused = keysvc_command(
            "authorize", data_dir=data_dir, target=target, stdin=by_cli["secret"]
        )
        check(
            refused.returncode == 1 and refused.stdout.startswith("401 REVOKED"),
            f"keysvc authorize of a revoked key: {refused}",
        )


def keysvc_serve_under(pid: int) -> int | None:
    """The pid of the `keysvc serve` process among `pid`'s descendants, if it has started."""
    for child in _children(pid):
        try:
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"keysvc") for arg in cmdline) and b"serve" in cmdline:
            return child
        found = keysvc_serve_under(child)
        if found is not None:
            return found
    return None


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in (Path("/proc") / str(pid) / "task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def make_run_serves_on_the_default(source: Path, workdir: Path) -> None:
    step(f"make run VENV={VENV} in {source}")
    log = workdir / "make-run.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "run", f"VENV={VENV}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ(),
            cwd=source,
        )
    try:
        address = poll(lambda: listening(make, log), what="make run's listening line")
        check(
            address == DEFAULT_LISTEN,
            f"make run listens on {address}, not on the README's {DEFAULT_LISTEN}",
        )
        poll(lambda: serving(DEFAULT_LISTEN), what=f"health SERVING on {DEFAULT_LISTEN}")
        step(f"make run is SERVING on {DEFAULT_LISTEN}")
        server = poll(lambda: keysvc_serve_under(make.pid), what="make run's keysvc process")
        step("SIGTERM to keysvc: make run exits 0")
        stop(make, server, log)
    finally:
        if make.poll() is None:
            server_pid = keysvc_serve_under(make.pid)
            if server_pid is not None:
                os.kill(server_pid, signal.SIGKILL)
            make.kill()
            make.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="an empty directory to use")
    parser.add_argument("--make-run", type=Path, metavar="SRC", help="a copy of the source tree")
    args = parser.parse_args()
    try:
        check_the_install()
        migrate_serve_and_use(args.workdir)
        if args.make_run is not None:
            make_run_serves_on_the_default(args.make_run, args.workdir)
    except SmokeFailure as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    step("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
