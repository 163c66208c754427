"""Which client the Redis cache's GET should use: GETs per second, latency and CPU per GET of a
~200-byte value, for each candidate client, at 1, 32 and 256 GETs in flight (docs/benchmark.md,
"The Redis client").

    .venv/bin/python -m bench.redis_clients [--seconds 1] [--rounds 4] [--pipelined FILE]

It starts a redis-server of its own on a free loopback port (never the shared one), stores 1,000
values of 200 bytes, and drives each client from one asyncio event loop with N tasks, each
sending its next GET when the previous one has answered (closed loop). Clients and levels take
turns in slices of `--seconds` (a few rounds, the order rotated each round) so that bursts of
other work on the machine fall on every client alike. Each client is configured as the cache
adapter would configure it: a 0.25 s timeout on every GET.

Clients that are not installed are listed as such and skipped: coredis and valkey-glide are not
keysvc's dependencies, so install them into a scratch virtualenv to compare them, and run it there
with PYTHONPATH pointing at this checkout. keysvc's old hand-written pipelined GET
(keysvc/adapters/cache/pipelined.py, removed after this measurement) is measured from a copy of
its last version:

    old=keysvc/adapters/cache/pipelined.py
    git show "$(git log -1 --format=%H -- $old)~1:$old" > /tmp/pipelined.py
    .venv/bin/python -m bench.redis_clients --pipelined /tmp/pipelined.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import importlib.util
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

LEVELS = (1, 32, 256)
KEYS = 1_000
VALUE_BYTES = 200
TIMEOUT_SECONDS = 0.25  # keysvc's --redis-timeout-seconds default
RAMP_SECONDS = 0.2
WARM_UP_SECONDS = 1.0
_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1

Get = Callable[[str], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]


@dataclass
class Client:
    name: str
    get: Get
    close: Close
    note: str = ""


@dataclass
class Tally:
    """What the slices of one client at one level added up to."""

    seconds: float = 0.0
    gets: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def row(self, name: str, level: int) -> str:
        ordered = sorted(self.latencies_ns)

        def ms(quantile: float) -> str:
            if not ordered:
                return "-"
            return f"{ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] / 1e6:.3f}"

        per_get = max(self.gets, 1)
        failed = ", ".join(f"{count:,} {kind}" for kind, count in self.errors.most_common())
        return (
            f"{name:<40} {level:>4} {self.gets / self.seconds:>10,.0f} {ms(0.50):>8} {ms(0.99):>8}"
            f" {self.client_cpu / per_get * 1e6:>13,.1f} {self.server_cpu / per_get * 1e6:>13,.1f}"
            f" {self.other_cpu / self.seconds:>10.2f}  {failed}"
        )


HEADER = (
    f"{'client':<40} {'@':>4} {'GETs/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    f" {'client µs/GET':>13} {'server µs/GET':>13} {'other load':>10}  failed GETs"
)


# --- the private redis-server ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, int]]:
    """A redis-server on a free loopback port that keeps nothing on disk: (url, pid)."""
    with tempfile.TemporaryDirectory(prefix="keysvc-redis-clients-") as workdir:
        port = _free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", workdir]
        process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # Safe here: no thread exists yet.
            preexec_fn=_die_with_parent,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0", process.pid
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _machine_busy() -> float:
    with open("/proc/stat") as stat:
        cpu = [int(value) for value in stat.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    return (sum(cpu[:8]) - idle) / _TICKS


# --- the clients ---------------------------------------------------------------------------------


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


async def _no_redis(values: dict[str, bytes]) -> Client:
    async def get(key: str) -> bytes | None:
        await asyncio.sleep(0)
        return values[key]

    async def close() -> None:
        return None

    return Client("(no Redis: the harness alone)", get, close)


async def _pipelined(url: str, source: Path | None) -> Client | str:
    if source is not None:
        spec = importlib.util.spec_from_file_location("keysvc_pipelined_get", source)
        if spec is None or spec.loader is None:
            return f"cannot load {source}"
        module: Any = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = _optional("keysvc.adapters.cache.pipelined")
        if module is None:
            return "removed from keysvc; pass --pipelined FILE to measure an old copy"
    lean = module.PipelinedGet(url, timeout_seconds=TIMEOUT_SECONDS)
    return Client("PipelinedGet (hand-written)", lean.get, lean.close)


async def _redis_py(url: str, *, hiredis: bool, pool: int | None, blocking: bool) -> Client | str:
    """redis-py with the timeouts and retry of keysvc.adapters.cache.redis; `pool` None is
    redis-py's default pool (at most 100 connections, then MaxConnectionsError)."""
    from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.utils import HIREDIS_AVAILABLE

    options: dict[str, Any] = {}
    if hiredis:
        if not HIREDIS_AVAILABLE:
            return "hiredis is not installed (or older than redis-py accepts)"
    else:
        from redis._parsers import _AsyncRESP2Parser

        # redis-py swaps in the Python parser of the protocol it speaks.
        options["parser_class"] = _AsyncRESP2Parser
    if pool is not None:
        options["max_connections"] = pool
    if blocking:
        # Waits for a free connection, up to the timeout, instead of raising.
        options["timeout"] = TIMEOUT_SECONDS
    kind = BlockingConnectionPool if blocking else ConnectionPool
    connections = kind.from_url(
        url,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        **options,
    )
    client = Redis.from_pool(connections)
    untyped: Any = connections
    connection = await untyped.get_connection()
    parser = type(connection._parser).__name__
    await untyped.release(connection)
    name = "redis-py + hiredis" if hiredis else "redis-py, Python parser"
    size = connections.max_connections
    name += f", {'blocking ' if blocking else ''}pool {size}{' (default)' if pool is None else ''}"
    return Client(name, client.get, client.aclose, note=f"parser {parser}")


async def _coredis(url: str) -> Client | str:
    coredis = _optional("coredis")
    if coredis is None:
        return "not installed"
    client = coredis.Redis.from_url(
        url, stream_timeout=TIMEOUT_SECONDS, connect_timeout=TIMEOUT_SECONDS
    )
    # coredis 5+ needs its pool entered before use.
    context = client.__aenter__()
    await context

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return Client("coredis", client.get, close)


async def _glide(url: str) -> Client | str:
    glide = _optional("glide")
    if glide is None:
        return "not installed"
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    configuration = glide.GlideClientConfiguration(
        [glide.NodeAddress(host, int(port))], request_timeout=int(TIMEOUT_SECONDS * 1000)
    )
    client = await glide.GlideClient.create(configuration)
    return Client("valkey-glide", client.get, client.close)


# --- the measurement -----------------------------------------------------------------------------


async def _slice(
    client: Client, keys: list[str], values: dict[str, bytes], level: int, seconds: float,
    redis_pid: int, tally: Tally | None,
) -> None:  # fmt: skip
    """Runs `level` closed-loop tasks; GETs sent in the window after the ramp count."""
    loop = asyncio.get_running_loop()
    start = loop.time() + RAMP_SECONDS
    end = start + seconds
    latencies: list[int] = []
    errors: Counter[str] = Counter()

    async def task(first: int) -> None:
        n = first
        while True:
            now = loop.time()
            if now >= end:
                return
            key = keys[n % KEYS]
            sent = time.perf_counter_ns()
            try:
                value = await client.get(key)
            except Exception as err:
                # Counted, not timed: the table shows how many GETs failed and how.
                if now >= start:
                    errors[type(err).__name__] += 1
                # As keysvc would go on to other work: a GET that fails at once must not
                # keep the loop from the other tasks.
                await asyncio.sleep(0)
            else:
                took = time.perf_counter_ns() - sent
                if value != values[key]:
                    raise RuntimeError(f"{client.name}: GET {key} answered another value")
                if now >= start:
                    latencies.append(took)
            n += level

    tasks = [asyncio.ensure_future(task(n * 7)) for n in range(level)]
    await asyncio.sleep(max(0.0, start - loop.time()))
    cpu, server, busy = time.process_time(), _process_cpu(redis_pid), _machine_busy()
    await asyncio.gather(*tasks)
    if tally is not None:
        client_cpu = time.process_time() - cpu
        server_cpu = _process_cpu(redis_pid) - server
        tally.seconds += seconds
        tally.gets += len(latencies)
        tally.client_cpu += client_cpu
        tally.server_cpu += server_cpu
        tally.other_cpu += max(0.0, _machine_busy() - busy - client_cpu - server_cpu)
        tally.latencies_ns += latencies
        tally.errors += errors


async def measure(arguments: argparse.Namespace, url: str, redis_pid: int) -> int:
    from redis.asyncio import Redis

    keys = [f"keysvc-bench:grant:key{n:06d}" for n in range(KEYS)]
    values = {key: (key.encode() * 8)[:VALUE_BYTES] for key in keys}
    filler = Redis.from_url(url)
    await filler.mset(values)
    await filler.aclose()

    candidates: list[tuple[str, Awaitable[Client | str]]] = [
        ("(no Redis)", _no_redis(values)),
        ("PipelinedGet", _pipelined(url, arguments.pipelined)),
        ("redis-py", _redis_py(url, hiredis=True, pool=None, blocking=False)),
        ("redis-py", _redis_py(url, hiredis=True, pool=256, blocking=False)),
        ("redis-py", _redis_py(url, hiredis=True, pool=64, blocking=True)),
        ("redis-py", _redis_py(url, hiredis=False, pool=256, blocking=False)),
        ("coredis", _coredis(url)),
        ("valkey-glide", _glide(url)),
    ]
    clients: list[Client] = []
    for name, opening in candidates:
        try:
            opened = await opening
        except Exception as err:
            opened = f"failed to start: {type(err).__name__}: {err}"
        if isinstance(opened, str):
            print(f"skipped {name}: {opened}")
        else:
            clients.append(opened)
    for client in clients:
        if client.note:
            print(f"{client.name}: {client.note}")
    print(flush=True)

    tallies = {(client.name, level): Tally() for client in clients for level in LEVELS}
    try:
        for client in clients:
            for level in LEVELS:
                await _slice(client, keys, values, level, WARM_UP_SECONDS / 3, redis_pid, None)
        for round_ in range(arguments.rounds):
            for level in LEVELS:
                shift = round_ % len(clients)
                for client in clients[shift:] + clients[:shift]:
                    tally = tallies[client.name, level]
                    await _slice(client, keys, values, level, arguments.seconds, redis_pid, tally)
            print(f"round {round_ + 1} of {arguments.rounds} done", file=sys.stderr, flush=True)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    print(HEADER)
    for level in LEVELS:
        for client in clients:
            print(tallies[client.name, level].row(client.name, level))
        print()
    return 0


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    redis_version = next((part[2:] for part in server if part.startswith("v=")), "?")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("redis", "hiredis", "coredis", "valkey-glide")
    )
    return (
        f"machine: {model}, {os.cpu_count()} cores (nproc); Python {platform.python_version()};"
        f" redis-server {redis_version}; {versions}; load average at start {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_clients", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="one slice (default 1)")
    parser.add_argument("--rounds", type=int, default=4, help="slices per client and level")
    parser.add_argument("--pipelined", type=Path, help="a copy of keysvc's old pipelined.py")
    arguments = parser.parse_args(argv)
    print(machine())
    print(
        f"GET of a {VALUE_BYTES}-byte value, {KEYS:,} keys, closed loop; {arguments.rounds}"
        f" slices of {arguments.seconds:g} s per client and level, interleaved; CPU per GET:"
        " this process (all threads) and redis-server; other load: cores busy with other work"
    )
    with private_redis() as (url, pid):
        return asyncio.run(measure(arguments, url, pid))


if __name__ == "__main__":
    sys.exit(main())
