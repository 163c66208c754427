"""One explored schedule: replicas of the real keysvc use cases over the fault-injecting
backends, clients creating, authorizing and revoking keys at random, API servers sending their
requests through Guards (tests.explorer.guard), and faults striking at random, all on the
deterministic loop; what happened is recorded as a History for the checker.

Everything random comes from the loop's seeded generator, so a seed replays its schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from keysvc.adapters.cache.codec import GrantCodec
from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.adapters.cache.near import NearKeyCache
from keysvc.core import keys
from keysvc.core.errors import KeysvcError
from keysvc.core.model import Actor, KeyUpdate, Mode
from keysvc.ports.cache import KeyCache
from keysvc.runtime.build import Keysvc, Seams, assemble
from keysvc.runtime.config import Settings
from keysvc.usecases.change_log import CLOCK_DRIFT
from tests.explorer import loop as explorer_loop
from tests.explorer.backends import (
    Delay,
    FakeCache,
    FakeRedis,
    FakeStore,
    FakeVerifier,
    FakeWorkers,
    Faults,
)
from tests.explorer.guard import Checked, Guard, GuardClock

LEASE = 1.0
SETTINGS = Settings(lease_seconds=LEASE)
FAULTS = (
    "cache restarts empty",
    "cache restored from an older state",
    "old value replayed into the cache",
    "forged value in the cache",
    "cache down",
    "cache slow",
    "store down",
    "store slow",
    "replica cut off from the cache",
    "replica cut off from the store",
)
# Only in schedules with Guards, so that a schedule without draws what it drew before them.
GUARD_FAULTS = (
    "API server paused",
    "Guard's Session stream cut",
)
# Between two requests an API server receives.
GUARD_GAPS = (0.002, 0.01, 0.05, 0.2, 0.5)
ACCOUNT = "acct_explorer"
READ, WRITE = "links:read", "links:write"
OPERATOR = Actor("explorer", "ipv4:127.0.0.1:1")


@dataclass(frozen=True)
class GuardShape:
    """One API server's Guard: the replica its Session stream goes to, how fast its clock runs
    (1 is real time; within rho either way), and how long a check may wait for keysvc."""

    replica: int
    clock_rate: float = 1.0
    timeout: float = 0.5


@dataclass(frozen=True)
class Setup:
    """The shape of a schedule: how many replicas, whether they share a Redis (else each keeps
    the embedded in-process cache) and keep their own memory in front of it (as the server
    does), how many clients make how many calls on how many keys, and which Guards send API
    servers' requests."""

    replicas: int = 3
    shared_cache: bool = True
    clients: int = 4
    operations: int = 25
    keys: int = 4
    near_cache: bool = True
    guards: tuple[GuardShape, ...] = ()

    @classmethod
    def drawn(cls, seed: int) -> Setup:
        """A shape drawn from the seed: one replica on the embedded cache up to three on a
        shared Redis, few keys and many clients (contention) up to the reverse; no Guard in a
        fifth of the schedules, else up to three, with clocks as slow or fast as allowed."""
        rng = random.Random(f"setup {seed}")
        replicas = rng.choice((1, 2, 2, 3, 3))
        shared_cache = rng.random() < 0.75
        clients = rng.choice((3, 4, 6, 8))
        operations = rng.choice((20, 30, 40))
        keys = rng.choice((1, 1, 2, 4))
        near_cache = rng.random() < 0.75
        guards = tuple(
            GuardShape(
                replica=rng.randrange(replicas),
                clock_rate=rng.choice((1 - CLOCK_DRIFT, 1 - CLOCK_DRIFT, 1.0, 1 + CLOCK_DRIFT)),
                timeout=rng.choice((0.05, 0.5, 5.0)),
            )
            for _ in range(rng.choice((0, 1, 1, 2, 3)))
        )
        return cls(replicas, shared_cache, clients, operations, keys, near_cache, guards)


@dataclass
class Authorization:
    replica: int
    key_id: str
    # "right" (the key's own), "wrong" (its id with another secret) or "made-up" (an id
    # nobody issued).
    secret: str
    arrived: float
    decided: float | None = None
    # "allowed", a refusal's reason, "error" (an RPC error), or "cancelled".
    outcome: str = "cancelled"
    # The scope the request requires: every key starts with both, a narrowing removes WRITE.
    scope: str = "links:read"
    # The Guard an API server asked (then `arrived` is when the API server received the
    # request, and `replica` is the Guard's), and whether its near cache decided.
    guard: int | None = None
    local: bool = False


@dataclass
class Revocation:
    """A call that takes something from a key: RevokeKey, RollKey with no grace (the old key
    revoked), or UpdateKey removing WRITE ("narrow")."""

    replica: int
    key_id: str
    called: float
    returned: float | None = None  # when it returned OK
    outcome: str = "cancelled"
    call: str = "revoke"


@dataclass
class History:
    seed: int
    setup: Setup
    lease: float
    # rho: how far from real time's rate a Guard's clock runs.
    drift: float = CLOCK_DRIFT
    authorizations: list[Authorization] = field(default_factory=list)
    revocations: list[Revocation] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    # From the store: when each key's creation and revocation committed (virtual time).
    created_at: dict[str, float] = field(default_factory=dict)
    revoked_at: dict[str, float] = field(default_factory=dict)
    # When each update that removed scopes from a key committed, and which.
    narrowed_at: dict[str, list[tuple[float, frozenset[str]]]] = field(default_factory=dict)
    # What the Guards did (near cache hits, renewals, pushes read and lost, ...).
    guard_counts: Counter[str] = field(default_factory=Counter)


class Simulation:
    def __init__(self, seed: int, setup: Setup) -> None:
        self.seed = seed
        self.setup = setup

    def run(self) -> History:
        # Key ids and secrets too come from the seed, so that a schedule replays exactly.
        drawn = random.Random(self.seed)
        original = keys._random_base62
        keys._random_base62 = lambda length: "".join(
            drawn.choice(keys.ALPHABET) for _ in range(length)
        )
        try:
            return explorer_loop.run(self.seed, self._main())
        finally:
            keys._random_base62 = original

    async def _main(self) -> History:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, explorer_loop.ExplorerLoop)
        rng = loop.rng
        history = History(self.seed, self.setup, LEASE)
        store = FakeStore(loop.time)
        redis = FakeRedis(rng)
        faults = Faults()
        delay = Delay(rng)
        codec = GrantCodec(store.cache_mac_key())
        replicas = [
            self._replica(n, store, redis, codec, faults, delay, rng, loop.time)
            for n in range(self.setup.replicas)
        ]
        for replica in replicas:
            await replica.start()

        secrets: dict[str, str] = {}
        for n in range(self.setup.keys):
            created = await replicas[0].admin.create_key(
                ACCOUNT, f"key {n}", Mode.LIVE, [READ, WRITE], OPERATOR
            )
            secrets[created.key.id] = created.raw_key

        guards = [
            Guard(
                n,
                shape.replica,
                replicas[shape.replica],
                # Its own origin too: nothing may compare it with a replica's clock.
                GuardClock(loop.time, shape.clock_rate, origin=1000.0 * (n + 1)),
                rng,
                timeout=shape.timeout,
                counts=history.guard_counts,
            )
            for n, shape in enumerate(self.setup.guards)
        ]
        clients_done, faults_done = asyncio.Event(), asyncio.Event()
        breaker = asyncio.ensure_future(
            self._break_things(rng, faults, redis, secrets, history, faults_done, guards)
        )
        api_servers = [
            asyncio.ensure_future(self._api_server(rng, guard, secrets, history, clients_done))
            for guard in guards
        ]
        await asyncio.gather(
            *(self._client(rng, replicas, secrets, history) for _ in range(self.setup.clients))
        )
        # The API servers stop receiving, and wait for what they received; faults go on (and
        # end: a paused Guard resumes) until then.
        clients_done.set()
        await asyncio.gather(*api_servers)
        faults_done.set()
        await breaker
        for guard in guards:
            guard.close()
        for replica in replicas:
            # Its last flush of last-used times may meet a fault still in force.
            with contextlib.suppress(KeysvcError):
                await replica.stop()
        history.created_at = dict(store.created_at)
        history.revoked_at = dict(store.revoked_at)
        history.narrowed_at = {key: list(at) for key, at in store.narrowed_at.items()}
        return history

    def _replica(
        self,
        number: int,
        store: FakeStore,
        redis: FakeRedis,
        codec: GrantCodec,
        faults: Faults,
        delay: Delay,
        rng: random.Random,
        now: Callable[[], float],
    ) -> Keysvc:
        """One replica, assembled as the server assembles it, over the fault-injecting parts."""
        cache: KeyCache
        if self.setup.shared_cache:
            cache = FakeCache(redis, codec, faults, number, delay)
            if self.setup.near_cache:
                cache = NearKeyCache(MemoryKeyCache(clock=now), cache)
        else:
            cache = MemoryKeyCache(clock=now)

        def wall_clock() -> datetime:
            return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=now())

        seams = Seams(clock=wall_clock, monotonic=now, lease_clock=now, verifier=FakeVerifier())
        workers = FakeWorkers(faults, number, delay, rng)
        return assemble(SETTINGS, store, cache, workers, seams)

    async def _client(
        self,
        rng: random.Random,
        replicas: list[Keysvc],
        secrets: dict[str, str],
        history: History,
    ) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.setup.operations):
            number = rng.randrange(len(replicas))
            replica = replicas[number]
            key_id = rng.choice(sorted(secrets))
            # Some callers give up: an API server's deadline, an operator's Ctrl-C.
            patience = rng.choice((None, None, None, 0.001, 0.01, 0.1))
            roll = rng.random()
            if roll < 0.7:
                kind = rng.choice(("right",) * 8 + ("wrong", "made-up"))
                api_key = secrets[key_id]
                if kind == "wrong":
                    api_key = keys.generate(Mode.LIVE, key_id)
                elif kind == "made-up":
                    key_id = keys.new_key_id()
                    api_key = keys.generate(Mode.LIVE, key_id)
                scope = rng.choice((READ, WRITE))
                record = Authorization(number, key_id, kind, arrived=loop.time(), scope=scope)
                history.authorizations.append(record)
                await self._attempt(
                    replica.authorizer.authorize(api_key, [scope]), patience, record
                )
            elif roll < 0.8:
                revocation = Revocation(number, key_id, called=loop.time())
                history.revocations.append(revocation)
                await self._attempt(
                    replica.admin.revoke_key(ACCOUNT, key_id, OPERATOR), patience, revocation
                )
            elif roll < 0.86:
                narrowing = Revocation(number, key_id, called=loop.time(), call="narrow")
                history.revocations.append(narrowing)
                read_only = KeyUpdate(frozenset({"scopes"}), scopes=(READ,))
                await self._attempt(
                    replica.admin.update_key(ACCOUNT, key_id, read_only, OPERATOR),
                    patience,
                    narrowing,
                )
            elif roll < 0.89:
                rolling = Revocation(number, key_id, called=loop.time(), call="roll")
                history.revocations.append(rolling)
                await self._attempt(self._roll(replica, key_id, secrets), patience, rolling)
            elif roll < 0.95:
                with contextlib.suppress(KeysvcError, TimeoutError):
                    async with asyncio.timeout(patience):
                        created = await replica.admin.create_key(
                            ACCOUNT, "another", Mode.LIVE, [READ, WRITE], OPERATOR
                        )
                        secrets[created.key.id] = created.raw_key
            else:
                await asyncio.sleep(rng.choice((0.1, 0.5, LEASE, 2 * LEASE)))

    async def _api_server(
        self,
        rng: random.Random,
        guard: Guard,
        secrets: dict[str, str],
        history: History,
        done: asyncio.Event,
    ) -> None:
        """An API server in front of `guard`: requests arrive at random moments, each handled
        on its own (they pile up while the Guard is paused), until `done`; then it waits for
        every one it received."""
        loop = asyncio.get_running_loop()
        handling: list[asyncio.Future[None]] = []
        while True:
            await asyncio.sleep(rng.choice(GUARD_GAPS))
            if done.is_set():
                break
            # Mostly the newest keys nobody has set out to revoke yet: an API server's traffic
            # is for a few hot keys, which its Guard then decides itself.
            retired = {r.key_id for r in history.revocations if r.call != "narrow"}
            live = [key_id for key_id in secrets if key_id not in retired][-2:]
            key_id = rng.choice(live if live and rng.random() < 0.8 else sorted(secrets))
            kind = rng.choice(("right",) * 9 + ("wrong",))
            api_key = secrets[key_id] if kind == "right" else keys.generate(Mode.LIVE, key_id)
            scope = rng.choice((READ, WRITE))
            record = Authorization(
                guard.replica_number,
                key_id,
                kind,
                arrived=loop.time(),
                scope=scope,
                guard=guard.number,
            )
            history.authorizations.append(record)
            handling.append(
                asyncio.ensure_future(self._attempt(guard.check(api_key, scope), None, record))
            )
        await asyncio.gather(*handling)

    @staticmethod
    async def _roll(replica: Keysvc, key_id: str, secrets: dict[str, str]) -> None:
        """RollKey with no grace: the old key revoked, the new one used from then on."""
        rolled = await replica.admin.roll_key(ACCOUNT, key_id, timedelta(0), OPERATOR)
        secrets[rolled.key.id] = rolled.raw_key

    @staticmethod
    async def _attempt(
        call: Awaitable[object], patience: float | None, record: Authorization | Revocation
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(patience):
                result = await call
        except TimeoutError:
            record.outcome = "cancelled"
            return
        except KeysvcError as err:
            record.outcome = f"error: {type(err).__name__}"
            return
        if isinstance(result, Checked):
            assert isinstance(record, Authorization)
            record.decided = loop.time()
            record.outcome = result.outcome
            record.local = result.local
        elif isinstance(record, Authorization):
            record.decided = loop.time()
            reason = getattr(result, "reason", None)
            record.outcome = "allowed" if getattr(result, "allowed", False) else str(reason)
        else:
            record.returned = loop.time()
            record.outcome = "ok"

    async def _break_things(
        self,
        rng: random.Random,
        faults: Faults,
        redis: FakeRedis,
        secrets: dict[str, str],
        history: History,
        done: asyncio.Event,
        guards: list[Guard],
    ) -> None:
        loop = asyncio.get_running_loop()
        mending: list[asyncio.Task[None]] = []
        kinds = FAULTS + GUARD_FAULTS if guards else FAULTS

        def for_a_while(name: str, undo: Callable[[], None]) -> None:
            async def later() -> None:
                await asyncio.sleep(rng.choice((0.01, 0.2, LEASE / 2, LEASE, 3 * LEASE)))
                undo()
                history.faults.append((loop.time(), f"end of {name}"))

            mending.append(asyncio.ensure_future(later()))

        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.choice((0.01, 0.1, 0.3, 1.0))):
                    await done.wait()
            if done.is_set():
                break
            fault = rng.choice(kinds)
            history.faults.append((loop.time(), fault))
            if fault == "cache restarts empty":
                redis.restart_empty()
            elif fault == "cache restored from an older state":
                redis.restore_older()
            elif fault == "old value replayed into the cache":
                redis.replay()
            elif fault == "forged value in the cache":
                redis.forge(f"grant:{rng.choice(sorted(secrets))}")
            elif fault == "cache down":
                faults.cache_down = True
                for_a_while(fault, lambda: setattr(faults, "cache_down", False))
            elif fault == "cache slow":
                faults.cache_slow = rng.choice((0.3, 1.0, 3.0))
                for_a_while(fault, lambda: setattr(faults, "cache_slow", 0.0))
            elif fault == "store down":
                faults.store_down = True
                for_a_while(fault, lambda: setattr(faults, "store_down", False))
            elif fault == "store slow":
                faults.store_slow = rng.choice((0.3, 1.0, 3.0))
                for_a_while(fault, lambda: setattr(faults, "store_slow", 0.0))
            elif fault == "replica cut off from the cache":
                cut = rng.randrange(self.setup.replicas)
                faults.cut_off_from_cache.add(cut)
                for_a_while(fault, functools.partial(faults.cut_off_from_cache.discard, cut))
            elif fault == "replica cut off from the store":
                cut = rng.randrange(self.setup.replicas)
                faults.cut_off_from_store.add(cut)
                for_a_while(fault, functools.partial(faults.cut_off_from_store.discard, cut))
            elif fault == "API server paused":
                guard = rng.choice(guards)
                guard.pause()
                history.faults[-1] = (loop.time(), f"{fault} (Guard {guard.number})")
                for_a_while(history.faults[-1][1], guard.resume)
            else:
                guard = rng.choice(guards)
                guard.cut()
                history.faults[-1] = (loop.time(), f"{fault} (Guard {guard.number})")
                for_a_while(history.faults[-1][1], guard.reconnect)
        for task in mending:
            task.cancel()
