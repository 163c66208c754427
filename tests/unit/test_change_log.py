"""ChangeLog: when a replica may let a cached grant decide, and what it knows of key ids."""

from __future__ import annotations

import asyncio

import pytest

from keysvc.core.errors import Unavailable
from keysvc.core.model import Change, ChangeKind, KeyGrant, Mode
from keysvc.usecases.change_log import CLOCK_DRIFT, ChangeLog, KnownKeyIds, revocation_wait

from .support import FakeMonotonic, async_test

LEASE = 1.0


def _grant(key_id: str = "a1B2c3D4e5F6", *, seq: int) -> KeyGrant:
    return KeyGrant(key_id, "acct_1", Mode.LIVE, frozenset({"links:read"}), False, seq)


def _log(clock: FakeMonotonic, **options: int) -> ChangeLog:
    """A log that has read up to seq 10, just now."""
    change_log = ChangeLog(lease_seconds=LEASE, clock=clock, **options)
    change_log.apply([Change(10, "a1B2c3D4e5F6", ChangeKind.CREATED)], read_at=clock())
    return change_log


class TestCurrent:
    def test_a_grant_read_after_every_change_of_its_key_is_current(self) -> None:
        """With knowledge younger than the lease and no later change, the grant decides."""
        assert _log(FakeMonotonic()).current(_grant(seq=10))

    def test_a_revocation_after_the_grant_makes_it_stale(self) -> None:
        """A revocation logged after the grant's read makes it stale; one before does not."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        change_log.apply([Change(11, "a1B2c3D4e5F6", ChangeKind.REVOKED)], read_at=clock())
        assert not change_log.current(_grant(seq=10))
        assert change_log.current(_grant(seq=11))

    def test_another_keys_revocation_changes_nothing(self) -> None:
        """A change of one key leaves every other key's grants current."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        change_log.apply([Change(11, "Zz9Yy8Xx7Ww6", ChangeKind.REVOKED)], read_at=clock())
        assert change_log.current(_grant(seq=10))

    def test_a_creation_makes_no_grant_stale(self) -> None:
        """Creating keys narrows nothing: grants read before stay current."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        change_log.apply([Change(11, "a1B2c3D4e5F6", ChangeKind.CREATED)], read_at=clock())
        assert change_log.current(_grant(seq=5))

    def test_nothing_is_current_once_the_lease_runs_out(self) -> None:
        """Knowledge older than the lease lets no grant decide: the change log may hold a
        revocation this replica has not read."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        clock.advance(LEASE)
        assert change_log.current(_grant(seq=10))
        clock.advance(0.001)
        assert not change_log.current(_grant(seq=10))

    def test_a_read_that_did_not_reach_the_head_renews_nothing(self) -> None:
        """Only a read that caught up with the log renews the lease."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        clock.advance(LEASE + 1)
        change_log.apply([Change(11, "Zz9Yy8Xx7Ww6", ChangeKind.CREATED)], read_at=None)
        assert not change_log.current(_grant(seq=10))

    def test_a_change_made_here_does_not_skip_changes_not_read_yet(self) -> None:
        """A replica learns its own changes at once, but its next read still starts after the
        last change it read: a revocation made through another replica just before is read,
        not skipped."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        change_log.note([Change(12, "Zz9Yy8Xx7Ww6", ChangeKind.CREATED)])
        assert change_log.cursor == 10 and change_log.knows("Zz9Yy8Xx7Ww6")
        change_log.apply(
            [
                Change(11, "a1B2c3D4e5F6", ChangeKind.REVOKED),
                Change(12, "Zz9Yy8Xx7Ww6", ChangeKind.CREATED),
            ],
            read_at=clock(),
        )
        assert change_log.cursor == 12
        assert not change_log.current(_grant(seq=10))

    def test_nothing_is_current_before_the_first_read(self) -> None:
        """A replica that never read the log trusts no grant."""
        change_log = ChangeLog(lease_seconds=LEASE, clock=FakeMonotonic())
        assert not change_log.current(_grant(seq=10))

    def test_grants_older_than_what_was_forgotten_are_stale(self) -> None:
        """When the log forgets its oldest changes, grants read before them become stale."""
        clock = FakeMonotonic()
        change_log = _log(clock, max_changed_keys=2)
        for seq, key_id in ((11, "key_one"), (12, "key_two"), (13, "key_three")):
            change_log.apply([Change(seq, key_id, ChangeKind.REVOKED)], read_at=clock())
        assert not change_log.current(_grant("unrelated_id", seq=10))
        assert change_log.current(_grant("unrelated_id", seq=11))
        assert not change_log.current(_grant("key_two", seq=11))

    def test_a_start_that_could_not_load_every_revocation_raises_the_floor(self) -> None:
        """Started with only the latest revocations, the log trusts no grant read before
        them."""
        clock = FakeMonotonic()
        change_log = ChangeLog(lease_seconds=LEASE, clock=clock)
        change_log.start(head=30, changes=[Change(25, "key_one", ChangeKind.REVOKED)], floor=24)
        change_log.apply([], read_at=clock())
        assert (change_log.cursor, change_log.current(_grant(seq=23))) == (30, False)
        assert change_log.current(_grant(seq=24))
        assert not change_log.current(_grant("key_one", seq=24))


class TestKnownKeyIds:
    def test_knows_what_was_added_and_nothing_else(self) -> None:
        """Membership is exact, before and after the set is folded into the sorted array."""
        known = KnownKeyIds()
        ids = [f"key{n:09d}" for n in range(5000)]
        known.add(ids[:10])
        assert "key000000003" in known and "key000004000" not in known
        known.add(ids[10:])
        assert all(key_id in known for key_id in ids)
        assert not any(f"other{n:07d}" in known for n in range(5000))
        assert len(known) == 5000

    def test_key_ids_read_page_by_page_at_start_are_known_once_the_last_page_is_in(self) -> None:
        known = KnownKeyIds()
        known.add(["created0001"])
        pages = [[f"key{page:03d}{n:06d}" for n in range(3000)] for page in range(4)]
        for page in pages:
            known.stage(page)
        assert "key000000001" not in known
        known.add_staged()
        assert all(key_id in known for page in pages for key_id in page)
        assert "created0001" in known and "key004000000" not in known
        assert len(known) == 12_001

    def test_creations_in_the_log_become_known(self) -> None:
        """A key created through any replica is known once its creation is read."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        assert not change_log.knows("Zz9Yy8Xx7Ww6")
        change_log.apply([Change(11, "Zz9Yy8Xx7Ww6", ChangeKind.CREATED)], read_at=clock())
        assert change_log.knows("Zz9Yy8Xx7Ww6")


class TestWaiting:
    @async_test
    async def test_read_after_returns_once_a_later_read_caught_up(self) -> None:
        """A request waiting for a read started after it arrived is let go by the first such
        read, not by an earlier one; and it asks for that read."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        wanted: list[bool] = []
        change_log.on_read_wanted(lambda: wanted.append(True))
        clock.advance(0.5)
        arrived = clock()
        waiting = asyncio.ensure_future(change_log.read_after(arrived))
        await asyncio.sleep(0)
        change_log.apply([], read_at=arrived - 0.1)
        await asyncio.sleep(0)
        assert not waiting.done() and wanted == [True]
        change_log.apply([], read_at=arrived)
        await asyncio.wait_for(waiting, 1)

    @async_test
    async def test_read_after_gives_up_after_the_read_timeout(self) -> None:
        """With no read coming, the wait ends in Unavailable, never in a guess."""
        change_log = ChangeLog(lease_seconds=LEASE, read_timeout_seconds=0.01)
        with pytest.raises(Unavailable):
            await change_log.read_after(change_log.now())

    @async_test
    async def test_wait_out_lasts_the_lease_and_the_drift_allowance(self) -> None:
        """RevokeKey's wait ends no sooner than the lease, stretched by the clock drift that
        is allowed for, after the commit."""
        change_log = ChangeLog(lease_seconds=0.05)
        since = change_log.now()
        await change_log.wait_out(since)
        assert change_log.now() - since >= revocation_wait(0.05)

    def test_the_wait_outlasts_any_cache_whatever_the_clocks_rates(self) -> None:
        """Counted on a clock running fast by the allowed rate error, the wait still lasts
        as long as a lease counted on a clock running slow by as much (docs/revocation.md)."""
        wait_in_real_time = revocation_wait(LEASE) / (1 + CLOCK_DRIFT)
        longest_lease_in_real_time = LEASE / (1 - CLOCK_DRIFT)
        # Equal up to rounding: the wait is exactly long enough, and no longer.
        assert wait_in_real_time == pytest.approx(longest_lease_in_real_time, rel=1e-12)
        assert revocation_wait(LEASE) > LEASE * (1 + 2 * CLOCK_DRIFT)


class TestLeaseHandedOn:
    def test_a_current_grant_is_handed_on_with_what_remains_of_the_lease(self) -> None:
        """The lease a Guard gets is the replica's own trust, minus the time since its read."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        clock.advance(0.3)
        assert change_log.lease_remaining(_grant(seq=10)) == pytest.approx(LEASE - 0.3)

    def test_a_stale_or_revoked_grant_has_no_lease(self) -> None:
        clock = FakeMonotonic()
        change_log = _log(clock)
        change_log.apply([Change(11, "a1B2c3D4e5F6", ChangeKind.UPDATED)], read_at=clock())
        assert change_log.lease_remaining(_grant(seq=10)) == 0.0
        revoked = KeyGrant("Zz9Yy8Xx7Ww6", "acct_1", Mode.LIVE, frozenset(), True, 11)
        assert change_log.lease_remaining(revoked) == 0.0

    def test_no_lease_once_the_replica_knowledge_is_older_than_the_lease(self) -> None:
        """A replica that could not read the log hands out nothing, however hot the key."""
        clock = FakeMonotonic()
        change_log = _log(clock)
        clock.advance(LEASE + 0.001)
        assert change_log.lease_remaining(_grant(seq=10)) == 0.0

    def test_listeners_hear_of_changes_but_not_of_creations(self) -> None:
        clock = FakeMonotonic()
        change_log = _log(clock)
        heard: list[list[str]] = []
        unregister = change_log.on_changes(heard.append)
        change_log.apply(
            [
                Change(11, "Zz9Yy8Xx7Ww6", ChangeKind.CREATED),
                Change(12, "a1B2c3D4e5F6", ChangeKind.REVOKED),
            ],
            read_at=clock(),
        )
        # The same change learnt twice (made here, then read from the log) is told once.
        change_log.apply([Change(12, "a1B2c3D4e5F6", ChangeKind.REVOKED)], read_at=clock())
        unregister()
        change_log.apply([Change(13, "Zz9Yy8Xx7Ww6", ChangeKind.UPDATED)], read_at=clock())
        assert heard == [["a1B2c3D4e5F6"]]
