"""keysvc_client's Guard with its near cache, driven as an API server drives it: a process of
its own, `python -m bench.guards`, speaking bench.load's protocol (JSON lines on stdin/stdout).

Two jobs:

- "in process": times `Guard.check()` (blocking Guard), then `await Guard.check()` (asyncio
  Guard), on one hot key, one call after another in one thread, for `seconds` each: every
  call's latency (perf_counter), how many calls a second, and the process's CPU per call; then,
  for scale, the unary Authorize from the same process, one at a time. Answers one
  {"result": ...} and exits.
- "api server": an API server's checks in a closed loop, as fast as one thread goes: the hot
  keys, and each round's key to be revoked, in turn. Every check is recorded: when it was sent
  and answered (CLOCK_MONOTONIC, one clock for every process) and its verdict. Commands:
  {"round": N} adds round N's key (and drops the previous round's) and is answered
  {"allowed": N} once a check allowed it; {"finish": [[N, CALLED, RETURNED], ...]}, the
  times each RevokeKey was called and returned, stops the loop and is answered with the
  verdicts on each round's key sent after its RevokeKey returned, and the first refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

import grpc
from keysvc_client import Guard, Verdict
from keysvc_client.aio import Guard as AioGuard
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from bench.load import emit, read_message, requests_for
from bench.processes import die_with_parent

REQUIRED_SCOPES = ("links:read",)
# Generous for a loaded machine: a check that keysvc does not answer in time is a 503, counted.
CHECK_TIMEOUT = 1.0
WARM_SECONDS = 10.0
UNARY_SECONDS = 1.0

# Verdicts as recorded.
ALLOWED, REFUSED, UNAVAILABLE = 0, 1, 2


def verdict_code(verdict: Verdict) -> int:
    if verdict.allowed:
        return ALLOWED
    return UNAVAILABLE if verdict.status >= 500 else REFUSED


def quantiles(latencies_ns: array[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    count = len(ordered)
    return {
        "p50_us": ordered[count // 2] / 1000,
        "p99_us": ordered[min(count - 1, int(count * 0.99))] / 1000,
        "max_us": ordered[-1] / 1000,
    }


def stats_of(guard: Guard | AioGuard) -> dict[str, int]:
    return dataclasses.asdict(guard.stats())


# -- in process ---------------------------------------------------------------------------------


def time_sync(guard: Guard, key: str, seconds: float) -> dict[str, Any]:
    """`guard.check(key)` one call after another for `seconds`."""
    check = guard.check
    clock = time.perf_counter_ns
    latencies = array("q")
    refused = 0
    end = clock() + int(seconds * 1e9)
    cpu = time.process_time()
    started = clock()
    while (sent := clock()) < end:
        verdict = check(key, REQUIRED_SCOPES)
        latencies.append(clock() - sent)
        if not verdict.allowed:
            refused += 1
    elapsed = (clock() - started) / 1e9
    cpu = time.process_time() - cpu
    return {
        "calls": len(latencies),
        "per_second": len(latencies) / elapsed,
        # CPU of the whole process (the Guard's own threads too) per check.
        "cpu_us": cpu / len(latencies) * 1e6,
        "refused": refused,
        **quantiles(latencies),
    }


async def time_aio(guard: AioGuard, key: str, seconds: float) -> dict[str, Any]:
    """`await guard.check(key)` one call after another for `seconds`."""
    check = guard.check
    clock = time.perf_counter_ns
    latencies = array("q")
    refused = 0
    end = clock() + int(seconds * 1e9)
    cpu = time.process_time()
    started = clock()
    while (sent := clock()) < end:
        verdict = await check(key, REQUIRED_SCOPES)
        latencies.append(clock() - sent)
        if not verdict.allowed:
            refused += 1
    elapsed = (clock() - started) / 1e9
    cpu = time.process_time() - cpu
    return {
        "calls": len(latencies),
        "per_second": len(latencies) / elapsed,
        # CPU of the whole process (the Guard's own threads too) per check.
        "cpu_us": cpu / len(latencies) * 1e6,
        "refused": refused,
        **quantiles(latencies),
    }


def unary_reference(target: str, key: str, seconds: float) -> dict[str, float]:
    """The unary Authorize of the same key from this process, one at a time."""
    (request,) = requests_for([key])
    latencies = array("q")
    with grpc.insecure_channel(target) as channel:
        authorize = pb_grpc.KeyServiceStub(channel).Authorize
        authorize(request, timeout=10)
        end = time.perf_counter_ns() + int(seconds * 1e9)
        started = time.perf_counter_ns()
        while (sent := time.perf_counter_ns()) < end:
            authorize(request, timeout=10)
            latencies.append(time.perf_counter_ns() - sent)
        elapsed = (time.perf_counter_ns() - started) / 1e9
    return {"per_second": len(latencies) / elapsed, **quantiles(latencies)}


def in_process(job: dict[str, Any]) -> dict[str, Any]:
    target, key, seconds = job["target"], job["key"], job["seconds"]
    result: dict[str, Any] = {}
    # The blocking Guard: its own thread (the Session reader) shares the GIL with the loop.
    with Guard(target, timeout=CHECK_TIMEOUT, near_cache=True) as guard:
        warm_sync(guard, [key])
        sync = time_sync(guard, key, seconds)
        sync["stats"] = stats_of(guard)
        result["sync"] = sync
    result["aio"] = asyncio.run(_aio_in_process(target, key, seconds))
    result["unary"] = unary_reference(target, key, UNARY_SECONDS)
    return result


async def _aio_in_process(target: str, key: str, seconds: float) -> dict[str, Any]:
    guard = AioGuard(target, timeout=CHECK_TIMEOUT, near_cache=True)
    try:
        await warm_aio(guard, [key])
        result = await time_aio(guard, key, seconds)
        result["stats"] = stats_of(guard)
        return result
    finally:
        await guard.close()


def warm_sync(guard: Guard, keys: list[str]) -> None:
    deadline = time.monotonic() + WARM_SECONDS
    for key in keys:
        while not guard.check(key, REQUIRED_SCOPES).allowed:
            if time.monotonic() > deadline:
                raise SystemExit("bench.guards: a key was never allowed")
            time.sleep(0.01)


async def warm_aio(guard: AioGuard, keys: list[str]) -> None:
    deadline = time.monotonic() + WARM_SECONDS
    for key in keys:
        while not (await guard.check(key, REQUIRED_SCOPES)).allowed:
            if time.monotonic() > deadline:
                raise SystemExit("bench.guards: a key was never allowed")
            await asyncio.sleep(0.01)


# -- api server ---------------------------------------------------------------------------------


class Record:
    """Every check: when sent and answered, whose key (the round, or -1 for a hot key), and
    its verdict."""

    def __init__(self) -> None:
        self.sent = array("d")
        self.answered = array("d")
        self.round = array("i")
        self.verdict = array("b")
        self.round_now = -1
        self.allowed_round = -1
        self.running = True

    def note(self, sent: float, answered: float, round_number: int, verdict: Verdict) -> None:
        self.sent.append(sent)
        self.answered.append(answered)
        self.round.append(round_number)
        code = verdict_code(verdict)
        self.verdict.append(code)
        if code == ALLOWED and round_number >= 0:
            self.allowed_round = max(self.allowed_round, round_number)

    def outcome(self, revocations: list[list[float]]) -> dict[str, Any]:
        """Per round: checks of its key sent after RevokeKey returned (and how many allowed),
        and the first refusal after RevokeKey was called (answered, and its verdict)."""
        by_round: dict[int, list[int]] = {}
        for index, number in enumerate(self.round):
            if number >= 0:
                by_round.setdefault(number, []).append(index)
        rounds = []
        for revoked, called, returned in revocations:
            indexes = by_round.get(int(revoked), [])
            after = [i for i in indexes if self.sent[i] > returned]
            first = next(
                (i for i in indexes if self.sent[i] >= called and self.verdict[i] != ALLOWED),
                None,
            )
            rounds.append(
                {
                    "sent_after": len(after),
                    "allowed_after": sum(1 for i in after if self.verdict[i] == ALLOWED),
                    "unavailable_after": sum(1 for i in after if self.verdict[i] == UNAVAILABLE),
                    "first_refusal_s": None if first is None else self.answered[first] - called,
                    "first_refusal_verdict": None if first is None else self.verdict[first],
                }
            )
        hot = [i for i, number in enumerate(self.round) if number < 0]
        span = (self.sent[-1] - self.sent[0]) if self.sent else 0.0
        durations = sorted(self.answered[i] - self.sent[i] for i in hot)
        return {
            "rounds": rounds,
            "checks": len(self.sent),
            "per_second": len(self.sent) / span if span else 0.0,
            "hot_not_allowed": sum(1 for i in hot if self.verdict[i] != ALLOWED),
            "hot_p50_us": statistics.median(durations) * 1e6 if durations else None,
        }


def api_server_sync(job: dict[str, Any]) -> None:
    guard = Guard(job["target"], timeout=CHECK_TIMEOUT, near_cache=True)
    hot: list[str] = job["hot"]
    doomed: list[str] = job["doomed"]
    warm_sync(guard, hot)
    record = Record()

    def loop() -> None:
        check = guard.check
        clock = time.monotonic
        turn = 0
        while record.running:
            number = record.round_now
            if number >= 0 and turn % (len(hot) + 1) == len(hot):
                key = doomed[number]
            else:
                key, number = hot[turn % len(hot)], -1
            turn += 1
            sent = clock()
            verdict = check(key, REQUIRED_SCOPES)
            record.note(sent, clock(), number, verdict)

    thread = threading.Thread(target=loop, name="checks")
    thread.start()
    try:
        _commands(record, lambda: stats_of(guard), wait=time.sleep)
    finally:
        record.running = False
        thread.join()
        guard.close()


def _commands(
    record: Record, stats: Callable[[], dict[str, int]], wait: Callable[[float], None]
) -> None:
    emit({"ready": True})
    while (line := sys.stdin.readline()).strip():
        command = json.loads(line)
        if "round" in command:
            number = int(command["round"])
            record.round_now = number
            deadline = time.monotonic() + WARM_SECONDS
            while record.allowed_round < number and time.monotonic() < deadline:
                wait(0.001)
            emit({"allowed": number if record.allowed_round >= number else None})
        elif "finish" in command:
            record.running = False
            emit({"result": {**record.outcome(command["finish"]), "stats": stats()}})
            return


async def api_server_aio(job: dict[str, Any]) -> None:
    guard = AioGuard(job["target"], timeout=CHECK_TIMEOUT, near_cache=True)
    hot: list[str] = job["hot"]
    doomed: list[str] = job["doomed"]
    await warm_aio(guard, hot)
    record = Record()

    async def loop() -> None:
        check = guard.check
        clock = time.monotonic
        turn = 0
        while record.running:
            number = record.round_now
            if number >= 0 and turn % (len(hot) + 1) == len(hot):
                key = doomed[number]
            else:
                key, number = hot[turn % len(hot)], -1
            turn += 1
            sent = clock()
            verdict = await check(key, REQUIRED_SCOPES)
            record.note(sent, clock(), number, verdict)
            # An API server's request yields to the event loop (its socket I/O); so does this
            # loop, so that the Guard's stream and the commands are served.
            await asyncio.sleep(0)

    checks = asyncio.create_task(loop())
    try:
        emit({"ready": True})
        while (command := await read_message()) is not None:
            if "round" in command:
                number = int(command["round"])
                record.round_now = number
                deadline = time.monotonic() + WARM_SECONDS
                while record.allowed_round < number and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                emit({"allowed": number if record.allowed_round >= number else None})
            elif "finish" in command:
                record.running = False
                await checks
                emit({"result": {**record.outcome(command["finish"]), "stats": stats_of(guard)}})
                return
    finally:
        record.running = False
        checks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checks
        await guard.close()


def main() -> None:
    line = sys.stdin.readline()
    if not line.strip():
        return
    job: dict[str, Any] = json.loads(line)
    if job["kind"] == "in process":
        emit({"result": in_process(job)})
        return
    if job["kind"] != "api server":
        raise SystemExit(f"bench.guards: unknown job {job['kind']!r}")
    # On a machine of its own an API server would not take keysvc's CPU; here it takes what
    # keysvc, PostgreSQL and Redis leave.
    os.nice(job.get("nice", 0))
    if job["flavour"] == "sync":
        api_server_sync(job)
    else:
        asyncio.run(api_server_aio(job))


if __name__ == "__main__":
    die_with_parent()
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        main()
