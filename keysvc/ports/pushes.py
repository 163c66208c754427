"""Telling the other replicas that keys changed, so that they read the change log now rather
than at their next interval.

A push is a hint and nothing more: it carries no state, a replica that misses one learns the
change at its next read of the log (within a fifth of the lease), and one that receives a forged
one only reads the log sooner. Strictness never rests on it (docs/revocation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ChangeAnnouncer(Protocol):
    def announce(self, key_ids: Sequence[str]) -> None:
        """Tells the other replicas, in the background and at most once, that these keys
        changed; never raises, never waits."""


class NoAnnouncer:
    """One replica alone (the in-process cache): nobody to tell."""

    def announce(self, key_ids: Sequence[str]) -> None:
        pass


NO_ANNOUNCER: ChangeAnnouncer = NoAnnouncer()
