"""The benchmark's side of a load generator process: send it commands, read its JSON lines."""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import PYTHON, Child

ANSWER_TIMEOUT = 60.0


def percentile(ordered: list[int], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


@dataclass(frozen=True)
class Load:
    """Phases of one closed loop taken together: counts, pooled latencies, summed CPU."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    allowed: int
    refused: int
    errors: int
    first_error: str
    # CPU seconds over the measured windows: "server", "ours" (the rest of the benchmark
    # and Redis), "client", "machine" (every process), and "wall" seconds.
    cpu: dict[str, float]

    @classmethod
    def of(cls, phases: list[dict[str, Any]]) -> Load:
        latencies = sorted(value for phase in phases for value in phase["latencies_us"])
        return cls(
            requests=sum(phase["requests"] for phase in phases),
            seconds=sum(phase["seconds"] for phase in phases),
            p50_ms=percentile(latencies, 0.50) / 1000,
            p99_ms=percentile(latencies, 0.99) / 1000,
            allowed=sum(phase["allowed"] for phase in phases),
            refused=sum(phase["refused"] for phase in phases),
            errors=sum(phase["errors"] for phase in phases),
            first_error=next((p["first_error"] for p in phases if p["first_error"]), ""),
            cpu={name: sum(phase["cpu"][name] for phase in phases) for name in phases[0]["cpu"]},
        )

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @property
    def server_us(self) -> float:
        return self.cpu["server"] / max(self.requests, 1) * 1e6

    @property
    def client_us(self) -> float:
        return self.cpu["client"] / max(self.requests, 1) * 1e6

    @property
    def others_cores(self) -> float:
        """Cores busy on average with processes that are not the benchmark's."""
        cpu = self.cpu
        theirs = cpu["machine"] - cpu["server"] - cpu["ours"] - cpu["client"]
        return max(theirs, 0.0) / cpu["wall"]

    def describe(self) -> str:
        return (
            f"{self.throughput:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms;"
            f" CPU per request: server {self.server_us:,.0f} µs, client {self.client_us:,.0f} µs;"
            f" other processes {self.others_cores:.2f} cores"
        )

    def problems(self, *, allowed: bool) -> str:
        """What makes the run suspect: RPC errors, or decisions other than expected."""
        notes = []
        if self.errors:
            notes.append(f"{self.errors} RPC errors ({self.first_error})")
        unexpected = self.refused if allowed else self.allowed
        if unexpected:
            notes.append(f"{unexpected} {'refused' if allowed else 'ALLOWED'}")
        return "; ".join(notes)


class LoadProcess:
    """A running `python -m bench.load` (or another `module` of the same protocol), spoken to
    in JSON lines over its stdin and stdout."""

    def __init__(
        self,
        name: str,
        job: dict[str, Any],
        *,
        log_path: Path,
        cwd: Path,
        module: str = "bench.load",
    ) -> None:
        self.name = name
        self.child = Child(name, [PYTHON, "-m", module], log_path=log_path, pipes=True, cwd=cwd)
        self._buffer = b""
        self.send(job)

    def send(self, message: dict[str, Any]) -> None:
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write((json.dumps(message) + "\n").encode())
        stdin.flush()

    def expect(self, field: str, timeout: float = ANSWER_TIMEOUT) -> Any:
        """The value of `field` in the next line that has it; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._line(deadline))
            if field in message:
                return message[field]

    def _line(self, deadline: float) -> str:
        stdout = self.child.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name}: no answer in time; log:\n{self.child.log_tail()}")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(stdout.fileno(), 1 << 20)
            if not chunk:
                self.child.process.wait(5)
                raise RuntimeError(
                    f"{self.name} exited with {self.child.process.returncode};"
                    f" log:\n{self.child.log_tail()}"
                )
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def finish(self) -> None:
        """Ends the input, which ends the process, and waits for it."""
        stdin = self.child.process.stdin
        if stdin is not None and not stdin.closed:
            stdin.close()
        self.child.stop(exiting_within=5.0)


class ClosedLoopProcess(LoadProcess):
    """A closed-loop load generator, driven one phase at a time.

    `ours` names the benchmark's other processes (and Redis) at the start of each phase,
    so that their CPU is told apart from that of the machine's other tenants.
    """

    def __init__(
        self,
        name: str,
        job: dict[str, Any],
        ours: Callable[[], list[int]],
        *,
        log_path: Path,
        cwd: Path,
    ) -> None:
        super().__init__(name, job, log_path=log_path, cwd=cwd)
        self._ours = ours

    def run(self, seconds: float, *, timeline: float | None = None) -> dict[str, Any]:
        """One phase of `seconds`; with `timeline`, the answers counted in slots that long."""
        self.send({"run": seconds, "ours": self._ours(), "timeline": timeline})
        result: dict[str, Any] = self.expect("result", seconds + ANSWER_TIMEOUT)
        return result

    def start(self, *, timeline: float | None = None) -> None:
        """Starts a phase that lasts until `stop`."""
        self.send({"run": None, "ours": self._ours(), "timeline": timeline})

    def stop(self) -> dict[str, Any]:
        self.send({"stop": True})
        result: dict[str, Any] = self.expect("result")
        return result
