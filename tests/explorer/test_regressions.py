"""Every kind of schedule that ever broke an invariant, kept as a seed that replays it.

Each was found by the explorer, against keysvc as it was at the time or against the code
with one mechanism removed on purpose (tests.explorer.mutations). A seed names a schedule of
the explorer as it is now: when the explorer or the code changes, the schedule a seed draws
changes too. So each seed is checked both ways, on every run: it holds on the real code, and
it still breaks an invariant with its mechanism removed. When the second check fails, the
seed has gone stale: `python -m tests.explorer.mutations NAME` finds the seeds that catch the
mechanism now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.explorer.checker import describe, violations
from tests.explorer.mutations import MUTATIONS
from tests.explorer.schedule import Setup, Simulation


@dataclass(frozen=True)
class Regression:
    seed: int
    mutation: str
    story: str


REGRESSIONS = [
    Regression(
        4,
        "cursor_skips",
        "Found in keysvc itself while the change log was being built (seeds 14 and 39 of the"
        " explorer then): a replica that created a key moved its read cursor to that key's"
        " change, past a revocation made through another replica a moment before, which it"
        " then never read; a Redis restored from an older state brought the revoked key's"
        " active grant back, and the replica allowed it after RevokeKey returned.",
    ),
    Regression(
        4,
        "no_wait",
        "RevokeKey returning before the lease ran out: a replica whose change log had not been"
        " read since the commit served the key's cached grant to a request sent afterwards.",
    ),
    Regression(
        3,
        "no_lease",
        "A cached grant trusted past the lease: a replica cut off from the store kept serving"
        " a grant from its cache long after the key was revoked.",
    ),
    Regression(
        0,
        "no_change_check",
        "A grant read before the key's revocation deciding requests after it.",
    ),
    Regression(
        1423,
        "shared_old_reads",
        "Under a slow store, a request that arrived more than a lease after the key's"
        " revocation committed joined a store read begun before the commit, and was allowed"
        " on what that read found.",
    ),
    Regression(
        0,
        "updates_unlogged",
        "A replica that noticed only revocations in the change log kept deciding on a grant"
        " read before UpdateKey removed a scope, and allowed that scope after the lease.",
    ),
    Regression(
        3,
        "narrowing_no_wait",
        "UpdateKey removing a scope returned before the lease ran out: a replica whose change"
        " log had not been read since the commit allowed the removed scope to a request sent"
        " afterwards.",
    ),
    Regression(
        35,
        "guard_counts_from_receipt",
        "A Guard's answer came eight tenths of a second after it asked; a Guard that counted"
        " the lease from the answer's arrival kept allowing links:write from its near cache"
        " more than a lease after UpdateKey's removal of it committed, and after UpdateKey"
        " returned.",
    ),
    Regression(
        141,
        "full_lease_handed_on",
        "A Guard asked about a key just after its revocation committed, before its replica"
        " read the change log again; the replica handed it the whole lease on its cached"
        " grant, not what remained of its own trust in it, and the Guard's near cache allowed"
        " the key more than a lease after the commit.",
    ),
    Regression(
        128,
        "renew_without_lease_check",
        "A renewal answered from a cached grant of the key from before UpdateKey removed"
        " links:write, without checking it was current, handed the Guard a new lease on it,"
        " and its near cache allowed links:write more than a lease after the removal"
        " committed.",
    ),
    Regression(
        27,
        "guard_clock_stops_while_paused",
        "An API server paused for three leases from just after a key's revocation committed,"
        " on a clock that stopped meanwhile: resumed, its near cache allowed a request that"
        " had piled up, long after RevokeKey returned.",
    ),
    Regression(
        11,
        "pushes_instead_of_leases",
        "A near cache that kept entries until a push dropped them allowed a key after"
        " RevokeKey returned: the push from the Guard's replica came later still.",
    ),
]


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _run(seed: int) -> list[str]:
    return violations(Simulation(seed, Setup.drawn(seed)).run())


@pytest.mark.parametrize("regression", REGRESSIONS, ids=lambda r: f"{r.mutation}-seed-{r.seed}")
class TestSchedulesThatBrokeRevocation:
    def test_holds_on_the_real_code(self, regression: Regression) -> None:
        """The schedule breaks no invariant on keysvc as it is."""
        history = Simulation(regression.seed, Setup.drawn(regression.seed)).run()
        found = violations(history)
        assert not found, "\n".join([regression.story, *found, "", describe(history)])

    def test_still_catches_its_mechanism_removed(
        self, regression: Regression, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the mechanism removed, the same seed still breaks an invariant: the seed
        still draws the schedule it was kept for."""
        MUTATIONS[regression.mutation](monkeypatch)
        assert _run(regression.seed), (
            f"seed {regression.seed} no longer catches {regression.mutation}: find a new one"
            f" with `python -m tests.explorer.mutations {regression.mutation}`"
        )
