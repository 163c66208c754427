"""Runs the benchmark end to end: servers up, keys made, each measurement, one table, all cleaned.

Servers (each a process of its own, all on 127.0.0.1, port 0):

- no-op: bench.noop, the ceiling of grpc.aio with keysvc's messages on this machine;
- keysvc A and B: two replicas of `keysvc serve` on one fresh PostgreSQL database and
  one Redis prefix (A serves the hot, flood and revocation measurements, B is the second
  replica of the revocation one);
- keysvc C: the same database under a Redis prefix of its own, so every key is cold there;
- for the rows of bench.near_cache, bench.workers, bench.recovery and bench.scale, the API
  servers, replicas, databases and redis-server those modules describe.

The load comes from `python -m bench.load` processes. What is compared (no-op against
keysvc, flood against none) runs in alternating one-second slices, so that other load
on the machine falls on both sides alike. Whatever happens, `Bench.cleanup` stops every
process, drops the database, deletes the Redis keys and the temporary files.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import statistics
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from keysvc_client import CreateKeyResponse, KeyServiceClient
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from bench import forge, gateway, near_cache, recovery, scale, workers
from bench.filler import ACCOUNT
from bench.load import requests_for
from bench.load_client import ClosedLoopProcess, Load, LoadProcess
from bench.processes import PYTHON, START_TIMEOUT, Child
from bench.report import Row, machine_line, measured, progress, table
from bench.services import BenchDatabase, BenchRedis, sweep_leftovers, workdir

REPO = Path(__file__).resolve().parent.parent
WARMUP_SECONDS = 1.0
# Each side of a comparison is measured in SLICES slices of SLICE_SECONDS, alternating.
SLICES = 5
SLICE_SECONDS = 1.0
HOT_KEYS = 4
COLD_KEYS = 20
# Made-up keys in the flood of distinct key ids, and what is timed during it.
MADE_UP_KEYS = 50_000
REVOKED_DURING_FLOOD = 5
FIRST_USES_DURING_FLOOD = 10
REVOCATION_ROUNDS = 5
REVOCATION_IN_FLIGHT_PER_REPLICA = 16
# How long the hammering goes on after RevokeKey returned, in each round.
AFTER_REVOKE_SECONDS = 0.5
SCOPES = ("links:read", "links:write")

# Targets.
HOT_RATIO_TARGET = 0.9
# Authorize over one Session stream at 32 in flight, against the no-op's unary throughput.
SESSION_RATIO_TARGET = 2.5
P50_TARGET_MS = 1.0
FLOOD_RATIO_TARGET = 0.7
# RevokeKey waits out the lease (1 s, stretched by the 1% clock drift allowed for): the rest
# is its own work, which a flood must not stretch.
REVOKE_TARGET_MS = 1000 * 1.02 + 50

_NOOP_LISTENING = re.compile(r"^listening on (?P<address>\S+:\d+)\s*$", re.MULTILINE)


class Bench:
    def __init__(self) -> None:
        self.workdir = workdir()
        self.children: list[Child] = []
        self.database: BenchDatabase | None = None
        # The databases of the rows that need one of their own (bench.recovery, bench.scale).
        self.databases: list[BenchDatabase] = []
        self.redis: BenchRedis | None = None
        self.redis_pid: int | None = None
        self.admin_token = secrets.token_urlsafe(32)
        self.notes: list[str] = []
        self.versions = ""

    # -- processes -------------------------------------------------------------------------

    def child(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, log_path=self.workdir / f"{name}.log", env=env, cwd=REPO)
        self.children.append(child)
        return child

    def start_noop(self) -> Child:
        return self.child("noop", [PYTHON, "-m", "bench.noop"])

    def start_keysvc(
        self,
        name: str,
        prefix: str,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        options: Sequence[str] = (),
    ) -> Child:
        """`keysvc serve` on the run's database and Redis (or those given), with `options`."""
        assert self.database is not None and self.redis is not None
        argv = [
            "serve",
            "--listen", "127.0.0.1:0",
            "--data-dir", str(self.workdir / name),
            "--database-url", database_url or self.database.url,
            "--redis-url", redis_url or self.redis.url,
            "--redis-namespace", prefix,
            "--shutdown-grace-seconds", "2",
            "--address-file", str(self.workdir / f"{name}.address"),
            *options,
        ]  # fmt: skip
        return self.keysvc_command(name, argv)

    def keysvc_command(self, name: str, argv: Sequence[str]) -> Child:
        """`keysvc ARGV...` as a child of the benchmark."""
        # No setting of the caller's own may leak in: only what is given here counts.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSVC_")}
        env["KEYSVC_ADMIN_TOKEN"] = self.admin_token
        return self.child(name, [PYTHON, "-m", "bench.processes", *argv], env)

    def new_database(self, *, migrated: bool = False) -> BenchDatabase:
        """A database of the run's own besides the main one, dropped at the end; with
        `migrated`, keysvc's schema created in it (`keysvc migrate`)."""
        database = BenchDatabase()
        self.databases.append(database)
        if migrated:
            name = f"migrate-{database.name}"
            migrate = self.keysvc_command(
                name,
                ["migrate", "--database-url", database.url, "--data-dir", str(self.workdir / name)],
            )
            code = migrate.process.wait(START_TIMEOUT)
            self.children.remove(migrate)
            if code != 0:
                raise RuntimeError(f"keysvc migrate exited with {code}:\n{migrate.log_tail()}")
        return database

    @staticmethod
    def address(child: Child, pattern: re.Pattern[str]) -> str:
        return child.wait_for_log(pattern, START_TIMEOUT)["address"]

    def keysvc_address(self, child: Child) -> str:
        """Where a keysvc child listens, from the file it writes once it does."""
        return self.keysvc_addresses(child)[0]

    def keysvc_addresses(self, child: Child) -> list[str]:
        """Every line of a keysvc child's address file: gRPC's HOST:PORT first, then the URLs
        of its other listeners (--http-listen, --metrics-listen)."""
        path = self.workdir / f"{child.name}.address"
        return child.wait_for_file(path, START_TIMEOUT).splitlines()

    def closed_loop(
        self,
        name: str,
        server: Child,
        target: str,
        keys: list[str],
        concurrency: int,
        *,
        transport: str = "unary",
        channels: int = 1,
        server_pids: Sequence[int] = (),
    ) -> ClosedLoopProcess:
        """A connected closed-loop load generator, not yet sending: unary calls or one Session
        stream per channel; `server_pids`, processes whose CPU counts as the server's besides
        `server` itself (a supervisor's workers)."""
        servers = [server.process.pid, *server_pids]

        def ours() -> list[int]:
            """The rest of the benchmark and Redis, as they are at the start of a phase."""
            pids = [child.process.pid for child in self.children if child.running]
            pids = [pid for pid in pids if pid not in (*servers, process.child.process.pid)]
            return pids if self.redis_pid is None else [*pids, self.redis_pid]

        job = {
            "kind": "closed loop",
            "target": target,
            "keys": keys,
            "concurrency": concurrency,
            "server_pids": servers,
            "transport": transport,
            "channels": channels,
        }
        process = ClosedLoopProcess(
            name, job, ours, log_path=self.workdir / f"{name}.log", cwd=REPO
        )
        self.children.append(process.child)
        return process

    def load_process(self, name: str, module: str, job: dict[str, Any]) -> LoadProcess:
        """`python -m MODULE` speaking bench.load's protocol, given `job`."""
        process = LoadProcess(
            name, job, log_path=self.workdir / f"{name}.log", cwd=REPO, module=module
        )
        self.children.append(process.child)
        return process

    def finish(self, *processes: LoadProcess) -> None:
        for process in processes:
            process.finish()
            self.children.remove(process.child)

    # -- measurements ----------------------------------------------------------------------

    def compare(self, *processes: ClosedLoopProcess) -> list[Load]:
        """Hot Authorize through each of `processes`, in slices taking turns: in the order
        given, then the reverse, and so on."""
        for process in processes:
            process.expect("ready", START_TIMEOUT)
        for process in processes:
            process.run(WARMUP_SECONDS)
        phases: dict[str, list[dict[str, Any]]] = {process.name: [] for process in processes}
        for number in range(SLICES):
            for process in processes if number % 2 == 0 else processes[::-1]:
                phases[process.name].append(process.run(SLICE_SECONDS))
        loads = [Load.of(phases[process.name]) for process in processes]
        for process, load in zip(processes, loads, strict=True):
            progress(f"  {process.name}: {load.describe()}")
            if problems := load.problems(allowed=True):
                self.notes.append(f"{process.name}: {problems}")
        return loads

    def flood(self, hot: ClosedLoopProcess, flood: ClosedLoopProcess) -> tuple[Load, Load, Load]:
        """Hot Authorize through `hot` with and without `flood` running, in alternating slices.

        Returns the hot load without the flood, with it, and the flood's own.
        """
        flood.expect("ready", START_TIMEOUT)
        flood.run(WARMUP_SECONDS)
        alone: list[dict[str, Any]] = []
        flooded: list[dict[str, Any]] = []
        floods: list[dict[str, Any]] = []
        for number in range(SLICES):
            for with_flood in (True, False) if number % 2 == 0 else (False, True):
                if not with_flood:
                    alone.append(hot.run(SLICE_SECONDS))
                    continue
                flood.start()
                flooded.append(hot.run(SLICE_SECONDS))
                floods.append(flood.stop())
        loads = Load.of(alone), Load.of(flooded), Load.of(floods)
        expected = (("alone", True), ("beside the flood", True), ("the flood", False))
        for (what, allowed), load in zip(expected, loads, strict=True):
            progress(f"  {what}: {load.describe()}")
            if problems := load.problems(allowed=allowed):
                self.notes.append(f"flood, {what}: {problems}")
        return loads

    def during(
        self,
        flood: ClosedLoopProcess,
        target: str,
        doomed: list[CreateKeyResponse],
        first_use: list[str],
    ) -> tuple[list[float], list[float], Load]:
        """Milliseconds of each RevokeKey and of each key's first Authorize while `flood`
        runs, and the flood's own load meanwhile."""
        flood.start()
        revoke_ms: list[float] = []
        first_ms: list[float] = []
        with (
            KeyServiceClient(target, admin_token=self.admin_token, timeout=30) as admin,
            grpc.insecure_channel(target) as channel,
        ):
            authorize = pb_grpc.KeyServiceStub(channel).Authorize
            for key in doomed:
                started = time.perf_counter()
                admin.revoke_key(ACCOUNT, key.key.id)
                revoke_ms.append((time.perf_counter() - started) * 1000)
            for request in requests_for(first_use):
                started = time.perf_counter()
                response = authorize(request, timeout=30)
                first_ms.append((time.perf_counter() - started) * 1000)
                if not response.allowed:
                    self.notes.append(f"made-up flood: a valid key was refused ({response.reason})")
        load = Load.of([flood.stop()])
        progress(
            f"  RevokeKey p50 {statistics.median(revoke_ms):.0f} ms, max {max(revoke_ms):.0f} ms;"
            f" first Authorize p50 {statistics.median(first_ms):.1f} ms,"
            f" max {max(first_ms):.1f} ms; flood {load.describe()}"
        )
        if problems := load.problems(allowed=False):
            self.notes.append(f"made-up flood: {problems}")
        return revoke_ms, first_ms, load

    def cold(self, target: str, raw_keys: list[str]) -> list[float]:
        """Milliseconds of the first Authorize of each key, one at a time, on a cold cache."""
        progress(f"cold look-ups: {len(raw_keys)} keys, one at a time")
        timings = []
        with grpc.insecure_channel(target) as channel:
            authorize = pb_grpc.KeyServiceStub(channel).Authorize
            # Connects, and proves the server answers, without touching any key.
            authorize(pb.AuthorizeRequest(api_key="not a key"), timeout=10)
            for request in requests_for(raw_keys):
                started = time.perf_counter()
                response = authorize(request, timeout=30)
                timings.append((time.perf_counter() - started) * 1000)
                if not response.allowed:
                    self.notes.append(f"cold: a valid key was refused ({response.reason})")
        ordered = sorted(timings)
        progress(f"  p50 {statistics.median(ordered):.1f} ms, max {ordered[-1]:.1f} ms")
        return timings

    def revocation(
        self, targets: list[str], revoke_via: str, created: list[CreateKeyResponse]
    ) -> dict[str, int]:
        """Allowed answers to requests sent after RevokeKey returned, over every round."""
        progress(f"revocation: {len(created)} rounds, hammering {len(targets)} replicas")
        job = {
            "kind": "revocation",
            "targets": targets,
            "concurrency_per_target": REVOCATION_IN_FLIGHT_PER_REPLICA,
            "after_revoke": AFTER_REVOKE_SECONDS,
        }
        name = "revocation"
        hammer = LoadProcess(name, job, log_path=self.workdir / f"{name}.log", cwd=REPO)
        self.children.append(hammer.child)
        hammer.expect("ready", START_TIMEOUT)
        totals = {"sent_before": 0, "sent_after": 0, "allowed_after": 0, "errors": 0}
        with KeyServiceClient(revoke_via, admin_token=self.admin_token, timeout=30) as admin:
            for key in created:
                hammer.send({"key": key.secret})
                hammer.expect("hammering")
                time.sleep(0.3)
                admin.revoke_key(ACCOUNT, key.key.id)
                revoked_at = time.monotonic()
                hammer.send({"revoked_at": revoked_at})
                result = hammer.expect("result")
                for field in totals:
                    totals[field] += result[field]
        self.finish(hammer)
        progress(
            f"  {totals['allowed_after']} allowed of {totals['sent_after']:,} sent after"
            f" RevokeKey returned ({totals['sent_before']:,} before)"
        )
        if totals["errors"]:
            self.notes.append(f"revocation: {totals['errors']} RPC errors")
        return totals

    # -- the whole run ---------------------------------------------------------------------

    def create_keys(self, target: str, count: int, name: str) -> list[CreateKeyResponse]:
        with (
            KeyServiceClient(target, admin_token=self.admin_token, timeout=60) as admin,
            ThreadPoolExecutor(4) as pool,
        ):
            return list(
                pool.map(
                    lambda n: admin.create_key(ACCOUNT, f"bench {name} {n}", "live", SCOPES),
                    range(count),
                )
            )

    def run(self) -> list[Row]:
        for leftover in sweep_leftovers():
            progress(f"removed {leftover}, left by a benchmark that was killed outright")
        progress(f"starting servers (logs in {self.workdir})")
        self.database = BenchDatabase()
        self.redis = BenchRedis()
        self.redis_pid = self.redis.local_pid()
        self.versions = (
            f"PostgreSQL {self.database.server_version()}, Redis {self.redis.server_version()}"
        )
        noop = self.start_noop()
        hot_prefix = self.redis.prefix("hot")
        # A alone first: it brings the new database's schema up to date.
        replica_a = self.start_keysvc("keysvc-a", hot_prefix)
        noop_target = self.address(noop, _NOOP_LISTENING)
        target_a = self.keysvc_address(replica_a)
        replica_b = self.start_keysvc("keysvc-b", hot_prefix)
        cold_server = self.start_keysvc("keysvc-cold", self.redis.prefix("cold"))

        progress("creating keys")
        # Created through A, so cached under A's prefix (CreateKey warms the cache).
        hot = [created.secret for created in self.create_keys(target_a, HOT_KEYS, "hot")]
        cold = [created.secret for created in self.create_keys(target_a, COLD_KEYS, "cold")]
        doomed = self.create_keys(target_a, REVOCATION_ROUNDS, "revoked")
        revoked_in_flood = self.create_keys(target_a, REVOKED_DURING_FLOOD, "revoked in flood")
        behind_guards = self.create_keys(
            target_a, near_cache.REVOCATION_ROUNDS, "revoked behind near caches"
        )
        target_b = self.keysvc_address(replica_b)
        # Created through B, so that A never held them in its memory, and taken out of Redis:
        # their first Authorize on A reads the database and runs argon2.
        never_used = self.create_keys(target_b, FIRST_USES_DURING_FLOOD, "first use in flood")
        self.redis.forget(hot_prefix, [created.key.id for created in never_used])
        cold_target = self.keysvc_address(cold_server)

        rows: dict[int, list[Load]] = {}
        keysvc_32: ClosedLoopProcess | None = None
        for concurrency in (1, 32):
            progress(
                f"hot Authorize, {concurrency} in flight: no-op and keysvc"
                f"{' (unary, and over one Session stream each)' if concurrency == 32 else ''}"
                f" in alternating {SLICE_SECONDS:g}s slices, {SLICES} each"
            )
            noop_load = self.closed_loop(
                f"load-no-op-{concurrency}", noop, noop_target, hot, concurrency
            )
            keysvc_load = self.closed_loop(
                f"load-keysvc-{concurrency}", replica_a, target_a, hot, concurrency
            )
            if concurrency == 32:
                session_load = self.closed_loop(
                    "load-session-32", replica_a, target_a, hot, 32, transport="session"
                )
                noop_session = self.closed_loop(
                    "load-no-op-session-32", noop, noop_target, hot, 32, transport="session"
                )
                rows[32] = self.compare(noop_load, keysvc_load, session_load, noop_session)
                self.finish(noop_load, session_load, noop_session)
                keysvc_32 = keysvc_load
            else:
                rows[1] = self.compare(noop_load, keysvc_load)
                self.finish(noop_load, keysvc_load)
        assert keysvc_32 is not None

        progress(
            "flood: keysvc hot @32 with and without a wrong-secret flood @32 from another"
            f" process, in alternating {SLICE_SECONDS:g}s slices"
        )
        flood_load = self.closed_loop("load-flood", replica_a, target_a, forge.flood_of(hot), 32)
        alone, flooded, flood = self.flood(keysvc_32, flood_load)
        self.finish(flood_load)

        progress(
            f"made-up flood: keysvc hot @32 with and without {MADE_UP_KEYS:,} keys of key ids"
            " nobody issued @32, alternating; then RevokeKey and first uses during it"
        )
        made_up_load = self.closed_loop(
            "load-made-up", replica_a, target_a, forge.made_up(MADE_UP_KEYS), 32
        )
        made_up_alone, made_up_flooded, _ = self.flood(keysvc_32, made_up_load)
        revoke_ms, first_ms, made_up = self.during(
            made_up_load, target_a, revoked_in_flood, [c.secret for c in never_used]
        )
        self.finish(keysvc_32, made_up_load)

        cold_ms = self.cold(cold_target, cold)
        revoked = self.revocation([target_a, target_b], target_a, doomed)

        noop_1, keysvc_1 = rows[1]
        noop_32, keysvc_32_load, session_32, noop_session_32 = rows[32]
        more = near_cache.in_process(self, target_a, hot[0], keysvc_32_load)
        more += near_cache.revocation(self, [target_a, target_b], behind_guards, hot)
        more += workers.compare(self, hot, replica_a, target_a)
        more += recovery.measure(self)
        progress("gateway: Check through Envoy against a direct upstream; Check against Authorize")
        gateway_dir = self.workdir / "gateway"
        gateway_dir.mkdir()
        more += gateway.run(
            argparse.Namespace(seconds=5, warmup=1, concurrency=8, envoy_threads=2), gateway_dir
        )
        if os.environ.get("BENCH_SCALE") == "1":
            more += scale.measure(self, hot)
        else:
            progress("scale: skipped (BENCH_SCALE=1 runs it: a database of 1M keys, 1.5 to 2 min)")

        ratio_1 = keysvc_1.throughput / noop_1.throughput
        ratio_32 = keysvc_32_load.throughput / noop_32.throughput
        session_ratio = session_32.throughput / noop_32.throughput
        noop_session_ratio = noop_session_32.throughput / noop_32.throughput
        flood_ratio = flooded.throughput / alone.throughput
        made_up_ratio = made_up_flooded.throughput / made_up_alone.throughput
        # Beside the flood the server serves both clients: its CPU is per request of either.
        flooded_requests = flooded.requests + flood.requests
        flood_server_us = flooded.cpu["server"] / flooded_requests * 1e6
        ordered = sorted(cold_ms)
        self.notes.append(
            f"flood: {flood.throughput:,.0f} wrong secrets/s refused beside the hot load"
            f" ({flood.allowed} allowed, p50 {flood.p50_ms:.2f} ms); keysvc alone in the"
            f" interleaved slices: {alone.throughput:,.0f} req/s. Its server CPU/req is per"
            " request of either client."
        )
        self.notes.append(
            f"made-up flood: {made_up.throughput:,.0f} made-up keys/s refused while RevokeKey"
            f" and first uses were timed ({made_up.allowed} allowed)."
        )
        return [
            measured("Authorize hot @1, (a) no-op", noop_1),
            measured(
                "Authorize hot @1, (b) keysvc",
                keysvc_1,
                result=f"b/a {ratio_1:.2f}",
                target=f"p50 <= {P50_TARGET_MS:g} ms",
                met=keysvc_1.p50_ms <= P50_TARGET_MS,
            ),
            measured("Authorize hot @32, (a) no-op", noop_32),
            measured(
                "Authorize hot @32, (b) keysvc",
                keysvc_32_load,
                result=f"b/a {ratio_32:.2f}",
                target=f"b/a >= {HOT_RATIO_TARGET:g}",
                met=ratio_32 >= HOT_RATIO_TARGET,
            ),
            measured(
                "Authorize hot @32, (c) keysvc over one Session stream",
                session_32,
                result=f"c/a {session_ratio:.2f}",
                target=f"c/a >= {SESSION_RATIO_TARGET:g}",
                met=session_ratio >= SESSION_RATIO_TARGET,
            ),
            measured(
                "Authorize hot @32, (d) no-op over one Session stream",
                noop_session_32,
                result=f"d/a {noop_session_ratio:.2f}",
            ),
            Row(
                f"cold look-up: first Authorize, {len(cold_ms)} keys",
                p50_ms=statistics.median(ordered),
                p99_ms=ordered[-1],
                result="(p99 column: max)",
            ),
            Row(
                "flood: keysvc hot @32 beside wrong-secret flood @32",
                flooded.throughput,
                flooded.p50_ms,
                flooded.p99_ms,
                flood_server_us,
                flooded.others_cores,
                f"{flood_ratio:.2f} of no flood",
                f">= {FLOOD_RATIO_TARGET:g}",
                flood_ratio >= FLOOD_RATIO_TARGET,
            ),
            Row(
                "made-up flood: keysvc hot @32 beside distinct made-up key ids @32",
                made_up_flooded.throughput,
                made_up_flooded.p50_ms,
                made_up_flooded.p99_ms,
                result=f"{made_up_ratio:.2f} of no flood",
            ),
            Row(
                f"  RevokeKey during it, {len(revoke_ms)} calls (lease 1 s)",
                p50_ms=statistics.median(revoke_ms),
                p99_ms=max(revoke_ms),
                result="(p99 column: max)",
                target=f"max <= {REVOKE_TARGET_MS:,.0f} ms",
                met=max(revoke_ms) <= REVOKE_TARGET_MS,
            ),
            Row(
                f"  first Authorize of a real key during it, {len(first_ms)} keys",
                p50_ms=statistics.median(first_ms),
                p99_ms=max(first_ms),
                result="(p99 column: max)",
            ),
            Row(
                f"revocation: {REVOCATION_ROUNDS} rounds, 2 replicas",
                result=(
                    f"{revoked['allowed_after']} allowed of {revoked['sent_after']:,}"
                    " sent after revoke"
                ),
                target="0 allowed",
                met=revoked["allowed_after"] == 0 and revoked["sent_after"] > 0,
            ),
            *more,
        ]

    def cleanup(self) -> None:
        """Stops every process, drops the database, deletes the Redis keys and temporary files."""
        done = []
        stopped = 0
        for child in reversed(self.children):
            if child.running:
                stopped += 1
                code = child.stop()
                if child.name.startswith("keysvc-") and code != 0:
                    self.notes.append(f"{child.name} exited with {code}; log:\n{child.log_tail()}")
        done.append(f"{stopped} processes stopped")
        for database in [self.database, *self.databases]:
            if database is None:
                continue
            try:
                database.drop()
                done.append(f"database {database.name} dropped")
            except Exception as err:
                progress(f"could not drop database {database.name}: {err}")
        if self.redis is not None:
            try:
                deleted = self.redis.drop()
                done.append(f"{deleted} Redis keys under {self.redis.root} deleted")
            except Exception as err:
                progress(f"could not delete Redis keys {self.redis.root}*: {err}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        progress("cleaned up: " + ", ".join(done))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Also when started with SIGINT ignored (in the background, say): Ctrl-C cleans up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    print(machine_line(), flush=True)
    bench = Bench()
    code = 0
    try:
        rows = bench.run()
        print(bench.versions)
        print()
        print(table(rows))
    except KeyboardInterrupt:
        progress("interrupted")
        code = 130
    except Exception:
        traceback.print_exc()
        progress("failed")
        code = 1
    finally:
        # Cleaning up must finish, whatever arrives meanwhile.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()
    for note in bench.notes:
        print(f"note: {note}")
    progress("done")
    return code
