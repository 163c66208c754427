"""A replica's view of the change log: which keys changed since which position, which key ids
exist, and how fresh that knowledge is. docs/revocation.md states the protocol it serves.

The database appends a change (a key created, revoked, ...) in the same transaction as the
change itself, in commit order. Every replica reads the log every fraction of the lease L
(`ChangeFollower`). A cached grant records the log position its state was read at; a change
of its key logged after that position makes it stale. Since the replica only trusts its
knowledge for L after the read that produced it started, and RevokeKey returns only L after
its commit, no replica serves a stale grant to a request that arrives after RevokeKey
returned, whatever the cache holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from keysvc.core.errors import Unavailable
from keysvc.core.model import Change, ChangeKind, KeyGrant
from keysvc.ports.store import KeyStore
from keysvc.ports.workers import Workers

log = logging.getLogger(__name__)

# rho: how far from real time's rate any clock measuring a lease may run, fast or slow: a
# clock that counts d seconds saw between d/(1 + rho) and d/(1 - rho) pass (NTP slews by at
# most 0.05%; this leaves a wide margin). docs/revocation.md, "The clocks".
CLOCK_DRIFT = 0.01


def revocation_wait(lease_seconds: float) -> float:
    """How long, on its own clock, a narrowing change waits after its commit: long enough
    that every cache, at any level, that counted the lease L on its own clock has stopped
    trusting what it read before the commit. That takes at most L/(1 - rho) of real time;
    a wait counted as W on a clock that may run fast lasts at least W/(1 + rho)."""
    return lease_seconds * (1 + CLOCK_DRIFT) / (1 - CLOCK_DRIFT)


def lease_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended.

    CLOCK_MONOTONIC stops during a suspend: a replica resumed from one would think its
    knowledge younger than it is. CLOCK_BOOTTIME does not stop (Linux).
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class KnownKeyIds:
    """Every key id there is, kept small: their hashes in a sorted array, and a set of the
    ones added since the array was last rebuilt.

    A hash names a key id within this process only (Python's string hash, salted per process,
    so that nobody outside can aim collisions at it); a collision costs one database read.
    """

    def __init__(self) -> None:
        self._sorted = array("q")
        self._recent: set[int] = set()
        self._staged = array("q")

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __contains__(self, key_id: str) -> bool:
        value = hash(key_id)
        if value in self._recent:
            return True
        at = bisect_left(self._sorted, value)
        return at < len(self._sorted) and self._sorted[at] == value

    def add(self, key_ids: Iterable[str]) -> None:
        self._recent.update(hash(key_id) for key_id in key_ids)
        # Rebuilt when the set holds an eighth of the array: the sort mostly merges two runs.
        if len(self._recent) > max(1024, len(self._sorted) // 8):
            self._rebuild(self._recent)

    def stage(self, key_ids: Iterable[str]) -> None:
        """Holds key ids back until add_staged(): a replica's start reads a million of them page
        by page, and sorts once after the last page rather than every few pages."""
        self._staged.extend(hash(key_id) for key_id in key_ids)

    def add_staged(self) -> None:
        self._rebuild(self._staged)
        self._staged = array("q")

    def _rebuild(self, more: Iterable[int]) -> None:
        self._sorted = array("q", sorted({*self._sorted, *self._recent, *more}))
        self._recent.clear()


class ChangeLog:
    """What this replica knows of the change log, and since when."""

    def __init__(
        self,
        *,
        lease_seconds: float,
        read_timeout_seconds: float = 5.0,
        max_changed_keys: int = 100_000,
        clock: Callable[[], float] = lease_clock,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.lease_seconds = lease_seconds
        self._read_timeout = read_timeout_seconds
        self.now = clock
        self._max_changed_keys = max_changed_keys
        # The highest seq applied: the next read asks for changes after it.
        self.cursor = 0
        # Per key id, the seq of its latest change that may have narrowed what a grant allows,
        # in seq order; forgetting one raises the floor to it.
        self._changed: OrderedDict[str, int] = OrderedDict()
        # Grants read at a seq below the floor may predate a change forgotten since: stale.
        self._floor = 0
        self._known = KnownKeyIds()
        # When the latest read that caught up with the log was started; None before one did.
        self._read_at: float | None = None
        self._reads: list[tuple[float, asyncio.Future[None]]] = []
        # Called when a request starts waiting for a read (see ChangeFollower.run).
        self._want_read: Callable[[], None] = lambda: None
        # Called with the key ids of every change learnt but a creation (sessions push them).
        self._listeners: list[Callable[[list[str]], None]] = []

    def apply(self, changes: Sequence[Change], *, read_at: float | None) -> None:
        """Learns `changes`, read from the log after the cursor in one read; `read_at` is when
        that read was started if it reached the log's head in its snapshot, else None."""
        self.note(changes)
        for change in changes:
            self.cursor = max(self.cursor, change.seq)
        if read_at is not None and (self._read_at is None or read_at > self._read_at):
            self._read_at = read_at
            self._wake(read_at)

    def note(self, changes: Sequence[Change]) -> None:
        """Learns changes this replica made itself. The cursor stays: changes before them,
        made through other replicas, may not have been read yet."""
        self._known.add(change.key_id for change in changes if change.kind is ChangeKind.CREATED)
        changed: list[str] = []
        for change in changes:
            if change.kind is not ChangeKind.CREATED:
                seq = self._changed.get(change.key_id, 0)
                if change.seq > seq:
                    changed.append(change.key_id)
                self._changed[change.key_id] = max(change.seq, seq)
                self._changed.move_to_end(change.key_id)
        while len(self._changed) > self._max_changed_keys:
            _, seq = self._changed.popitem(last=False)
            self._floor = max(self._floor, seq)
        if changed:
            for listener in list(self._listeners):
                listener(changed)

    def on_changes(self, listener: Callable[[list[str]], None]) -> Callable[[], None]:
        """Has `listener` called with the key ids of each batch of changes learnt (revoked,
        updated) from now on: for speed only, as pushes are. Returns what unregisters it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def start(self, *, head: int, changes: Sequence[Change], floor: int) -> None:
        """Starts from the log's head, knowing the latest changes (revocations, updates) before
        it; grants read below `floor` are stale (changes before it were not loaded)."""
        self.cursor = max(self.cursor, head)
        self._floor = max(self._floor, floor)
        self.note(changes)

    def add_known(self, key_ids: Iterable[str]) -> None:
        """Key ids that exist (read from the keys themselves at start), known from the next
        known_loaded() on."""
        self._known.stage(key_ids)

    def known_loaded(self) -> None:
        """Every key id given to add_known is known from now on."""
        self._known.add_staged()

    def current(self, grant: KeyGrant) -> bool:
        """Whether `grant` may decide a request arriving now: this replica's knowledge is
        younger than the lease, and no change of the key was logged after the grant's read."""
        read_at = self._read_at
        if read_at is None or self.now() - read_at > self.lease_seconds:
            return False
        return grant.seq >= self._floor and self._changed.get(grant.key_id, 0) <= grant.seq

    def lease_remaining(self, grant: KeyGrant) -> float:
        """How long from now `grant` may go on deciding in a cache further from the change log
        (an API server's Guard): what remains of this replica's own trust in it. 0 when it is
        not current. Handed on, it never outlasts the read it rests on (docs/revocation.md)."""
        read_at = self._read_at
        if read_at is None or grant.revoked or not self.current(grant):
            return 0.0
        return max(0.0, read_at + self.lease_seconds - self.now())

    def read_soon(self) -> None:
        """Asks for a read of the log now rather than at the next interval (a replica was told
        a key changed). Reads still come at most every ChangeFollower's minimum gap."""
        self._want_read()

    def knows(self, key_id: str) -> bool:
        return key_id in self._known

    def read_since(self, moment: float) -> bool:
        """Whether a read started at or after `moment` has caught up with the log."""
        return self._read_at is not None and self._read_at >= moment

    async def read_after(self, moment: float) -> None:
        """Waits until a read started at or after `moment` has caught up with the log;
        Unavailable if none has within the read timeout (the database's)."""
        if self.read_since(moment):
            return
        future = asyncio.get_running_loop().create_future()
        self._reads.append((moment, future))
        self._want_read()
        try:
            async with asyncio.timeout(self._read_timeout):
                await asyncio.shield(future)
        except TimeoutError as err:
            raise Unavailable("the change log could not be read in time") from err
        finally:
            with contextlib.suppress(ValueError):
                self._reads.remove((moment, future))

    def _wake(self, read_at: float) -> None:
        for moment, future in list(self._reads):
            if moment <= read_at and not future.done():
                future.set_result(None)

    def on_read_wanted(self, callback: Callable[[], None]) -> None:
        """Has `callback` called whenever a request starts waiting for a read."""
        self._want_read = callback

    @property
    def wants_read(self) -> bool:
        """Whether a request waits for a read that has not started yet."""
        return any(not future.done() for _, future in self._reads)

    async def wait_out(self, since: float) -> None:
        """Returns once every replica's knowledge, as `current` trusts it, was read after
        `since`: the lease, plus what clocks drifting apart could add to it."""
        remaining = since + revocation_wait(self.lease_seconds) - self.now()
        if remaining > 0:
            await asyncio.sleep(remaining)


class ChangeFollower:
    """Reads the change log into a ChangeLog: at start, then every `interval` seconds, and
    sooner when a request waits for a fresh read."""

    def __init__(
        self,
        store: KeyStore,
        workers: Workers,
        change_log: ChangeLog,
        *,
        interval_seconds: float,
        batch: int = 10_000,
        min_gap_seconds: float = 0.01,
    ) -> None:
        self._store = store
        self._workers = workers
        self._log = change_log
        self._interval = interval_seconds
        self._batch = batch
        self._min_gap = min_gap_seconds
        self._failing = False

    async def load(self, *, max_changes: int = 100_000) -> None:
        """Reads what a new replica starts from: the head, recent changes, every key id."""
        read_at = self._log.now()
        head = await self._workers.feed(self._store.log_head)
        changes = await self._workers.feed(self._store.latest_changes, limit=max_changes)
        # Fewer than asked for: every revocation there ever was is known.
        floor = 0 if len(changes) < max_changes else changes[0].seq - 1
        self._log.start(head=head, changes=changes, floor=floor)
        after = ""
        while True:
            page = await self._workers.feed(self._store.key_ids, after=after, limit=self._batch)
            self._log.add_known(page)
            if len(page) < self._batch:
                break
            after = page[-1]
        self._log.known_loaded()
        # Changes logged while the key ids were read are read now, from the head on.
        await self._catch_up(read_at)

    async def run(self) -> None:
        """Follows the log until cancelled (after `load`)."""
        wanted = asyncio.Event()
        self._log.on_read_wanted(wanted.set)
        if self._log.wants_read:
            wanted.set()
        while True:
            # asyncio.timeout, not wait_for, whose 3.11 version can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await wanted.wait()
            wanted.clear()
            try:
                await self._catch_up(self._log.now())
            except Unavailable:
                if not self._failing:
                    log.warning("change log unreadable: keys are decided from the database")
                self._failing = True
            else:
                if self._failing:
                    log.info("change log readable again")
                self._failing = False
            # However many requests wait, reads come at most this often.
            await asyncio.sleep(self._min_gap)
            if self._log.wants_read:
                wanted.set()

    async def _catch_up(self, read_at: float) -> None:
        """Reads until a page is short, which means the log's head was reached; that read's
        start time then dates what this replica knows."""
        while True:
            started = read_at
            changes = await self._workers.feed(
                self._store.changes_after, self._log.cursor, limit=self._batch
            )
            caught_up = len(changes) < self._batch
            self._log.apply(changes, read_at=started if caught_up else None)
            if caught_up:
                return
            read_at = self._log.now()
