"""The recovery row: what a replica serving 10,000 keys does when Redis loses them.

A replica of its own (keysvc R) on a database of its own holding KEYS active keys, and on a
private redis-server (the shared one is never flushed). The keys are written with SQL
(bench.filler), with verifiers made with cheap argon2 parameters that R is started with, and
their grants are put into Redis as keysvc's replicas would have after using them (keysvc's own
GrantCodec, under the database's MAC key): a first use through R costs 4 to 5 ms of CPU here
even without argon2 (SQLAlchemy, psycopg, the fill), so 10,000 of them would take most of a
minute. Argon2 and the database play no part in what is measured unless R reads a key again.

One closed loop at 32 in flight cycles through all the keys: first until each was used once (R
read every grant from Redis into its memory), then in one phase whose answers are counted in
SLOT-second slots, during which the benchmark empties Redis (FLUSHALL), and later kills
redis-server and starts it again, empty, on the same port. Recovery is the time from each
event until the throughput, averaged over the next RECOVERED_SLOTS slots, is back to 90% of
what it was before the first. Throughput on a shared machine is noisy at that scale, so R's own
counters (--metrics-listen) say where each interval's answers came from: its memory, Redis, or
the database.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import psycopg
import redis

from bench import filler
from bench.processes import PYTHON, START_TIMEOUT, Child
from bench.report import Row, progress
from keysvc.adapters.cache.codec import GrantCodec
from keysvc.core import keys, networks
from keysvc.core.hashing import Argon2Parameters
from keysvc.core.model import KeyGrant, Mode

if TYPE_CHECKING:
    from bench.run import Bench

KEYS = 10_000
CONCURRENCY = 32
ARGON2 = Argon2Parameters(time_cost=1, memory_cost_kib=8, parallelism=1)
SLOT = 0.1
NAMESPACE = "recovery:"
# keysvc's default cache TTL.
GRANT_TTL_MS = 3600 * 1000
BEFORE_SECONDS = 2.0
AFTER_SECONDS = 3.0
RECOVERED_SLOTS = 5
RECOVERED = 0.9


class PrivateRedis:
    """A redis-server of the benchmark's own on a free loopback port, without persistence."""

    def __init__(self, bench: Bench, name: str) -> None:
        self._bench = bench
        self._name = name
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.child = self._start()

    def _start(self) -> Child:
        directory = self._bench.workdir / self._name
        directory.mkdir(exist_ok=True)
        argv = [
            PYTHON, "-m", "bench.processes", "exec", "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(directory),
        ]  # fmt: skip
        child = self._bench.child(self._name, argv)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    client.ping()
                return child
            except redis.RedisError:
                if not child.running or time.monotonic() > deadline:
                    raise RuntimeError(f"{self._name} did not start:\n{child.log_tail()}") from None
                time.sleep(0.02)

    def flush(self) -> None:
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            client.flushall()

    def restart(self) -> None:
        """Killed (SIGKILL: nothing saved) and started again, empty, on the same port."""
        self.child.process.kill()
        self.child.process.wait()
        self._bench.children.remove(self.child)
        self.child = self._start()

    def stop(self) -> None:
        self.child.stop()
        self._bench.children.remove(self.child)


def fill_redis(database_url: str, redis_url: str, raw_keys: list[str]) -> None:
    """Each key's grant in Redis, as a replica that read it from the database would put it."""
    with psycopg.connect(database_url) as conn:
        mac_key = conn.execute("SELECT mac_key FROM cache_mac_key").fetchone()
        head = conn.execute("SELECT max(seq) FROM key_changes").fetchone()
    assert mac_key is not None and head is not None
    codec = GrantCodec(bytes.fromhex(mac_key[0]))
    with redis.Redis.from_url(redis_url) as client, client.pipeline(transaction=False) as pipe:
        for raw_key in raw_keys:
            parsed = keys.parse(raw_key)
            assert parsed is not None
            grant = KeyGrant(
                key_id=parsed.key_id,
                account_id=filler.ACCOUNT,
                mode=Mode.LIVE,
                scopes=frozenset(filler.SCOPES.split()),
                revoked=False,
                seq=int(head[0]),
                digest=hashlib.sha256(raw_key.encode()).digest(),
                expire_time=None,
                allowed_ips=networks.parsed(()),
            )
            pipe.set(f"{NAMESPACE}grant:{parsed.key_id}", codec.encode(grant), px=GRANT_TTL_MS)
        pipe.execute()


_SAMPLE = re.compile(r"^(?P<name>keysvc_[a-z_]+)(?P<labels>\{[^}]*\})? (?P<value>\S+)$")
# What each interval is told by: R's counters, as (series, labels).
_COUNTERS = {
    "memory hits": ("keysvc_cache_lookups_total", '{level="memory",result="hit"}'),
    "Redis look-ups": ("keysvc_cache_lookups_total", '{level="redis",result="hit"}'),
    "Redis misses": ("keysvc_cache_lookups_total", '{level="redis",result="miss"}'),
    "Redis errors": ("keysvc_backend_errors_total", '{backend="redis"}'),
    "database reads": ("keysvc_cold_lookups_total", ""),
}


def counters(url: str) -> dict[str, float]:
    """R's counters of where its answers came from, as its metrics listener serves them."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if match := _SAMPLE.match(line):
            samples[match["name"], match["labels"] or ""] = float(match["value"])
    return {what: samples.get(series, 0.0) for what, series in _COUNTERS.items()}


def between(start: dict[str, float], end: dict[str, float]) -> str:
    """Where R's answers came from between two readings of its counters."""
    counts = {what: end[what] - start[what] for what in start}
    redis = counts["Redis look-ups"] + counts["Redis misses"]
    return (
        f"{counts['memory hits']:,.0f} from memory, {redis:,.0f} Redis look-ups"
        f" ({counts['Redis errors']:,.0f} failed), {counts['database reads']:,.0f} database reads"
    )


def recovery_after(
    timeline: list[int], origin: float, event: float, baseline: float
) -> tuple[float, float, float]:
    """Seconds from `event` until the throughput over RECOVERED_SLOTS slots is back to
    RECOVERED of `baseline` (answers a slot); the second after `event`, and its lowest slot,
    as fractions of `baseline`."""
    first = max(0, int((event - origin) / SLOT))
    second = timeline[first : first + int(1 / SLOT)]
    after, lowest = sum(second) / len(second) / baseline, min(second) / baseline
    for start in range(first, len(timeline) - RECOVERED_SLOTS + 1):
        window = timeline[start : start + RECOVERED_SLOTS]
        if sum(window) / len(window) >= RECOVERED * baseline:
            return max(0.0, origin + start * SLOT - event), after, lowest
    return float("inf"), after, lowest


def measure(bench: Bench) -> list[Row]:
    progress(
        f"recovery: a replica of its own, {KEYS:,} keys written with SQL, a private"
        " redis-server; hot @32 over every key, then Redis emptied, then restarted empty"
    )
    database = bench.new_database(migrated=True)
    raw_keys = filler.insert_usable(database.url, KEYS, ARGON2, "recovery")
    private = PrivateRedis(bench, "redis-recovery")
    fill_redis(database.url, private.url, raw_keys)
    replica = bench.start_keysvc(
        "keysvc-recovery",
        NAMESPACE,
        database_url=database.url,
        redis_url=private.url,
        options=[
            "--argon2-time-cost", str(ARGON2.time_cost),
            "--argon2-memory-cost-kib", str(ARGON2.memory_cost_kib),
            "--argon2-parallelism", str(ARGON2.parallelism),
            "--metrics-listen", "127.0.0.1:0",
        ],
    )  # fmt: skip
    target, metrics = bench.keysvc_addresses(replica)
    load = bench.closed_loop("load-recovery", replica, target, raw_keys, CONCURRENCY)
    load.expect("ready", START_TIMEOUT)

    warmed, began = 0, time.monotonic()
    while warmed < KEYS:
        phase = load.run(1.0)
        warmed += phase["requests"]
        if phase["errors"] or phase["refused"]:
            bench.notes.append(
                f"recovery, first uses: {phase['errors']} errors ({phase['first_error']}),"
                f" {phase['refused']} refused"
            )
    warm_seconds = time.monotonic() - began

    load.start(timeline=SLOT)
    seen = [counters(metrics)]
    time.sleep(BEFORE_SECONDS + 0.2)  # the phase's ramp, then the time before
    seen.append(counters(metrics))
    emptied = time.monotonic()
    private.flush()
    time.sleep(AFTER_SECONDS)
    seen.append(counters(metrics))
    restarted = time.monotonic()
    private.restart()
    restart_seconds = time.monotonic() - restarted
    time.sleep(AFTER_SECONDS)
    events: dict[str, Any] = load.stop()
    seen.append(counters(metrics))
    bench.finish(load)
    replica.stop()
    bench.children.remove(replica)
    private.stop()

    origin = events["window_from"]
    timeline = events["timeline"][: int(events["seconds"] / SLOT)]
    before = timeline[int(0.5 / SLOT) : int((emptied - origin) / SLOT)]
    baseline = sum(before) / len(before)
    if events["errors"] or events["refused"]:
        bench.notes.append(
            f"recovery: {events['errors']} RPC errors ({events['first_error']}),"
            f" {events['refused']} refused while Redis was emptied and restarted"
        )
    lowest_before = min(before) / baseline
    bench.notes.append(
        f"recovery: the first use of each of the {KEYS:,} keys (from Redis into R's memory)"
        f" took {warm_seconds:.1f} s in all; redis-server took {restart_seconds:.2f} s to"
        f" restart; answers per {SLOT:g} s: {' '.join(str(count) for count in timeline)}."
    )
    rows = [
        Row(
            f"recovery: hot @{CONCURRENCY} cycling {KEYS:,} keys, before",
            baseline / SLOT,
            result="(req/s over the 1.5 s before)",
        )
    ]
    bench.notes.append(f"recovery, the {BEFORE_SECONDS:g} s before: {between(seen[0], seen[1])}.")
    events_seen = ((emptied, "Redis emptied (FLUSHALL)"), (restarted, "Redis restarted"))
    for number, (event, label) in enumerate(events_seen, 1):
        seconds, after, lowest = recovery_after(timeline, origin, event, baseline)
        progress(
            f"  {label}: back to 90% after {seconds:.2f} s; the second after at {after:.2f} of"
            f" before, its lowest {SLOT:g} s {lowest:.2f} (before: {lowest_before:.2f})"
        )
        rows.append(
            Row(
                f"  {label}: until >= 90% of before",
                after * baseline / SLOT,
                result=(
                    f"{seconds:.1f} s; 1 s after: {after:.2f} of before, lowest {SLOT:g} s"
                    f" {lowest:.2f} (before: {lowest_before:.2f})"
                ),
            )
        )
        bench.notes.append(
            f"recovery, the {AFTER_SECONDS:g} s after {label}:"
            f" {between(seen[number], seen[number + 1])}."
        )
    return rows
