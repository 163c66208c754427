"""The scale row (BENCH_SCALE=1): a replica on a database of a million keys against one on the
run's small database.

The million are filler keys written with SQL (bench.filler: one shared verifier, a `created`
change each), in a database of their own, migrated first. Two replicas are then started the same
way, one on each database: how long each takes to serve (the change log reads every key id
before it serves: docs/revocation.md) and its resident memory once serving. Then the hot-path
rows, interleaved between the two: hot Authorize at 1 and at 32 in flight, each replica with 4
keys of its own database (the small one's are the run's hot keys, in the run's Redis prefix).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench import filler
from bench.processes import Child, memory_kib
from bench.report import Row, measured, progress

if TYPE_CHECKING:
    from bench.run import Bench

FILLER_KEYS = 1_000_000
HOT_KEYS = 4
# Both hot-path rows within 10% of the small database's.
WITHIN = 0.10


def started(bench: Bench, child: Child) -> tuple[str, float, dict[str, int]]:
    """Where `child` serves, the seconds it took to, and its memory then."""
    target = bench.keysvc_address(child)
    return target, time.monotonic() - child.started, memory_kib(child.process.pid)


def measure(bench: Bench, hot: list[str]) -> list[Row]:
    assert bench.redis is not None
    progress(f"scale: {FILLER_KEYS:,} keys written with SQL into a database of their own")
    database = bench.new_database(migrated=True)
    began = time.monotonic()
    filler.insert_filler(database.url, FILLER_KEYS)
    inserted = time.monotonic() - began
    progress(f"  written in {inserted:.1f} s; starting a replica on it and one on the small one")
    large = bench.start_keysvc(
        "keysvc-scale", bench.redis.prefix("scale"), database_url=database.url
    )
    large_target, large_seconds, large_memory = started(bench, large)
    small = bench.start_keysvc("keysvc-small", bench.redis.prefix("hot"))
    small_target, small_seconds, small_memory = started(bench, small)
    progress(
        f"  serving after {large_seconds:.2f} s, {large_memory.get('VmRSS', 0) / 1024:.0f} MiB"
        f" (small database: {small_seconds:.2f} s, {small_memory.get('VmRSS', 0) / 1024:.0f} MiB)"
    )
    large_hot = [created.secret for created in bench.create_keys(large_target, HOT_KEYS, "hot")]

    loads = {}
    for concurrency in (1, 32):
        progress(f"  hot Authorize @{concurrency}: small and large database, alternating")
        one = bench.closed_loop(f"load-small-{concurrency}", small, small_target, hot, concurrency)
        other = bench.closed_loop(
            f"load-large-{concurrency}", large, large_target, large_hot, concurrency
        )
        loads[concurrency] = bench.compare(one, other)
        bench.finish(one, other)
    for child in (large, small):
        child.stop()
        bench.children.remove(child)

    (small_1, large_1), (small_32, large_32) = loads[1], loads[32]
    p50_ratio = large_1.p50_ms / small_1.p50_ms
    throughput_ratio = large_32.throughput / small_32.throughput
    mib = 1024
    return [
        Row(
            f"scale: replica start-up, {FILLER_KEYS:,} keys",
            result=(
                f"{large_seconds:.1f} s, {large_memory.get('VmRSS', 0) / mib:.0f} MiB resident"
                f" (small: {small_seconds:.1f} s, {small_memory.get('VmRSS', 0) / mib:.0f} MiB);"
                f" keys written in {inserted:.0f} s"
            ),
        ),
        measured("scale: Authorize hot @1, (a) small database", small_1),
        measured(
            f"scale: Authorize hot @1, (b) {FILLER_KEYS:,} keys",
            large_1,
            result=f"p50 b/a {p50_ratio:.2f}",
            target=f"p50 b/a <= {1 + WITHIN:g}",
            met=p50_ratio <= 1 + WITHIN,
        ),
        measured("scale: Authorize hot @32, (a) small database", small_32),
        measured(
            f"scale: Authorize hot @32, (b) {FILLER_KEYS:,} keys",
            large_32,
            result=f"b/a {throughput_ratio:.2f}",
            target=f"b/a >= {1 - WITHIN:g}",
            met=throughput_ratio >= 1 - WITHIN,
        ),
    ]
