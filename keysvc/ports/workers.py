"""Where the use cases run blocking work: the database and argon2 stay off the event loop.

keysvc.adapters.workers runs each kind on a thread pool of its own; the schedule explorer
runs them inline, in virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Workers(Protocol):
    """Each method runs `fn(*args, **kwargs)` away from the event loop and returns its result;
    the database ones raise keysvc.core.errors.Unavailable past the database timeout."""

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A database call of the admin use cases."""

    async def lookup(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A read of a key for Authorize."""

    async def feed(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A read of the change log."""

    async def hashing(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """argon2."""
