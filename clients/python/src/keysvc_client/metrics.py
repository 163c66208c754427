"""What each Guard counts (`guard.stats()`), and the same for Prometheus when prometheus-client
is installed (`pip install 'keysvc-client[metrics]'`).

One collector over every Guard of the process, blocking and asyncio, is registered in
prometheus_client.REGISTRY when the first Guard is built; the API server's own /metrics then
serves it with no code of its own:

    keysvc_guard_hits_total          checks decided by the near cache, without an RPC
    keysvc_guard_misses_total        checks that asked keysvc
    keysvc_guard_renewals_total      leases renewed in the background over the session
    keysvc_guard_pushes_total        changes of keys keysvc pushed over the session
    keysvc_guard_connects_total      Session streams opened (the first, and reconnections)
    keysvc_guard_fallbacks_total     checks asked over the unary Authorize, the stream down
    keysvc_guard_unavailable_total   checks answered unavailable (503): keysvc could not decide
    keysvc_guard_entries             keys held in near caches now
    keysvc_guard_sessions_up         Session streams open now

The counters of a Guard that is garbage-collected stay in the totals, so they never go down.
Under prometheus-client's multiprocess mode a custom collector is not aggregated across
processes: each process's Guards are counted in that process's own registry only.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["GuardStats"]

log = logging.getLogger("keysvc_client.guard")


@dataclass(frozen=True, slots=True)
class GuardStats:
    """A Guard's counts since it was built, and what it holds now."""

    hits: int = 0
    misses: int = 0
    renewals: int = 0
    pushes: int = 0
    connects: int = 0
    fallbacks: int = 0
    unavailable: int = 0
    entries: int = 0
    sessions_up: int = 0


_COUNTERS = {
    "hits": "Checks decided by a Guard's near cache, without an RPC.",
    "misses": "Checks a Guard asked keysvc about.",
    "renewals": "Leases a Guard renewed in the background over its Session stream.",
    "pushes": "Changes of keys keysvc pushed to a Guard over its Session stream.",
    "connects": "Session streams a Guard opened: the first, and each reconnection.",
    "fallbacks": "Checks a Guard asked over the unary Authorize because its stream was down.",
    "unavailable": "Checks a Guard answered unavailable: keysvc could not decide.",
}
_GAUGES = {
    "entries": "Keys held in Guards' near caches.",
    "sessions_up": "Guards' Session streams open now.",
}


class _Count:
    """A counter that threads add to without a lock and without losing an addition:
    next() on itertools.count is one step for the interpreter."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = itertools.count()

    def add(self) -> None:
        next(self._count)

    @property
    def value(self) -> int:
        # "count(N)": N is the next number, the count of additions so far.
        return int(repr(self._count)[6:-1])


class Counters:
    """One Guard's counters, and how to read what it holds now."""

    __slots__ = ("connects", "entries", "fallbacks", "hits", "misses", "pushes", "renewals",
                 "sessions_up", "unavailable")  # fmt: skip

    def __init__(self) -> None:
        self.hits = _Count()
        self.misses = _Count()
        self.renewals = _Count()
        self.pushes = _Count()
        self.connects = _Count()
        self.fallbacks = _Count()
        self.unavailable = _Count()
        # Set by the Guard to read its near cache and stream (never the Guard itself, which
        # would keep it alive).
        self.entries: Callable[[], int] = lambda: 0
        self.sessions_up: Callable[[], int] = lambda: 0

    def stats(self) -> GuardStats:
        return GuardStats(
            hits=self.hits.value,
            misses=self.misses.value,
            renewals=self.renewals.value,
            pushes=self.pushes.value,
            connects=self.connects.value,
            fallbacks=self.fallbacks.value,
            unavailable=self.unavailable.value,
            entries=self.entries(),
            sessions_up=self.sessions_up(),
        )


_lock = threading.Lock()
_live: set[Counters] = set()
_retired: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
_exported = False


def track(guard: object, counters: Counters) -> None:
    """Counts `counters` in the process's totals, and exports the totals to Prometheus if it
    is installed (once per process)."""
    with _lock:
        _live.add(counters)
    weakref.finalize(guard, _retire, counters)
    _export()


def _retire(counters: Counters) -> None:
    stats = counters.stats()
    with _lock:
        _live.discard(counters)
        for name in _COUNTERS:
            _retired[name] += getattr(stats, name)


def totals() -> GuardStats:
    """Every Guard's counts since the process started, and what live Guards hold now."""
    with _lock:
        live = list(_live)
        values: dict[str, int] = dict(_retired)
    for name in _GAUGES:
        values[name] = 0
    for counters in live:
        stats = counters.stats()
        for field in fields(GuardStats):
            values[field.name] += getattr(stats, field.name)
    return GuardStats(**values)


def _export() -> None:
    global _exported
    with _lock:
        if _exported:
            return
        _exported = True
    try:
        import prometheus_client  # optional: keysvc-client[metrics]
    except ImportError:
        return
    try:
        prometheus_client.REGISTRY.register(_Collector())
    except ValueError as err:
        # Another copy of this module (or an app) already registered these names.
        log.warning("keysvc_guard_* metrics not exported to Prometheus: %s", err)


class _Collector:
    """prometheus_client's custom-collector protocol: collect() and describe()."""

    def collect(self) -> Iterator[Any]:
        return self._families(totals())

    def describe(self) -> Iterator[Any]:
        return self._families(GuardStats())

    @staticmethod
    def _families(stats: GuardStats) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        for name, text in _COUNTERS.items():
            yield CounterMetricFamily(f"keysvc_guard_{name}", text, value=getattr(stats, name))
        for name, text in _GAUGES.items():
            yield GaugeMetricFamily(f"keysvc_guard_{name}", text, value=getattr(stats, name))
