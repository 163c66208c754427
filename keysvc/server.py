"""Starts keysvc: wires the store, cache and use cases into a grpc.aio server with health,
reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc
from sqlalchemy.engine import Engine

from keysvc import access
from keysvc.api.servicer import KeyServiceServicer
from keysvc.authorizer import Authorizer
from keysvc.cache import KeyCache
from keysvc.cache.codec import GrantCodec
from keysvc.cache.memory import MemoryKeyCache
from keysvc.cache.redis import RedisKeyCache
from keysvc.change_log import ChangeFollower, ChangeLog
from keysvc.config import Settings
from keysvc.errors import StartupError, Unavailable
from keysvc.hashing import Verifier
from keysvc.last_used import LastUsedRecorder
from keysvc.service import KeyService
from keysvc.store import migrate
from keysvc.store.sql import SqlKeyStore, create_engine, database_url
from keysvc.workers import Workers

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KeyService"].full_name


def open_database(settings: Settings, *, connections: int = 5) -> Engine:
    url = settings.effective_database_url
    if url.startswith("sqlite:///"):
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shown = database_url(url).render_as_string(hide_password=True)
    engine = create_engine(
        url, timeout_seconds=settings.database_timeout_seconds, connections=connections
    )
    try:
        migrate.upgrade(engine)
    except sa.exc.DBAPIError as err:
        engine.dispose()
        # The driver's own message can quote the URL, password included: name the class.
        raise StartupError(
            f"cannot migrate the database {shown}: {type(err.orig).__name__}"
        ) from err
    log.info("database: %s (schema up to date)", shown)
    return engine


def _transport(settings: Settings) -> str:
    if settings.tls_client_ca is not None:
        return "mutual TLS"
    if settings.tls_cert is not None:
        return "TLS"
    return "plaintext"


def _open_cache(settings: Settings, mac_key: bytes) -> KeyCache:
    if settings.redis_url is None:
        log.info("cache: in-process (set KEYSVC_REDIS_URL to share one between replicas)")
        return MemoryKeyCache(ttl_seconds=settings.cache_ttl_seconds)
    cache = RedisKeyCache(
        settings.redis_url,
        GrantCodec(mac_key),
        prefix=settings.redis_prefix,
        timeout_seconds=settings.redis_timeout_seconds,
        ttl_seconds=settings.cache_ttl_seconds,
    )
    log.info(
        "cache: redis %s (prefix %r)", _without_password(settings.redis_url), settings.redis_prefix
    )
    return cache


def _without_password(url: str) -> str:
    """`url` with any password masked: in the user-info part, or as a query parameter."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    query = [
        (name, "***" if name.lower() == "password" else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


async def _watch_database(
    store: SqlKeyStore, workers: Workers, health_servicer: health.aio.HealthServicer, every: float
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


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[None]:
    """Serves until the block exits, then shuts down gracefully."""
    credentials = access.server_credentials(settings)
    gate = access.gate(settings)
    workers = Workers(db_timeout_seconds=settings.database_timeout_seconds)
    engine = await asyncio.to_thread(
        open_database, settings, connections=workers.database_connections
    )
    store = SqlKeyStore(engine)
    change_log = ChangeLog(
        lease_seconds=settings.lease_seconds,
        read_timeout_seconds=settings.database_timeout_seconds,
    )
    follower = ChangeFollower(
        store, workers, change_log, interval_seconds=settings.lease_seconds / 5
    )
    try:
        mac_key = await workers.db(store.cache_mac_key)
        await follower.load()
    except Unavailable as err:
        workers.close()
        engine.dispose()
        raise StartupError(f"cannot read the change log from the database: {err}") from err
    cache = _open_cache(settings, mac_key)
    verifier = Verifier(settings.argon2)

    async def flush(uses: Mapping[str, datetime]) -> None:
        await workers.db(store.record_last_used, uses)

    recorder = LastUsedRecorder(flush, interval_seconds=settings.last_used_flush_seconds)
    service = KeyService(store, cache, verifier, workers, change_log)
    authorizer = Authorizer(store, cache, verifier, workers, recorder, change_log)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # One server per port: a second one binding the same port is an error, not a share.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_KeyServiceServicer_to_server(KeyServiceServicer(service, authorizer, gate), server)
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
    await server.start()
    recorder.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    background = [
        asyncio.create_task(
            _watch_database(store, workers, health_servicer, settings.health_check_seconds)
        ),
        asyncio.create_task(follower.run()),
    ]
    log.info("transport: %s", _transport(settings))
    log.info("keysvc listening on %s", address)
    try:
        yield
    finally:
        log.info("shutting down: refusing new calls, finishing in-flight ones")
        for task in background:
            task.cancel()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_seconds)
        try:
            await recorder.close()
        except Exception as err:
            log.error("final last-used flush failed: %s", err)
        await cache.close()
        workers.close()
        engine.dispose()
        log.info("keysvc stopped")


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        await stop.wait()
