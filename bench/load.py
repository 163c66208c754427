"""The load generator, a process of its own: `python -m bench.load` reads its job as JSON lines
on stdin and answers in JSON lines on stdout.

Two jobs:

- "closed loop": `concurrency` workers on one grpc.aio channel (or on `channels` channels,
  each a connection of its own, the workers dealt among them), each sending its next
  Authorize as soon as the previous one answers: unary calls, or with "transport":
  "session" requests multiplexed on one Session stream per channel (bench.session). It
  answers {"ready": true} once connected, then runs one phase per command: {"run": SECONDS,
  "ours": [PID...]} runs that long, {"run": null, ...} until a {"stop": true} line. A phase
  ramps up for RAMP_SECONDS unmeasured, then counts the requests *sent* in its measured
  window (each one's latency, and its decision) and the CPU used over that window by the
  server (every process in `server_pids`), by the benchmark's other processes (`ours`), by
  itself and by the whole machine; with "timeline": SECONDS, also the answers received in
  each slot of that length, from the window's start (its CLOCK_MONOTONIC time is returned).
  Phases let the benchmark interleave what it compares, so that other load on the
  machine falls on both sides alike.
- "revocation": hammers one key on several targets; for each round it is sent the key,
  answers once every target has allowed it, is sent the monotonic time at which RevokeKey
  returned, keeps going briefly, and reports the allowed responses to requests sent after
  that time. CLOCK_MONOTONIC is one clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from bench.processes import die_with_parent
from bench.session import SessionAuthorize, SessionError

# What a payments API server asks for on GET /api/v1/links.
REQUIRED_SCOPES = ("links:read",)
RPC_TIMEOUT = 5.0
RAMP_SECONDS = 0.2
_TICKS = os.sysconf("SC_CLK_TCK")


def described(err: Exception) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err) or type(err).__name__


def local_channel(target: str) -> grpc.aio.Channel:
    """A channel with a connection of its own: gRPC shares one between channels to the same
    target unless told otherwise, and a connection is what SO_REUSEPORT spreads."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def read_message() -> dict[str, Any] | None:
    """The next JSON line on stdin, or None at the end of input."""
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line.strip():
        return None
    message: dict[str, Any] = json.loads(line)
    return message


def requests_for(api_keys: list[str]) -> list[pb.AuthorizeRequest]:
    return [
        pb.AuthorizeRequest(
            api_key=key, required_scopes=REQUIRED_SCOPES, required_mode=pb.MODE_LIVE
        )
        for key in api_keys
    ]


# -- CPU accounting -------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU of every thread of `pid` so far; 0.0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU time spent by every process on the machine so far, summed over the cores."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (
            int(value) for value in stat.readline().split()[1:8]
        )
    return (user + nice + system + irq + softirq) / _TICKS


@dataclass
class CpuWatch:
    """CPU used over a window by the server, by the rest of the benchmark and Redis ("ours"),
    by this client, and by the whole machine, so that what everything else used follows."""

    servers: list[int]
    ours: list[int]

    def sample(self) -> dict[str, float]:
        return {
            "server": sum(process_cpu_seconds(pid) for pid in self.servers),
            "ours": sum(process_cpu_seconds(pid) for pid in self.ours),
            "client": process_cpu_seconds(os.getpid()),
            "machine": machine_busy_seconds(),
            "wall": time.monotonic(),
        }

    @staticmethod
    def since(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
        return {name: end[name] - start[name] for name in end}


# -- closed loop ----------------------------------------------------------------------------


@dataclass
class Phase:
    """What one measured window saw."""

    latencies_us: list[int] = field(default_factory=list)
    allowed: int = 0
    refused: int = 0
    errors: int = 0
    first_error: str = ""
    # Answers received in each slot of the window (bench.load's "timeline").
    timeline: list[int] = field(default_factory=list)

    def result(self, seconds: float, cpu: dict[str, float]) -> dict[str, Any]:
        return {
            "timeline": self.timeline,
            "requests": len(self.latencies_us),
            "seconds": seconds,
            "latencies_us": self.latencies_us,
            "allowed": self.allowed,
            "refused": self.refused,
            "errors": self.errors,
            "first_error": self.first_error,
            "cpu": cpu,
        }


class ClosedLoop:
    def __init__(self, job: dict[str, Any], authorizers: list[Any]) -> None:
        self._authorizers = authorizers
        self._requests = requests_for(job["keys"])
        self._concurrency: int = job["concurrency"]
        self._watch = CpuWatch(job["server_pids"], [])
        self._next = 0

    async def phase(
        self, seconds: float | None, ours: list[int], timeline: float | None = None
    ) -> dict[str, Any]:
        """Runs the workers for a ramp plus `seconds` (None: until a stop line arrives)."""
        self._watch.ours = ours
        # perf_counter is CLOCK_MONOTONIC on Linux: the timeline's origin is comparable with
        # time.monotonic() in other processes.
        clock = time.perf_counter
        tally = Phase()
        window = {"from": clock() + RAMP_SECONDS, "to": float("inf")}
        samples: dict[str, dict[str, float]] = {}
        slot = timeline or 0.0
        if slot:
            tally.timeline = [0] * (int((seconds or 60.0) / slot) + 2)

        async def worker(number: int) -> None:
            authorize = self._authorizers[number % len(self._authorizers)]
            while True:
                sent = clock()
                if sent >= window["to"]:
                    return
                request = self._requests[self._next % len(self._requests)]
                self._next += 1
                measured = sent >= window["from"]
                try:
                    response = await authorize(request, timeout=RPC_TIMEOUT)
                except (grpc.aio.AioRpcError, SessionError) as err:
                    if measured:
                        tally.errors += 1
                        tally.first_error = tally.first_error or described(err)
                    continue
                if measured:
                    answered = clock()
                    tally.latencies_us.append(round((answered - sent) * 1e6))
                    if slot:
                        at = min(int((answered - window["from"]) / slot), len(tally.timeline) - 1)
                        tally.timeline[at] += 1
                    if response.allowed:
                        tally.allowed += 1
                    else:
                        tally.refused += 1

        workers = [asyncio.create_task(worker(number)) for number in range(self._concurrency)]
        await asyncio.sleep(RAMP_SECONDS)
        samples["start"] = self._watch.sample()
        started = clock()
        if seconds is None:
            await read_message()  # {"stop": true}, or the end of input
        else:
            await asyncio.sleep(window["from"] + seconds - clock())
        window["to"] = clock()
        samples["end"] = self._watch.sample()
        # Requests sent in the window that are still in flight count too: let them finish.
        await asyncio.gather(*workers)
        result = tally.result(
            window["to"] - started, CpuWatch.since(samples["start"], samples["end"])
        )
        result["window_from"] = window["from"]
        return result


async def closed_loop(job: dict[str, Any]) -> None:
    count = job.get("channels", 1)
    channels = [
        local_channel(job["target"]) if count > 1 else grpc.aio.insecure_channel(job["target"])
        for _ in range(count)
    ]
    sessions: list[SessionAuthorize] = []
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        # Any: see keysvc_client.aio, which type-checks the generated stub the same way.
        stubs: list[Any] = [pb_grpc.KeyServiceStub(channel) for channel in channels]
        if job.get("transport", "unary") == "session":
            sessions = [SessionAuthorize(stub) for stub in stubs]
            authorizers: list[Any] = list(sessions)
        else:
            authorizers = [stub.Authorize for stub in stubs]
        loop = ClosedLoop(job, authorizers)
        emit({"ready": True})
        while (command := await read_message()) is not None:
            result = await loop.phase(command["run"], command["ours"], command.get("timeline"))
            emit({"result": result})
    finally:
        for session in sessions:
            await session.close()
        for channel in channels:
            await channel.close()


# -- revocation -----------------------------------------------------------------------------


@dataclass
class Round:
    """One revocation round: (monotonic send time, allowed) for every answered request."""

    answers: list[tuple[float, bool]] = field(default_factory=list)
    errors: int = 0
    allowed_by: set[int] = field(default_factory=set)


async def revocation(job: dict[str, Any]) -> None:
    targets: list[str] = job["targets"]
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        stubs = [pb_grpc.KeyServiceStub(channel).Authorize for channel in channels]
        emit({"ready": True})
        while (command := await read_message()) is not None:
            result = await revocation_round(
                command["key"], stubs, job["concurrency_per_target"], job["after_revoke"]
            )
            emit({"result": result})
    finally:
        for channel in channels:
            await channel.close()


async def revocation_round(
    key: str, stubs: list[Any], per_target: int, after: float
) -> dict[str, int]:
    (request,) = requests_for([key])
    state = Round()
    stop = asyncio.Event()
    everyone_allowed = asyncio.Event()

    async def worker(number: int, authorize: Any) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await authorize(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError:
                state.errors += 1
                continue
            state.answers.append((sent, response.allowed))
            if response.allowed:
                state.allowed_by.add(number)
                if len(state.allowed_by) == len(stubs):
                    everyone_allowed.set()

    workers = [
        asyncio.create_task(worker(number, authorize))
        for number, authorize in enumerate(stubs)
        for _ in range(per_target)
    ]
    try:
        await asyncio.wait_for(everyone_allowed.wait(), 10)
        emit({"hammering": True})
        revoked = await read_message()
        if revoked is None:
            raise SystemExit("bench.load: input ended before the revocation time")
        revoked_at = float(revoked["revoked_at"])
        await asyncio.sleep(after)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    sent_after = [allowed for sent, allowed in state.answers if sent > revoked_at]
    return {
        "sent_before": len(state.answers) - len(sent_after),
        "sent_after": len(sent_after),
        "allowed_after": sum(sent_after),
        "errors": state.errors,
    }


async def main() -> None:
    job = await read_message()
    if job is None:
        return
    if job["kind"] == "closed loop":
        await closed_loop(job)
    elif job["kind"] == "revocation":
        await revocation(job)
    else:
        raise SystemExit(f"bench.load: unknown job {job['kind']!r}")


if __name__ == "__main__":
    die_with_parent()
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(main())
