"""The row of `keysvc serve --workers 2` against one process (`--workers 1`, replica A).

Both on the run's database and hot Redis prefix, measured with one load generator that spreads
its 32 requests in flight over CONNECTIONS connections of their own: the kernel hands each
connection to one worker (SO_REUSEPORT), so one connection would keep one worker busy and the
other idle. The two sides take turns in slices, as every comparison here. The machine has two
cores, and the load generator needs about one of them: two workers cannot get a core each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.load import process_cpu_seconds
from bench.processes import Child, children_of
from bench.report import Row, measured, progress

if TYPE_CHECKING:
    from bench.run import Bench

CONNECTIONS = 8
CONCURRENCY = 32


def compare(bench: Bench, hot: list[str], single: Child, single_target: str) -> list[Row]:
    progress(
        f"workers: keysvc --workers 2 against replica A (one process), hot @{CONCURRENCY} over"
        f" {CONNECTIONS} connections, alternating"
    )
    assert bench.redis is not None
    supervisor = bench.start_keysvc(
        "keysvc-workers", bench.redis.prefix("hot"), options=["--workers", "2"]
    )
    try:
        target = bench.keysvc_address(supervisor)
    except RuntimeError as err:
        # A row that cannot run says so; the others stand.
        supervisor.stop()
        bench.children.remove(supervisor)
        bench.notes.append(f"workers: keysvc --workers 2 did not start: {err}")
        return [Row("workers: keysvc --workers 2", result="did not start (see the notes)")]
    workers = children_of(supervisor.process.pid)
    if len(workers) != 2:
        bench.notes.append(f"workers: the supervisor has {len(workers)} children, not 2")
    one = bench.closed_loop(
        "load-workers-1", single, single_target, hot, CONCURRENCY, channels=CONNECTIONS
    )
    two = bench.closed_loop(
        "load-workers-2",
        supervisor,
        target,
        hot,
        CONCURRENCY,
        channels=CONNECTIONS,
        server_pids=workers,
    )
    before = [process_cpu_seconds(pid) for pid in workers]
    load_1, load_2 = bench.compare(one, two)
    used = [process_cpu_seconds(pid) - start for pid, start in zip(workers, before, strict=True)]
    bench.finish(one, two)
    supervisor.stop()
    bench.children.remove(supervisor)
    shares = ", ".join(f"{share / max(sum(used), 1e-9):.0%}" for share in used)
    bench.notes.append(
        f"workers: CPU of the two workers, split {shares} over the comparison (how evenly the"
        f" kernel spread {CONNECTIONS} connections); the load generator used"
        f" {load_2.client_us:,.0f} µs of CPU per request beside them on the same 2 cores."
    )
    ratio = load_2.throughput / load_1.throughput
    return [
        measured(
            f"workers: hot @{CONCURRENCY} over {CONNECTIONS} connections, (a) --workers 1", load_1
        ),
        measured(
            f"workers: hot @{CONCURRENCY} over {CONNECTIONS} connections, (b) --workers 2",
            load_2,
            result=f"b/a {ratio:.2f} (2 cores, load generator included)",
        ),
    ]
