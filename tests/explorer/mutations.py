"""Mechanisms of the revocation protocol removed on purpose, one at a time, to show that the
explorer notices: each is a function that patches the real code (pytest's monkeypatch), and
`python -m tests.explorer.mutations NAME [SCHEDULES]` lists the first seeds that catch it.

test_regressions.py keeps one caught seed per mutation and checks, on every run, that the
seed still holds on the real code and still fails with the mechanism removed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import pytest

from keysvc.core.model import ApiKey, Change, ChangeKind, KeyGrant
from keysvc.ports.store import StoredKey
from keysvc.usecases import admin
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeLog
from tests.explorer.checker import violations
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
