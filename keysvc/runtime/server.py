"""Runs keysvc: the object graph (keysvc.runtime.build) behind a grpc.aio server with health,
reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from keysvc.api.servicer import KeyServiceServicer
from keysvc.core.errors import StartupError, Unavailable
from keysvc.ports.store import KeyStore
from keysvc.ports.workers import Workers
from keysvc.runtime import http_listener, security
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
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
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
    credentials = security.server_credentials(settings)
    security.check_health_listen(settings)
    http = http_listener.configured(settings)
    gate = security.gate(settings)
    async with built(settings, seams=seams) as keysvc:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # One server per port: a second one binding the same port is an error.
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_KeyServiceServicer_to_server(
            KeyServiceServicer(keysvc.admin, keysvc.authorizer, gate), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
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
            None if http is None else http_listener.HttpServer(http, keysvc.admin, settings)
        )
        try:
            http_url = None if http_server is None else await http_server.start()
            yield Serving(address=address, port=port, keysvc=keysvc, http_url=http_url)
        finally:
            log.info("shutting down: refusing new calls, finishing in-flight ones")
            watch.cancel()
            await health_servicer.enter_graceful_shutdown()
            await asyncio.gather(
                server.stop(settings.shutdown_grace_seconds),
                *([] if http_server is None else [http_server.stop()]),
            )
            if health_server is not None:
                await health_server.stop(0)
    log.info("keysvc stopped")


async def serve(settings: Settings, *, address_file: Path | None = None) -> None:
    """Runs until SIGTERM or SIGINT. `address_file`, if given, receives the address the server
    listens on once it does (written whole, then renamed into place): the gRPC HOST:PORT on
    the first line, and with --http-listen the HTTP listener's http[s]://HOST:PORT on the
    second."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as serving:
        if address_file is not None:
            partial = address_file.with_name(address_file.name + ".partial")
            lines = [serving.address, *([serving.http_url] if serving.http_url else [])]
            partial.write_text("".join(f"{line}\n" for line in lines))
            partial.replace(address_file)
        await stop.wait()
