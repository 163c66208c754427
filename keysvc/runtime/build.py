"""The one place keysvc's object graph is put together: the server, the tests, the schedule
explorer and the benchmark all get it from here.

`assemble` connects the parts (no I/O, so the explorer can hand it fakes); `built` opens the
real adapters from the settings, assembles them, runs what runs in the background (following
the change log, flushing last-used times) and closes everything when its block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from keysvc.adapters.cache.codec import GrantCodec
from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.adapters.cache.near import NearKeyCache
from keysvc.adapters.cache.pushes import RedisChangePushes
from keysvc.adapters.cache.redis import RedisKeyCache
from keysvc.adapters.metrics import PrometheusMetrics, multiprocess_directory
from keysvc.adapters.store import migrate
from keysvc.adapters.store.sql import SqlKeyStore, create_engine, database_url
from keysvc.adapters.workers import ThreadWorkers
from keysvc.core.clock import Clock, utc_now
from keysvc.core.errors import StartupError, Unavailable
from keysvc.core.hashing import Verifier
from keysvc.ports.cache import KeyCache
from keysvc.ports.metrics import NO_METRICS, Metrics
from keysvc.ports.pushes import NO_ANNOUNCER
from keysvc.ports.store import KeyStore
from keysvc.ports.workers import Workers
from keysvc.runtime.config import Settings
from keysvc.usecases.admin import KeyAdmin
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeFollower, ChangeLog, lease_clock
from keysvc.usecases.last_used import LastUsedRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seams:
    """What tests replace: the clocks, the throttle's sleep, argon2, the Authorizer's class.
    Production uses the defaults."""

    clock: Clock = utc_now
    # The throttle's windows and the in-process cache's TTL.
    monotonic: Callable[[], float] = time.monotonic
    # The change log's leases (docs/revocation.md: it must keep counting through a suspend).
    lease_clock: Callable[[], float] = lease_clock
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    verifier: Verifier | None = None
    authorizer_class: type[Authorizer] = Authorizer


PRODUCTION = Seams()


@dataclass
class Keysvc:
    """One keysvc replica's parts, connected."""

    settings: Settings
    store: KeyStore
    cache: KeyCache
    workers: Workers
    verifier: Verifier
    change_log: ChangeLog
    follower: ChangeFollower
    recorder: LastUsedRecorder
    admin: KeyAdmin
    authorizer: Authorizer
    # What the parts report to (keysvc.ports.metrics); NO_METRICS unless --metrics-listen.
    metrics: Metrics = NO_METRICS
    # Changes pushed between replicas through Redis; None with the in-process cache.
    pushes: RedisChangePushes | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Reads the change log's start (the replica serves nothing before), then follows it
        and flushes last-used times in the background."""
        await self.follower.load()
        self._tasks.append(asyncio.create_task(self.follower.run(), name="change-log"))
        if self.pushes is not None:
            listening = self.pushes.listen(self.change_log.read_soon)
            self._tasks.append(asyncio.create_task(listening, name="pushed-changes"))
        self.recorder.start()

    async def stop(self) -> None:
        """Stops the background work and writes the last-used times still pending."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self.pushes is not None:
            await self.pushes.close()
        await self.recorder.close()


def assemble(
    settings: Settings,
    store: KeyStore,
    cache: KeyCache,
    workers: Workers,
    seams: Seams = PRODUCTION,
    *,
    metrics: Metrics = NO_METRICS,
    pushes: RedisChangePushes | None = None,
) -> Keysvc:
    """Connects the use cases to their ports: the whole graph, nothing started."""
    verifier = seams.verifier or Verifier(settings.argon2)
    change_log = ChangeLog(
        lease_seconds=settings.lease_seconds,
        read_timeout_seconds=settings.database_timeout_seconds,
        clock=seams.lease_clock,
    )
    follower = ChangeFollower(
        store, workers, change_log, interval_seconds=settings.lease_seconds / 5
    )

    async def flush(uses: Mapping[str, datetime]) -> None:
        await workers.db(store.record_last_used, uses)

    recorder = LastUsedRecorder(flush, interval_seconds=settings.last_used_flush_seconds)
    return Keysvc(
        settings=settings,
        store=store,
        cache=cache,
        workers=workers,
        metrics=metrics,
        verifier=verifier,
        change_log=change_log,
        follower=follower,
        recorder=recorder,
        admin=KeyAdmin(
            store,
            cache,
            verifier,
            workers,
            change_log,
            clock=seams.clock,
            announcer=NO_ANNOUNCER if pushes is None else pushes,
            metrics=metrics,
        ),
        pushes=pushes,
        authorizer=seams.authorizer_class(
            store,
            cache,
            verifier,
            workers,
            recorder,
            change_log,
            clock=seams.clock,
            monotonic=seams.monotonic,
            sleep=seams.sleep,
        ),
    )


@contextlib.asynccontextmanager
async def built(
    settings: Settings,
    *,
    engine: Engine | None = None,
    seams: Seams = PRODUCTION,
    metrics: Metrics | None = None,
) -> AsyncIterator[Keysvc]:
    """keysvc on the settings' database and cache, started; stopped and closed on exit.

    `engine` replaces the settings' database (already migrated; left open on exit);
    `metrics`, what the settings ask for (open_metrics).
    """
    if metrics is None:
        metrics = open_metrics(settings)
    workers = ThreadWorkers(db_timeout_seconds=settings.database_timeout_seconds, metrics=metrics)
    owned = engine is None
    if engine is None:
        engine = await asyncio.to_thread(
            open_database, settings, connections=workers.database_connections
        )
    store = SqlKeyStore(engine)
    cache: KeyCache | None = None
    try:
        try:
            mac_key = await workers.db(store.cache_mac_key)
        except Unavailable as err:
            raise StartupError(f"cannot read the database: {err}") from err
        cache = open_cache(settings, mac_key, monotonic=seams.monotonic, metrics=metrics)
        keysvc = assemble(
            settings,
            store,
            cache,
            workers,
            seams,
            metrics=metrics,
            pushes=open_pushes(settings, metrics),
        )
        try:
            await keysvc.start()
        except Unavailable as err:
            raise StartupError(f"cannot read the change log from the database: {err}") from err
        try:
            yield keysvc
        finally:
            try:
                await keysvc.stop()
            except Exception as err:
                log.error("final last-used flush failed: %s", err)
    finally:
        if cache is not None:
            await cache.close()
        workers.close()
        if owned:
            engine.dispose()


def open_database(settings: Settings, *, connections: int = 5) -> Engine:
    """An engine on the settings' database, migrated to the latest schema."""
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


def open_metrics(settings: Settings) -> Metrics:
    """Prometheus metrics in a registry of their own when --metrics-listen asks for them (in
    files, for a supervisor to sum, under $PROMETHEUS_MULTIPROC_DIR); else NO_METRICS."""
    if settings.metrics_listen is None:
        return NO_METRICS
    # Refuses a multiprocess directory that is missing or was set too late, before any
    # series is made.
    multiprocess_directory()
    return PrometheusMetrics(CollectorRegistry())


def open_pushes(settings: Settings, metrics: Metrics) -> RedisChangePushes | None:
    """Pushed changes between the replicas sharing the settings' Redis; None without one."""
    if settings.redis_url is None:
        return None
    return RedisChangePushes(
        settings.redis_url,
        namespace=settings.redis_namespace,
        timeout_seconds=settings.redis_timeout_seconds,
        metrics=metrics,
    )


def open_cache(
    settings: Settings,
    mac_key: bytes,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    metrics: Metrics = NO_METRICS,
) -> KeyCache:
    if settings.redis_url is None:
        log.info("cache: in-process (set KEYSVC_REDIS_URL to share one between replicas)")
        memory = MemoryKeyCache(ttl_seconds=settings.cache_ttl_seconds, clock=monotonic)
        # The replica's memory alone, counted as such.
        return NearKeyCache(memory, None, metrics=metrics)
    shared = RedisKeyCache(
        settings.redis_url,
        GrantCodec(mac_key),
        namespace=settings.redis_namespace,
        timeout_seconds=settings.redis_timeout_seconds,
        ttl_seconds=settings.cache_ttl_seconds,
    )
    log.info(
        "cache: redis %s (namespace %r), with this replica's memory in front",
        without_password(settings.redis_url),
        settings.redis_namespace,
    )
    near = MemoryKeyCache(ttl_seconds=settings.cache_ttl_seconds, clock=monotonic)
    return NearKeyCache(near, shared, metrics=metrics)


def without_password(url: str) -> str:
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
