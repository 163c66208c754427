"""The rows of keysvc_client's Guard with its near cache (the API servers' side of keysvc).

- In process: one `python -m bench.guards` process times the blocking Guard's `check()` and
  the asyncio Guard's `await check()` on one hot key, one call after another, and the unary
  Authorize from the same process; set against keysvc's unary throughput at 32 in flight.
- Revocation: two API servers (bench.guards processes), a blocking Guard on replica A and an
  asyncio Guard on replica B, both with the near cache, check the hot keys and the round's
  key in a closed loop as fast as they go, recording every check. Each round revokes the
  round's key through A once both API servers have allowed it; afterwards, every check of it
  sent after RevokeKey returned must have been refused.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from keysvc_client import CreateKeyResponse, KeyServiceClient

from bench.filler import ACCOUNT
from bench.load_client import Load, percentile
from bench.processes import START_TIMEOUT
from bench.report import Row, progress
from bench.services import checkpoints

if TYPE_CHECKING:
    from bench.run import Bench

GUARD_SECONDS = 2.0
P50_TARGET_US = 20.0
# A hot check from the near cache against keysvc's unary throughput at 32 in flight.
THROUGHPUT_TARGET = 50.0
REVOCATION_ROUNDS = 20
# Once both API servers allowed the round's key: how long before RevokeKey, and after it.
BEFORE_REVOKE_SECONDS = 0.1
AFTER_REVOKE_SECONDS = 0.2
# RevokeKey: the lease L (1 s) plus 50 ms.
REVOKE_TARGET_MS = 1000 + 50
API_SERVERS = (("sync", "blocking Guard on A"), ("aio", "asyncio Guard on B"))
# The API servers' niceness: they spin on the cores keysvc needs, which on machines of their
# own they would not.
API_SERVER_NICE = 10


def in_process(bench: Bench, target: str, key: str, unary: Load) -> list[Row]:
    """Guard.check() on a hot key in one process, against keysvc's unary Authorize @32."""
    progress(
        f"Guard hot check in process: blocking, then asyncio Guard, {GUARD_SECONDS:g}s each,"
        " near cache on; then unary Authorize from the same process"
    )
    process = bench.load_process(
        "guard-in-process",
        "bench.guards",
        {"kind": "in process", "target": target, "key": key, "seconds": GUARD_SECONDS},
    )
    result: dict[str, Any] = process.expect("result", 120)
    bench.finish(process)
    rows = []
    for flavour, label in (("sync", "Guard.check()"), ("aio", "await aio Guard.check()")):
        timed = result[flavour]
        times = timed["per_second"] / unary.throughput
        progress(
            f"  {label}: {timed['per_second']:,.0f}/s, p50 {timed['p50_us']:.1f} µs,"
            f" p99 {timed['p99_us']:.1f} µs, max {timed['max_us']:,.0f} µs; stats {timed['stats']}"
        )
        if timed["refused"]:
            bench.notes.append(f"{label}: {timed['refused']} hot checks not allowed")
        stats = timed["stats"]
        bench.notes.append(
            f"{label}: {timed['calls']:,} checks, {stats['hits']:,} decided in the near cache,"
            f" {stats['misses']} asked keysvc, {stats['renewals']} leases renewed in the"
            f" background; max {timed['max_us']:,.0f} µs; {timed['cpu_us']:.1f} µs of the"
            f" process's CPU per check ({1e6 / timed['cpu_us']:,.0f} checks per CPU-second)."
        )
        rows.append(
            Row(
                f"Guard hot check in process, {label}",
                timed["per_second"],
                result=(
                    f"p50 {timed['p50_us']:.1f} µs, p99 {timed['p99_us']:.1f} µs;"
                    f" {times:,.0f}x unary @32"
                ),
                target=f"p50 <= {P50_TARGET_US:g} µs, >= {THROUGHPUT_TARGET:g}x",
                met=timed["p50_us"] <= P50_TARGET_US and times >= THROUGHPUT_TARGET,
            )
        )
    unary_here = result["unary"]
    rows.append(
        Row(
            "  unary Authorize from the same process @1",
            unary_here["per_second"],
            unary_here["p50_us"] / 1000,
            unary_here["p99_us"] / 1000,
        )
    )
    return rows


def revocation(
    bench: Bench, targets: list[str], doomed: list[CreateKeyResponse], hot: list[str]
) -> list[Row]:
    """RevokeKey through A while API servers' Guards on A and B check the key."""
    progress(
        f"revocation behind near caches: {len(doomed)} rounds, API servers with Guards on"
        " A (blocking) and B (asyncio) checking in a closed loop"
    )
    servers = [
        bench.load_process(
            f"api-server-{number}",
            "bench.guards",
            {
                "kind": "api server",
                "flavour": flavour,
                "target": target,
                "hot": hot,
                "doomed": [created.secret for created in doomed],
                "nice": API_SERVER_NICE,
            },
        )
        for number, ((flavour, _), target) in enumerate(zip(API_SERVERS, targets, strict=True), 1)
    ]
    for server in servers:
        server.expect("ready", START_TIMEOUT)
    revocations: list[list[float]] = []
    checkpoints_before = checkpoints()
    with KeyServiceClient(targets[0], admin_token=bench.admin_token, timeout=30) as admin:
        admin.list_scopes()  # connected before the first round
        for number, created in enumerate(doomed):
            for server in servers:
                server.send({"round": number})
            for server in servers:
                if server.expect("allowed", 30) != number:
                    bench.notes.append(f"{server.name}: round {number}'s key was never allowed")
            time.sleep(BEFORE_REVOKE_SECONDS)
            called = time.monotonic()
            admin.revoke_key(ACCOUNT, created.key.id)
            returned = time.monotonic()
            revocations.append([number, called, returned])
            time.sleep(AFTER_REVOKE_SECONDS)
    checkpointed = checkpoints() - checkpoints_before
    for server in servers:
        server.send({"finish": revocations})
    results: list[dict[str, Any]] = [server.expect("result", 120) for server in servers]
    bench.finish(*servers)

    revoke_us = sorted(round((returned - called) * 1e6) for _, called, returned in revocations)
    revoke_p99_ms = percentile(revoke_us, 0.99) / 1000
    sent_after = sum(r["sent_after"] for result in results for r in result["rounds"])
    allowed_after = sum(r["allowed_after"] for result in results for r in result["rounds"])
    progress(
        f"  {allowed_after} allowed of {sent_after:,} checks sent after RevokeKey returned;"
        f" RevokeKey p50 {percentile(revoke_us, 0.5) / 1000:.0f} ms,"
        f" max {revoke_us[-1] / 1000:.0f} ms"
    )
    rows = [
        Row(
            f"revocation behind near caches: {len(doomed)} rounds, 2 API servers' Guards",
            result=f"{allowed_after} allowed of {sent_after:,} checks sent after revoke",
            target="0 allowed",
            met=allowed_after == 0 and sent_after > 0,
        ),
        Row(
            f"  RevokeKey, {len(revoke_us)} calls (lease 1 s)",
            p50_ms=percentile(revoke_us, 0.5) / 1000,
            p99_ms=revoke_p99_ms,
            target=f"p99 <= {REVOKE_TARGET_MS:,} ms",
            met=revoke_p99_ms <= REVOKE_TARGET_MS,
        ),
    ]
    per_round = [
        f"{(returned - called) * 1000:,.0f}/"
        + "/".join(
            "-"
            if (first := result["rounds"][number]["first_refusal_s"]) is None
            else f"{first * 1000:.0f}"
            for result in results
        )
        for number, (_, called, returned) in enumerate(revocations)
    ]
    bench.notes.append(
        "revocation behind near caches, each round's RevokeKey / first refusal on A's API server"
        f" / on B's, ms: {', '.join(per_round)}; PostgreSQL made {checkpointed} checkpoints"
        " meanwhile."
    )
    for (_, label), result in zip(API_SERVERS, results, strict=True):
        refusals = [r["first_refusal_s"] for r in result["rounds"]]
        found = sorted(round(seconds * 1e6) for seconds in refusals if seconds is not None)
        unavailable = sum(r["unavailable_after"] for r in result["rounds"])
        late = [r for r in result["rounds"] if r["first_refusal_verdict"] not in (None, 1)]
        progress(
            f"  {label}: {result['checks']:,} checks ({result['per_second']:,.0f}/s), first"
            f" refusal p50 {percentile(found, 0.5) / 1000:.1f} ms; stats {result['stats']}"
        )
        bench.notes.append(
            f"API server ({label}): {result['checks']:,} checks at {result['per_second']:,.0f}/s"
            f" (hot check p50 {result['hot_p50_us']:.1f} µs), {result['hot_not_allowed']} hot"
            f" checks not allowed, {unavailable} checks of revoked keys answered unavailable,"
            f" {len(late)} first refusals that were not a 401; Guard {result['stats']}."
        )
        rows.append(
            Row(
                f"  first refusal after RevokeKey's call, API server with {label}",
                p50_ms=percentile(found, 0.5) / 1000,
                p99_ms=percentile(found, 0.99) / 1000,
                result=f"{len(found)} of {len(refusals)} rounds refused",
            )
        )
    return rows
