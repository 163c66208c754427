"""What the benchmark prints: the machine line and the one table, with the targets."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from bench.load_client import Load

_BEGAN = time.monotonic()


def progress(message: str) -> None:
    """A line on standard error, with the seconds since the benchmark began."""
    print(f"bench {time.monotonic() - _BEGAN:5.1f}s: {message}", file=sys.stderr, flush=True)


def machine_line() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.1f} GiB"
    except (ValueError, OSError):
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {model}, {os.cpu_count()} cores{memory};"
        f" Python {platform.python_version()}, grpcio {metadata.version('grpcio')};"
        f" load average at start {load}"
    )


@dataclass(frozen=True)
class Row:
    measurement: str
    throughput: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    # CPU the server process spent per request, in microseconds (all its threads).
    server_us: float | None = None
    # Cores busy, on average, with processes that are not part of the benchmark.
    others_cores: float | None = None
    result: str = ""
    target: str = ""
    # None: no target on this row.
    met: bool | None = None


def _number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    header = (
        "measurement", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "other load (cores)",
        "result", "target", "",
    )  # fmt: skip
    cells = [header]
    for row in rows:
        verdict = "" if row.met is None else ("PASS" if row.met else "FAIL")
        cells.append(
            (
                row.measurement,
                _number(row.throughput, 0),
                _number(row.p50_ms, 2),
                _number(row.p99_ms, 2),
                _number(row.server_us, 0),
                _number(row.others_cores, 2),
                row.result,
                row.target,
                verdict,
            )
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]
    numeric = {1, 2, 3, 4, 5}
    lines = []
    for number, line in enumerate(cells):
        text = "  ".join(
            cell.rjust(widths[column]) if column in numeric else cell.ljust(widths[column])
            for column, cell in enumerate(line)
        )
        lines.append(text.rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def measured(name: str, load: Load, **verdict: Any) -> Row:
    """A row of a closed loop's load, with `verdict` (result, target, met) beside it."""
    return Row(
        name,
        load.throughput,
        load.p50_ms,
        load.p99_ms,
        load.server_us,
        load.others_cores,
        **verdict,
    )
