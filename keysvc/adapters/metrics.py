"""The Metrics port on prometheus-client: what keysvc counts, as `keysvc_*` series of one
registry (served by keysvc.runtime.metrics_listener on --metrics-listen).

Every call is on some hot path, so each series a call can touch is bound once, up front, and
looked up in a dict; label values first seen later (a reason named another way, say) are
bound on first use and kept. Every series starts at 0, so rates and alerts see it from the
first scrape.

Under prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set in the environment
before prometheus_client is first imported: `keysvc serve --workers N`), each process writes
its values to files in that directory and the supervisor serves their sum; the one gauge sums
the live processes only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from keysvc.core.errors import StartupError
from keysvc.core.model import Reason
from keysvc.ports.metrics import Backend, CacheLevel, PushChannel

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Authorize takes ~10 µs on a hot key in process, a millisecond or two with argon2, and up to
# the database timeout when a backend stalls.
AUTHORIZE_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# A narrowing change waits out one lease (1 s by default); far longer means the change log's
# reads are slow or the replica is starved.
REVOCATION_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

TRANSPORTS = ("unary", "session")
# The reasons a decision can carry: the Reason values, and what the edge reports when no
# decision could be made.
REASONS = (*(reason.value for reason in Reason), "unavailable", "unspecified")
CACHE_LEVELS: tuple[CacheLevel, ...] = ("memory", "redis")
BACKENDS: tuple[Backend, ...] = ("database", "redis")
PUSH_CHANNELS: tuple[PushChannel, ...] = ("replicas", "sessions")

K = TypeVar("K")
C = TypeVar("C")


def _reason_label(reason: str) -> str:
    """ "ALLOWED", "REASON_ALLOWED" and "allowed" are one series: "allowed"."""
    return reason.lower().removeprefix("reason_")


def multiprocess_directory() -> Path | None:
    """The directory each process writes its values to, or None in a single process.

    StartupError when the environment and prometheus-client disagree: the variable set after
    prometheus_client was imported (the values would stay in this process's memory, and the
    supervisor would serve zeros), or a directory that is not there.
    """
    directory = os.environ.get(MULTIPROCESS_VARIABLE)
    in_files = bool(getattr(values.ValueClass, "_multiprocess", False))
    if not directory:
        if in_files:
            raise StartupError(
                f"${MULTIPROCESS_VARIABLE} was unset after prometheus_client was imported"
            )
        return None
    if not in_files:
        raise StartupError(
            f"${MULTIPROCESS_VARIABLE} was set after prometheus_client was imported: set it"
            " before keysvc starts (the supervisor sets it before starting its workers)"
        )
    path = Path(directory)
    if not path.is_dir():
        raise StartupError(f"${MULTIPROCESS_VARIABLE} {directory}: not a directory")
    return path


class PrometheusMetrics:
    """keysvc's series, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._decisions_total = Counter(
            "keysvc_authorize_decisions_total",
            "Authorize decisions, by reason and transport (unary RPC or session stream).",
            ("reason", "transport"),
            registry=registry,
        )
        self._authorize_seconds = Histogram(
            "keysvc_authorize_duration_seconds",
            "How long Authorize took to decide, by transport.",
            ("transport",),
            buckets=AUTHORIZE_BUCKETS,
            registry=registry,
        )
        self._lookups_total = Counter(
            "keysvc_cache_lookups_total",
            "Grants looked up, by cache level (this replica's memory, the shared cache) and"
            " result (hit or miss).",
            ("level", "result"),
            registry=registry,
        )
        self._cold_total = Counter(
            "keysvc_cold_lookups_total",
            "Keys read from the database for Authorize (the cache could not decide).",
            registry=registry,
        )
        self._hashing = Gauge(
            "keysvc_hashing_queued",
            "argon2 jobs waiting for or running on the hashing pool.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._revocation_wait = Histogram(
            "keysvc_revocation_wait_seconds",
            "How long a narrowing change (RevokeKey, UpdateKey, RollKey, leaks) waited out the"
            " lease before returning.",
            buckets=REVOCATION_WAIT_BUCKETS,
            registry=registry,
        )
        self._pushes_sent_total = Counter(
            "keysvc_pushes_sent_total",
            "Changes pushed, by channel (to other replicas, to Guards' session streams).",
            ("channel",),
            registry=registry,
        )
        self._pushes_received_total = Counter(
            "keysvc_pushes_received_total",
            "Changes received, by channel.",
            ("channel",),
            registry=registry,
        )
        self._backend_errors_total = Counter(
            "keysvc_backend_errors_total",
            "Calls to a backend that failed or timed out, by backend.",
            ("backend",),
            registry=registry,
        )

        self._decisions: dict[tuple[str, str], Counter] = {}
        self._latencies: dict[str, Histogram] = {}
        for transport in TRANSPORTS:
            self._latencies[transport] = self._authorize_seconds.labels(transport)
            for reason in REASONS:
                self._decisions[reason, transport] = self._decisions_total.labels(reason, transport)
        self._lookups = {
            (level, hit): self._lookups_total.labels(level, "hit" if hit else "miss")
            for level in CACHE_LEVELS
            for hit in (True, False)
        }
        self._sent = {channel: self._pushes_sent_total.labels(channel) for channel in PUSH_CHANNELS}
        self._received = {
            channel: self._pushes_received_total.labels(channel) for channel in PUSH_CHANNELS
        }
        self._errors = {backend: self._backend_errors_total.labels(backend) for backend in BACKENDS}

    def decision(self, reason: str, seconds: float, *, transport: str) -> None:
        counter = self._decisions.get((reason, transport))
        if counter is None:
            counter = _bind(
                self._decisions,
                (reason, transport),
                lambda: self._decisions_total.labels(_reason_label(reason), transport),
            )
        latency = self._latencies.get(transport)
        if latency is None:
            latency = _bind(
                self._latencies, transport, lambda: self._authorize_seconds.labels(transport)
            )
        counter.inc()
        latency.observe(seconds)

    def cache_lookup(self, level: CacheLevel, *, hit: bool) -> None:
        counter = self._lookups.get((level, hit))
        if counter is None:
            counter = _bind(
                self._lookups,
                (level, hit),
                lambda: self._lookups_total.labels(level, "hit" if hit else "miss"),
            )
        counter.inc()

    def cold_lookup(self) -> None:
        self._cold_total.inc()

    def hashing_queued(self, delta: int) -> None:
        self._hashing.inc(delta)

    def revocation_wait(self, seconds: float) -> None:
        self._revocation_wait.observe(seconds)

    def push_sent(self, channel: PushChannel, count: int = 1) -> None:
        counter = self._sent.get(channel)
        if counter is None:
            counter = _bind(self._sent, channel, lambda: self._pushes_sent_total.labels(channel))
        counter.inc(count)

    def push_received(self, channel: PushChannel, count: int = 1) -> None:
        counter = self._received.get(channel)
        if counter is None:
            counter = _bind(
                self._received, channel, lambda: self._pushes_received_total.labels(channel)
            )
        counter.inc(count)

    def backend_error(self, backend: Backend) -> None:
        counter = self._errors.get(backend)
        if counter is None:
            counter = _bind(
                self._errors, backend, lambda: self._backend_errors_total.labels(backend)
            )
        counter.inc()


def _bind(children: dict[K, C], key: K, child: Callable[[], C]) -> C:
    """The series for label values not bound up front, bound now and kept."""
    bound = children[key] = child()
    return bound
