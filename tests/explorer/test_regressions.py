"""Every schedule that ever broke an invariant, kept: each replays its seed on the real code.

Each was found by the explorer, against keysvc as it was at the time or against the code with
one mechanism removed on purpose; the docstring says which, and what went wrong. Removing the
mechanism again makes its test fail (docs/testing.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.explorer.checker import describe, violations
from tests.explorer.schedule import Setup, Simulation


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _holds(seed: int, setup: Setup) -> None:
    history = Simulation(seed, setup).run()
    found = violations(history)
    assert not found, "\n".join([*found, "", describe(history)])


class TestSchedulesThatBrokeRevocation:
    def test_seed_14_a_replicas_own_change_skipped_a_revocation_made_elsewhere(self) -> None:
        """Found in keysvc itself while the change log was being built: a replica that created
        a key moved its read cursor to that key's change, past a revocation made through
        another replica a moment before, which it then never read; a Redis restored from an
        older state brought the revoked key's active grant back, and the replica allowed it a
        second after RevokeKey returned."""
        _holds(14, Setup())

    def test_seed_39_the_same_skip_on_another_replica(self) -> None:
        """The same fault as seed 14, seen from the replica that created the newer key."""
        _holds(39, Setup())

    def test_seed_4_revoke_key_returning_before_the_lease_ran_out(self) -> None:
        """With RevokeKey's wait removed: a replica whose change log had not been read since the
        commit served the key's cached grant to a request sent after RevokeKey returned."""
        _holds(4, Setup.drawn(4))

    def test_seed_44_a_cached_grant_trusted_past_the_lease(self) -> None:
        """With the lease check removed from ChangeLog.current: a replica cut off from the
        store kept serving a grant from its cache long after the key was revoked."""
        _holds(44, Setup.drawn(44))

    def test_seed_2_a_grant_older_than_the_keys_revocation(self) -> None:
        """With the change check removed from ChangeLog.current: a grant read before the
        revocation decided requests after it."""
        _holds(2, Setup.drawn(2))

    def test_seed_1209_a_request_joining_a_read_that_began_before_it_arrived(self) -> None:
        """With reads shared among all requests for a key, whenever they arrived: under a slow
        store, a request sent after RevokeKey returned joined a read begun before the
        revocation committed and was allowed on what that read found."""
        _holds(1209, Setup.drawn(1209))
