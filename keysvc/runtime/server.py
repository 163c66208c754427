"""Runs keysvc: the object graph (keysvc.runtime.build) behind a grpc.aio server with health,
reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from keysvc.api import envoy
from keysvc.api.gateway import Gateway, load_routes
from keysvc.api.servicer import KeyServiceServicer
from keysvc.core.errors import StartupError, Unavailable
from keysvc.ports.store import KeyStore
from keysvc.ports.workers import Workers
from keysvc.runtime import http_listener, metrics_listener, security
from keysvc.runtime.build import PRODUCTION, Keysvc, Seams, built
from keysvc.runtime.config import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KeyService"].full_name


@dataclass(frozen=True)
class Serving:
    """Where a running server listens: its address as a client dials it, and the port (the
    one the system picked, when the settings asked for port 0)."""

    address: str
    port: int
    keysvc: Keysvc
    # The --http-listen listener (GitHub secret scanning) as http[s]://HOST:PORT; None: none.
    http_url: str | None = None
    # The --metrics-listen listener as http://HOST:PORT/metrics; None: none (or a worker's,
    # whose supervisor serves the metrics).
    metrics_url: str | None = None


def _transport(settings: Settings) -> str:
    if settings.tls_client_ca is not None:
        return "mutual TLS"
    if settings.tls_cert is not None:
        return "TLS"
    return "plaintext"


async def _watch_database(
    store: KeyStore, workers: Workers, health_servicer: health.aio.HealthServicer, every: float
) -> None:
    """Keeps the health service NOT_SERVING while the database cannot be reached."""
    serving = True
    while True:
        await asyncio.sleep(every)
        try:
            await workers.db(store.ping)
            reachable = True
        except Unavailable:
            reachable = False
        if reachable != serving:
            serving = reachable
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)
            log.warning(
                "database %s", "reachable again: SERVING" if serving else "unreachable: NOT_SERVING"
            )


def _health_server(
    settings: Settings, health_servicer: health.aio.HealthServicer
) -> grpc.aio.Server | None:
    """The loopback listener of --health-listen: the health service alone, in plaintext."""
    if settings.health_listen is None:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if settings.shares_ports else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        server.add_insecure_port(settings.health_listen)
    except RuntimeError as err:
        raise StartupError(f"cannot listen on {settings.health_listen}: {err}") from err
    log.info("health service also on %s (plaintext, loopback)", settings.health_listen)
    return server


@contextlib.asynccontextmanager
async def running(settings: Settings, *, seams: Seams = PRODUCTION) -> AsyncIterator[Serving]:
    """Serves until the block exits, then shuts down gracefully; yields where it listens."""
    # Read before anything else: a mistake in the file stops the start, naming its line.
    routes = None if settings.gateway_routes is None else load_routes(settings.gateway_routes)
    credentials = security.server_credentials(settings)
    security.check_health_listen(settings)
    metrics_listener.check(settings)
    http = http_listener.configured(settings, routes)
    gate = security.gate(settings)
    async with built(settings, seams=seams) as keysvc:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # One server per port: a second one binding the same port is an error; but
                # workers of one supervisor share it, and the kernel spreads their connections
                # (grpc core's default is 1, so it is set either way).
                ("grpc.so_reuseport", 1 if settings.shares_ports else 0),
            ],
        )
        servicer = KeyServiceServicer(
            keysvc.admin, keysvc.authorizer, gate, keysvc.change_log, metrics=keysvc.metrics
        )
        pb_grpc.add_KeyServiceServicer_to_server(servicer, server)
        gateway_services: tuple[str, ...] = ()
        if routes is not None:
            envoy.add_to_server(
                envoy.EnvoyAuthorization(
                    Gateway(routes, keysvc.authorizer, transport="envoy", metrics=keysvc.metrics),
                    gate,
                    strip_key=settings.gateway_strip_key,
                ),
                server,
            )
            gateway_services = (envoy.SERVICE_NAME,)
            log.info("Envoy ext_authz on this port: %d routes from %s", len(routes), routes.source)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, *gateway_services, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )
        try:
            if credentials is None:
                port = server.add_insecure_port(settings.listen)
            else:
                port = server.add_secure_port(settings.listen, credentials)
        except RuntimeError as err:
            hint = "" if credentials is None else " (are --tls-cert and --tls-key a matching pair?)"
            raise StartupError(f"cannot listen on {settings.listen}{hint}: {err}") from err
        host = settings.listen.rsplit(":", 1)[0]
        address = f"{host}:{port}"
        health_server = _health_server(settings, health_servicer)
        await server.start()
        if health_server is not None:
            await health_server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        watch = asyncio.create_task(
            _watch_database(
                keysvc.store, keysvc.workers, health_servicer, settings.health_check_seconds
            )
        )
        log.info("transport: %s", _transport(settings))
        log.info("keysvc listening on %s", address)
        http_server = (
            None
            if http is None
            else http_listener.HttpServer(
                http,
                keysvc.admin,
                settings,
                authorizer=keysvc.authorizer,
                metrics=keysvc.metrics,
            )
        )
        metrics_server: metrics_listener.MetricsServer | None = None
        try:
            http_url = None if http_server is None else await http_server.start()
            metrics_server = await asyncio.to_thread(
                metrics_listener.serve_process, settings, keysvc.metrics
            )
            yield Serving(
                address=address,
                port=port,
                keysvc=keysvc,
                http_url=http_url,
                metrics_url=None if metrics_server is None else metrics_server.url,
            )
        finally:
            log.info("shutting down: refusing new calls, finishing in-flight ones")
            watch.cancel()
            await health_servicer.enter_graceful_shutdown()
            stopping = asyncio.ensure_future(server.stop(settings.shutdown_grace_seconds))
            # Once new calls are refused, the Session streams (which Guards keep open for good)
            # end, so that they hold the shutdown no longer than the calls in flight.
            await asyncio.sleep(0)
            servicer.end_sessions()
            await asyncio.gather(
                stopping,
                *([] if http_server is None else [http_server.stop()]),
            )
            if health_server is not None:
                await health_server.stop(0)
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.stop)
    log.info("keysvc stopped")


async def serve(
    settings: Settings,
    *,
    address_file: Path | None = None,
    on_serving: Callable[[list[str]], None] | None = None,
) -> None:
    """Runs until SIGTERM or SIGINT. `address_file`, if given, receives the address the server
    listens on once it does (written whole, then renamed into place): the gRPC HOST:PORT on
    the first line, with --http-listen the HTTP listener's http[s]://HOST:PORT on the next,
    and with --metrics-listen the metrics' http://HOST:PORT/metrics on the next.
    `on_serving`, if given, gets the same lines at the same moment (a worker reports them to
    its supervisor, keysvc.runtime.supervisor)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as serving:
        lines = [serving.address, *([serving.http_url] if serving.http_url else [])]
        lines += [serving.metrics_url] if serving.metrics_url else []
        if address_file is not None:
            write_address_file(address_file, lines)
        if on_serving is not None:
            on_serving(lines)
        await stop.wait()


def write_address_file(path: Path, lines: Sequence[str]) -> None:
    """`lines` into `path`, written whole and then renamed into place: a reader polling for
    the file never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.replace(path)
