"""The listener of --http-listen: GitHub secret scanning (keysvc.api.github) and forward-auth for
gateways (keysvc.api.forward_auth), each when configured, served by uvicorn inside keysvc's own
event loop, with the gRPC listener's TLS certificate and rules."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from keysvc.access.github_signatures import GitHubPublicKeys, KeysFileError
from keysvc.api import forward_auth, github
from keysvc.api.gateway import Gateway, RouteTable, load_routes
from keysvc.core.errors import StartupError
from keysvc.ports.metrics import NO_METRICS, Metrics
from keysvc.runtime.config import Settings
from keysvc.runtime.security import is_loopback
from keysvc.usecases.authorize import Authorizer

log = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class HttpListener:
    """What --http-listen needs, checked before anything starts."""

    listen: str
    # GitHub secret scanning's keys (--github-keys-file); None: that endpoint is not served.
    public_keys: GitHubPublicKeys | None
    tls: bool
    # The gateway route table (--gateway-routes); None: forward-auth is not served.
    routes: RouteTable | None = None
    trusted_proxies: tuple[str, ...] = ()

    @property
    def endpoints(self) -> list[str]:
        """The paths served, for logs and for the 404 of any other."""
        served = [github.PATH] if self.public_keys is not None else []
        return served + ([forward_auth.PATH] if self.routes is not None else [])


def configured(settings: Settings, routes: RouteTable | None = None) -> HttpListener | None:
    """The HTTP listener the settings ask for (None: none), its keys read and its transport
    checked; a StartupError names what is missing or wrong. `routes`: the table of
    settings.gateway_routes when the caller has read it already (else it is read here)."""
    if settings.http_listen is None:
        if settings.github_keys_file is not None:
            raise StartupError(
                "--github-keys-file is for the GitHub secret scanning endpoint: give"
                " --http-listen HOST:PORT too"
            )
        return None
    listen = settings.http_listen
    if settings.github_keys_file is None and settings.gateway_routes is None:
        raise StartupError(
            f"--http-listen {listen} serves GitHub secret scanning, which needs"
            " --github-keys-file (GitHub's public keys, saved from"
            " https://api.github.com/meta/public_keys/secret_scanning), and forward-auth for"
            " gateways, which needs --gateway-routes: give either or both"
        )
    # The same rule as the gRPC listener (keysvc.runtime.security.server_credentials).
    tls = settings.tls_cert is not None
    if not tls and not is_loopback(listen):
        if not settings.insecure:
            raise StartupError(
                f"refusing to serve --http-listen {listen} without TLS: keys would"
                " cross the network in clear text. Give --tls-cert and --tls-key, or pass"
                " --insecure if something in front of keysvc terminates TLS"
            )
        log.warning("--insecure: serving HTTP on %s in clear text", listen)
    public_keys = None
    if settings.github_keys_file is not None:
        try:
            public_keys = GitHubPublicKeys.load(settings.github_keys_file)
        except KeysFileError as err:
            raise StartupError(f"--github-keys-file {err}") from err
        log.info(
            "GitHub secret scanning keys: %s (%d keys, current: %s)",
            settings.github_keys_file,
            len(public_keys.keys),
            ", ".join(sorted(public_keys.current)) or "none marked",
        )
    if settings.gateway_routes is None:
        routes = None
    else:
        if routes is None:
            routes = load_routes(settings.gateway_routes)
        if not settings.gateway_trusted_proxies:
            raise StartupError(
                "--gateway-trusted-proxies is empty: forward-auth would refuse every gateway"
            )
    return HttpListener(
        listen=listen,
        public_keys=public_keys,
        tls=tls,
        routes=routes,
        trusted_proxies=settings.gateway_trusted_proxies,
    )


def create_app(
    listener: HttpListener,
    revoker: github.LeakRevoker,
    authorizer: Authorizer | None,
    metrics: Metrics = NO_METRICS,
) -> Starlette:
    """The ASGI app of the listener: each configured endpoint, and JSON 404s elsewhere."""
    routes: list[BaseRoute] = []
    if listener.public_keys is not None:
        # GitHub's own app answers its path, its 405s included.
        routes.append(Route(github.PATH, github.create_app(revoker, listener.public_keys)))
    if listener.routes is not None:
        if authorizer is None:
            raise ValueError("forward-auth needs the Authorizer")
        gateway = Gateway(listener.routes, authorizer, transport="forward_auth", metrics=metrics)
        routes += forward_auth.routes(gateway, listener.trusted_proxies)
    served = ", ".join(listener.endpoints)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": f"no such endpoint: this listener serves {served}"},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def _bind(listen: str, *, reuse_port: bool = False) -> socket.socket:
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise StartupError(f"--http-listen {listen}: expected HOST:PORT") from None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise StartupError(f"cannot listen on {listen} (--http-listen): {err}") from err
    try:
        # Restarts may bind at once; two live listeners on one port still cannot, but for
        # the workers of one supervisor, which share it (the kernel spreads connections).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise StartupError(f"cannot listen on {listen} (--http-listen): {err}") from err
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # keysvc's own SIGTERM and SIGINT handlers shut everything down (runtime.server.serve);
        # uvicorn's would replace them.
        yield


class HttpServer:
    """The HTTP listener: start() binds and serves, stop() stops taking requests and lets
    those in flight finish, up to the shutdown grace."""

    def __init__(
        self,
        listener: HttpListener,
        revoker: github.LeakRevoker,
        settings: Settings,
        *,
        authorizer: Authorizer | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._listener = listener
        self._reuse_port = settings.shares_ports
        self._config = uvicorn.Config(
            create_app(listener, revoker, authorizer, metrics),
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            # The audit trail records the connection's peer, and forward-auth trusts only its
            # own --gateway-trusted-proxies: uvicorn trusts no X-Forwarded-For.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            # GitHub presents no client certificate: its signature is its proof, so this
            # listener never asks for one, mutual TLS on the gRPC listener or not.
            ssl_certfile=str(settings.tls_cert) if listener.tls else None,
            ssl_keyfile=str(settings.tls_key) if listener.tls and settings.tls_key else None,
        )
        self._server = _Server(self._config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Serves; returns the listener's URL (http[s]://HOST:PORT)."""
        listen = self._listener.listen
        sock = _bind(listen, reuse_port=self._reuse_port)
        port = sock.getsockname()[1]
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            # uvicorn's notes on starting and stopping; its errors still show.
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        try:
            self._config.load()
        except (OSError, ValueError) as err:
            sock.close()
            raise StartupError(
                f"cannot serve TLS on {listen} (--http-listen) with --tls-cert and --tls-key: {err}"
            ) from err
        task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-listener")
        self._task = task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT_SECONDS
        while not self._server.started and not task.done():
            if loop.time() > deadline:
                await self.stop()
                raise StartupError(f"the HTTP listener on {listen} did not start")
            await asyncio.sleep(0.01)
        if task.done():
            self._task = None
            raise StartupError(f"cannot serve on {listen} (--http-listen): {task.exception()}")
        host = listen.rpartition(":")[0]
        url = f"{'https' if self._listener.tls else 'http'}://{host}:{port}"
        for path in self._listener.endpoints:
            what = "GitHub secret scanning" if path == github.PATH else "forward-auth"
            log.info("%s on %s%s", what, url, path)
        return url

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
