"""Mechanisms of the revocation protocol removed on purpose, one at a time, to show that the
explorer notices: each is a function that patches the real code (pytest's monkeypatch), and
`python -m tests.explorer.mutations NAME [SCHEDULES]` lists the first seeds that catch it.

test_regressions.py keeps one caught seed per mutation and checks, on every run, that the
seed still holds on the real code and still fails with the mechanism removed.
"""

from __future__ import annotations

import hmac
import logging
import sys
from collections.abc import Callable

import pytest
from keysvc_client._guard_common import Verdict
from keysvc_client._near_cache import Held, NearCache
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.core.errors import Unavailable
from keysvc.core.model import ApiKey, Change, ChangeKind, Decision, KeyGrant, Reason
from keysvc.ports.store import StoredKey
from keysvc.usecases import admin
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeLog
from tests.explorer.checker import violations
from tests.explorer.guard import Guard, GuardClock, Renewal
from tests.explorer.schedule import Setup, Simulation

Mutation = Callable[[pytest.MonkeyPatch], None]


def no_wait(patch: pytest.MonkeyPatch) -> None:
    """RevokeKey returns without waiting out the lease."""

    async def wait_out(self: ChangeLog, since: float) -> None:
        return None

    patch.setattr(ChangeLog, "wait_out", wait_out)


def no_lease(patch: pytest.MonkeyPatch) -> None:
    """A cached grant is trusted however old the replica's knowledge of the change log."""

    def current(self: ChangeLog, grant: KeyGrant) -> bool:
        changed: int = self._changed.get(grant.key_id, 0)
        return grant.seq >= self._floor and changed <= grant.seq

    patch.setattr(ChangeLog, "current", current)


def no_change_check(patch: pytest.MonkeyPatch) -> None:
    """A cached grant is trusted whatever changed its key since it was read."""

    def current(self: ChangeLog, grant: KeyGrant) -> bool:
        read_at = self._read_at
        return read_at is not None and self.now() - read_at <= self.lease_seconds

    patch.setattr(ChangeLog, "current", current)


def shared_old_reads(patch: pytest.MonkeyPatch) -> None:
    """A request joins any store read of its key, whenever that read began."""
    read = Authorizer._read

    async def _read(self: Authorizer, key_id: str, arrived: float) -> StoredKey | None:
        return await read(self, key_id, float("-inf"))

    patch.setattr(Authorizer, "_read", _read)


def cursor_skips(patch: pytest.MonkeyPatch) -> None:
    """A replica's own change moves its read cursor, past changes not read yet."""
    note = ChangeLog.note

    def noted(self: ChangeLog, changes: list[Change]) -> None:
        note(self, changes)
        for change in changes:
            self.cursor = max(self.cursor, change.seq)

    patch.setattr(ChangeLog, "note", noted)


def updates_unlogged(patch: pytest.MonkeyPatch) -> None:
    """A replica takes no notice of updates in the change log: only revocations make a cached
    grant stale, as before keys could be narrowed."""
    note = ChangeLog.note

    def noted(self: ChangeLog, changes: list[Change]) -> None:
        note(self, [change for change in changes if change.kind is not ChangeKind.UPDATED])

    patch.setattr(ChangeLog, "note", noted)


def narrowing_no_wait(patch: pytest.MonkeyPatch) -> None:
    """UpdateKey takes no change for a narrowing one, and returns as soon as a scope's removal
    commits, without waiting out the lease."""

    def narrows(before: ApiKey, after: ApiKey) -> bool:
        return False

    patch.setattr(admin, "narrows", narrows)


def guard_counts_from_receipt(patch: pytest.MonkeyPatch) -> None:
    """A Guard counts an answer's lease from when the answer reached it, not from when it
    sent the request (or the renewal) the answer is to."""
    decided = Guard._decided
    renewed = Guard._renewed

    def _decided(
        self: Guard,
        response: pb.AuthorizeResponse,
        digest: bytes,
        required: tuple[str, ...],
        sent: float,
        epoch: int,
        session: int,
    ) -> Verdict:
        return decided(self, response, digest, required, self.now(), epoch, session)

    def _renewed(self: Guard, renewal: Renewal, response: pb.SessionResponse) -> None:
        renewed(self, Renewal(renewal.entry, self.now()), response)

    patch.setattr(Guard, "_decided", _decided)
    patch.setattr(Guard, "_renewed", _renewed)


def full_lease_handed_on(patch: pytest.MonkeyPatch) -> None:
    """A replica hands a Guard the whole lease with a current grant, not what remains of its
    own trust in it (the lease counted from its latest read of the change log)."""

    def lease_remaining(self: ChangeLog, grant: KeyGrant) -> float:
        return 0.0 if grant.revoked or not self.current(grant) else self.lease_seconds

    patch.setattr(ChangeLog, "lease_remaining", lease_remaining)


def renew_without_lease_check(patch: pytest.MonkeyPatch) -> None:
    """A renewal is answered from the cached grant without checking that it is current: the
    lease handed on is what remains of the replica's latest read of the change log, whatever
    changed the key since the grant was read."""
    renew = Authorizer.renew

    async def renewed(self: Authorizer, key_id: str, digest: bytes) -> Decision:
        try:
            grant = await self._cache.get(key_id)
        except Unavailable:
            grant = None
        read_at = self._log._read_at
        if (
            grant is None
            or grant.revoked
            or grant.digest is None
            or not hmac.compare_digest(grant.digest, digest)
            or read_at is None
        ):
            return await renew(self, key_id, digest)
        lease = max(0.0, read_at + self._log.lease_seconds - self._log.now())
        return Decision(Reason.ALLOWED, grant, lease_seconds=lease)

    patch.setattr(Authorizer, "renew", renewed)


def guard_clock_stops_while_paused(patch: pytest.MonkeyPatch) -> None:
    """A Guard counts leases on a clock that stops while the machine is suspended (the
    monotonic clock, not CLOCK_BOOTTIME): resumed, it trusts its entries for as long as they
    had left when it stopped."""

    def now(self: GuardClock) -> float:
        real = self._real() if self.stopped_since is None else self.stopped_since
        return self.origin + self.rate * (real - self.stopped_for)

    patch.setattr(GuardClock, "now", now)


def pushes_instead_of_leases(patch: pytest.MonkeyPatch) -> None:
    """A Guard's near cache keeps an entry until a push drops it (as Redis's client-side
    caching does with invalidations), whatever its lease."""

    def get(self: NearCache, digest: bytes, now: float) -> Held | None:
        return self._held.get(digest)

    patch.setattr(NearCache, "get", get)


MUTATIONS: dict[str, Mutation] = {
    mutation.__name__: mutation
    for mutation in (
        no_wait,
        no_lease,
        no_change_check,
        shared_old_reads,
        cursor_skips,
        updates_unlogged,
        narrowing_no_wait,
        guard_counts_from_receipt,
        full_lease_handed_on,
        renew_without_lease_check,
        guard_clock_stops_while_paused,
        pushes_instead_of_leases,
    )
}


def catching_seeds(mutation: Mutation, schedules: int, wanted: int = 3) -> list[int]:
    """The first `wanted` seeds (of `schedules`) whose schedule breaks an invariant."""
    found = []
    with pytest.MonkeyPatch.context() as patch:
        mutation(patch)
        for seed in range(schedules):
            if violations(Simulation(seed, Setup.drawn(seed)).run()):
                found.append(seed)
                if len(found) == wanted:
                    break
    return found


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    name = sys.argv[1]
    schedules = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    print(name, catching_seeds(MUTATIONS[name], schedules))
