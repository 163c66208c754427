"""The schedule explorer (docs/revocation.md): thousands of seeded schedules of the real use
cases over fault-injecting backends, with API servers' Guards in front of them, every history
judged by the checker."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.explorer.checker import EPSILON, describe, violations
from tests.explorer.schedule import (
    FAULTS,
    GUARD_FAULTS,
    Authorization,
    History,
    Revocation,
    Setup,
    Simulation,
)

# How many schedules a run explores; .ci/run keeps the default. Four in five have Guards,
# which about double what a schedule costs: 1600 take the time 3000 took without them.
SCHEDULES = int(os.environ.get("KEYSVC_EXPLORER_SCHEDULES", "1600"))


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """The use cases log every fault they meet; thousands of schedules would flood the output."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _explore(seed: int) -> History:
    return Simulation(seed, Setup.drawn(seed)).run()


class TestExploredSchedules:
    def test_no_schedule_breaks_an_invariant(self) -> None:
        """Across every explored schedule, no request is allowed that I1, I2 or I3 forbids; and
        the schedules did what exploring needs: allowed requests, revocations and scope
        removals, requests refused after them, and every kind of fault; Guards deciding
        requests themselves, within the lease after a revocation committed and after a pause,
        renewing, reading pushes and losing some, asking over unary with the stream cut."""
        totals: Counter[str] = Counter()
        for seed in range(SCHEDULES):
            history = _explore(seed)
            found = violations(history)
            assert not found, "\n".join([*found, "", describe(history)])
            totals["allowed"] += sum(a.outcome == "allowed" for a in history.authorizations)
            totals["revocations committed"] += len(history.revoked_at)
            totals["refused after a revocation committed"] += sum(
                a.outcome == "Reason.REVOKED" for a in history.authorizations
            )
            totals["scope removals committed"] += sum(map(len, history.narrowed_at.values()))
            totals["refused a removed scope"] += sum(
                a.outcome == "Reason.INSUFFICIENT_SCOPE" for a in history.authorizations
            )
            totals.update(_guarded(history))
            totals.update(history.guard_counts)
            totals.update(
                name.partition(" (")[0]
                for _, name in history.faults
                if not name.startswith("end of")
            )
        assert totals["allowed"] > 10 * SCHEDULES, totals
        assert totals["revocations committed"] > SCHEDULES, totals
        assert totals["refused after a revocation committed"] > SCHEDULES, totals
        assert totals["scope removals committed"] > SCHEDULES // 2, totals
        assert totals["refused a removed scope"] > SCHEDULES, totals
        assert set(FAULTS) | set(GUARD_FAULTS) <= set(totals), totals
        assert totals["allowed by a near cache"] > 5 * SCHEDULES, totals
        assert totals["allowed by a near cache after a commit"] > SCHEDULES // 5, totals
        assert totals["refused by a near cache after a revocation"] > SCHEDULES, totals
        assert totals["decided by a near cache after a pause"] > SCHEDULES // 5, totals
        assert totals["renewals answered"] > SCHEDULES, totals
        assert totals["pushes read"] > SCHEDULES, totals
        assert totals["pushes lost"] > SCHEDULES // 5, totals
        assert totals["unary fallbacks"] > SCHEDULES, totals

    def test_a_seed_replays_its_schedule(self) -> None:
        """The same seed gives the same history, call for call: a failing seed can be studied."""

        def outline(history: History) -> list[tuple[object, ...]]:
            return [
                (a.replica, a.guard, a.local, a.secret, a.arrived, a.decided, a.outcome)
                for a in history.authorizations
            ] + [(r.replica, r.called, r.returned, r.outcome) for r in history.revocations]

        # Both with Guards.
        assert Setup.drawn(7).guards and Setup.drawn(8).guards
        assert outline(_explore(7)) == outline(_explore(7))
        assert outline(_explore(7)) != outline(_explore(8))


def _guarded(history: History) -> Counter[str]:
    """What the Guards' near caches decided, and when."""
    counts: Counter[str] = Counter()
    for request in history.authorizations:
        if not request.local:
            continue
        assert request.decided is not None
        committed = history.revoked_at.get(request.key_id)
        after_commit = committed is not None and request.arrived > committed
        if request.outcome == "allowed":
            counts["allowed by a near cache"] += 1
            counts["allowed by a near cache after a commit"] += after_commit
        elif request.outcome == "Reason.REVOKED":
            counts["refused by a near cache after a revocation"] += 1
        # Arrived while its Guard was paused, decided when it resumed.
        counts["decided by a near cache after a pause"] += (
            request.decided > request.arrived + EPSILON
        )
    return counts


class TestTheChecker:
    """The checker names each kind of forbidden decision (so that its silence means something)."""

    def _history(self, *requests: Authorization, revocation: Revocation | None = None) -> History:
        history = History(seed=0, setup=Setup(), lease=1.0)
        history.authorizations = list(requests)
        history.created_at = {"key": 0.0}
        if revocation is not None:
            history.revocations = [revocation]
            history.revoked_at = {"key": revocation.called + 0.01}
        return history

    @staticmethod
    def _allowed(arrived: float, secret: str = "right", key_id: str = "key") -> Authorization:
        return Authorization(0, key_id, secret, arrived, arrived + 0.001, "allowed")

    def test_a_request_after_revoke_returned(self) -> None:
        revoked = Revocation(1, "key", called=1.0, returned=1.5, outcome="ok")
        history = self._history(self._allowed(1.6), revocation=revoked)
        assert [v[:3] for v in violations(history)] == ["I1:"]

    def test_a_request_a_lease_after_the_commit(self) -> None:
        unreturned = Revocation(1, "key", called=1.0)
        history = self._history(self._allowed(2.02), revocation=unreturned)
        assert [v[:3] for v in violations(history)] == ["I2:"]

    def test_a_wrong_secret_or_a_key_never_created(self) -> None:
        history = self._history(self._allowed(1.0, "wrong"), self._allowed(1.0, key_id="other"))
        assert [v[:3] for v in violations(history)] == ["I3:", "I3:"]

    def test_a_removed_scope_after_the_update_returned(self) -> None:
        """After an UpdateKey removing links:write returned: links:write allowed is I1, and a
        lease after its commit I2; links:read stays fine."""
        narrowed = Revocation(1, "key", called=1.0, returned=1.5, outcome="ok", call="narrow")
        write = dataclasses.replace(self._allowed(2.1), scope="links:write")
        history = self._history(write, self._allowed(2.2))
        history.revocations = [narrowed]
        history.narrowed_at = {"key": [(1.01, frozenset({"links:write"}))]}
        assert [v[:3] for v in violations(history)] == ["I2:", "I1:"]

    def test_a_guards_request_after_revoke_returned(self) -> None:
        """Judged from when the API server received it, whoever decided it."""
        revoked = Revocation(1, "key", called=1.0, returned=1.5, outcome="ok")
        local = dataclasses.replace(self._allowed(1.6), guard=0, local=True)
        asked = dataclasses.replace(self._allowed(1.6), guard=0)
        history = self._history(local, asked, revocation=revoked)
        assert [v[:3] for v in violations(history)] == ["I1:", "I1:"]

    def test_a_guards_own_decision_gets_the_lease_on_a_slow_clock(self) -> None:
        """A near cache's decision is late only past L/(1 - rho) after the commit (its clock
        may run that slow); a replica's, asked through the Guard, past L."""
        unreturned = Revocation(1, "key", called=1.0)
        within = dataclasses.replace(self._allowed(2.015), guard=0, local=True)
        past = dataclasses.replace(self._allowed(2.025), guard=0, local=True)
        asked = dataclasses.replace(self._allowed(2.015), guard=0)
        history = self._history(within, past, asked, revocation=unreturned)
        assert [v[:3] for v in violations(history)] == ["I2:", "I2:"]
        assert "decided at 2.0260 by its near cache" in violations(history)[0]
        assert "by replica 0" in violations(history)[1]

    def test_requests_before_the_revocation_returned_are_fine(self) -> None:
        revoked = Revocation(1, "key", called=1.0, returned=1.5, outcome="ok")
        history = self._history(self._allowed(0.5), self._allowed(1.4), revocation=revoked)
        assert violations(history) == []
