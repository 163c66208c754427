"""`keysvc dashboard serve`: the application under uvicorn, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from keysvc_client import Connection, KeysvcError

from keysvc.dashboard.app import create_app
from keysvc.dashboard.client import Keysvc
from keysvc.dashboard.sessions import Sessions, read_or_create_key
from keysvc.dashboard.users import UsersFile

__all__ = ["DashboardSettings", "StartupError", "serve"]

log = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 10.0
_SHUTDOWN_GRACE_SECONDS = 5


class StartupError(Exception):
    """The dashboard cannot start as configured; the message says why and what to do."""


@dataclass(frozen=True)
class DashboardSettings:
    listen: str
    users_file: Path
    session_key_file: Path
    connection: Connection
    timeout: float = 10.0
    https_cert: Path | None = None
    https_key: Path | None = None
    insecure: bool = False
    address_file: Path | None = None

    @property
    def https(self) -> bool:
        return self.https_cert is not None


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise StartupError(f"--listen {listen}: expected HOST:PORT") from None
    if not host or not 0 <= port <= 65535:
        raise StartupError(f"--listen {listen}: expected HOST:PORT")
    return host, port


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(listen: str) -> socket.socket:
    host, port = split_listen(listen)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise StartupError(f"cannot listen on {listen}: {err}") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {err}") from err
    return sock


def check_transport(settings: DashboardSettings) -> None:
    """Passwords and session cookies cross the network only under TLS, unless --insecure says
    that something in front (a TLS-terminating proxy) protects them."""
    if (settings.https_cert is None) != (settings.https_key is None):
        raise StartupError("--https-cert and --https-key go together: give both")
    host, _ = split_listen(settings.listen)
    if settings.https or is_loopback(host):
        return
    if not settings.insecure:
        raise StartupError(
            f"refusing to serve the dashboard on {settings.listen} without TLS: passwords and"
            " session cookies would cross the network in clear text. Give --https-cert and"
            " --https-key, or pass --insecure if something in front of it terminates TLS"
        )
    log.warning("--insecure: serving the dashboard on %s in clear text", settings.listen)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # serve() installs its own handlers; uvicorn's would re-raise the signal at the end,
        # and a clean stop must exit 0.
        yield


def _check_keysvc(keysvc: Keysvc, target: str) -> None:
    try:
        keysvc.client("").list_scopes()
    except KeysvcError as err:
        log.warning(
            "keysvc at %s did not answer (%s: %s): pages will say so until it does",
            target,
            err.code.name,
            err.details,
        )


async def serve(settings: DashboardSettings) -> None:
    """Serves the dashboard until SIGTERM or SIGINT, then lets requests in flight finish."""
    check_transport(settings)
    try:
        users = UsersFile(settings.users_file)
    except Exception as err:
        raise StartupError(str(err)) from err
    if not users.users():
        log.warning(
            "no users in %s: add one with `keysvc dashboard users add NAME --account ACCOUNT"
            " --users %s`",
            settings.users_file,
            settings.users_file,
        )
    try:
        key = read_or_create_key(settings.session_key_file)
    except Exception as err:
        raise StartupError(str(err)) from err
    try:
        keysvc = Keysvc(settings.connection, timeout=settings.timeout)
    except (ValueError, OSError) as err:
        raise StartupError(f"cannot reach keysvc as configured: {err}") from err
    try:
        await asyncio.to_thread(_check_keysvc, keysvc, settings.connection.target)
        app = create_app(keysvc, users, Sessions(key, secure=settings.https))
        await _run(app, settings)
    finally:
        keysvc.close()


async def _run(app: object, settings: DashboardSettings) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
        ssl_certfile=str(settings.https_cert) if settings.https_cert else None,
        ssl_keyfile=str(settings.https_key) if settings.https_key else None,
    )
    try:
        config.load()
    except (OSError, ValueError) as err:
        raise StartupError(f"cannot serve HTTPS with --https-cert and --https-key: {err}") from err
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    sock = _bind(settings.listen)
    server = _Server(config)
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        task = asyncio.create_task(server.serve(sockets=[sock]), name="dashboard")
        deadline = loop.time() + _START_TIMEOUT_SECONDS
        while not server.started and not task.done():
            if loop.time() > deadline:
                server.should_exit = True
                await task
                raise StartupError(f"the dashboard on {settings.listen} did not start")
            await asyncio.sleep(0.01)
        if task.done():
            raise StartupError(f"cannot serve on {settings.listen}: {task.exception()}")
        host, _ = split_listen(settings.listen)
        port = sock.getsockname()[1]
        url = f"{'https' if settings.https else 'http'}://{host}:{port}"
        log.info("dashboard listening on %s", url)
        if settings.address_file is not None:
            _write_address(settings.address_file, url)
        await task
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        sock.close()
    log.info("dashboard stopped")


def _write_address(path: Path, url: str) -> None:
    # Written whole, then renamed: a reader polling for it never sees half an address.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(url + "\n")
    temporary.replace(path)
