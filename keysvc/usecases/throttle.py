"""What Authorize remembers about failed look-ups, so that floods and guessing cost little.

All of it is in-process, bounded (oldest entries go first) and timed by an injected
monotonic clock. `ExpiringSet` is a short negative cache. `FailureThrottle` bounds the
argon2 work one key id can draw: at most `max_failures` verifications of unproven
secrets per window, after which further unproven secrets are refused unchecked until
the window ends. A secret this process has once seen to be right is never refused.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ExpiringSet(Generic[K]):
    """Remembers each item for `ttl_seconds`, at most `max_entries` of them (oldest dropped)."""

    def __init__(
        self,
        *,
        ttl_seconds: float,
        max_entries: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expires: OrderedDict[K, float] = OrderedDict()
        self._ttl = ttl_seconds
        self._max = max_entries
        self._monotonic = monotonic

    def __contains__(self, item: K) -> bool:
        expires = self._expires.get(item)
        if expires is None:
            return False
        if expires <= self._monotonic():
            del self._expires[item]
            return False
        return True

    def __len__(self) -> int:
        return len(self._expires)

    def add(self, item: K) -> None:
        self._expires[item] = self._monotonic() + self._ttl
        self._expires.move_to_end(item)
        while len(self._expires) > self._max:
            self._expires.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Throttled:
    """A key id that has just used up its window: what the one warning about it says."""

    key_id: str
    failures: int
    window_seconds: float
    # Until the window ends, unproven secrets for the key id are refused unchecked.
    remaining_seconds: float


@dataclass(slots=True)
class _Window:
    ends: float
    # Verifications counted in this window: failed ones, and ones still running.
    counted: int = 0
    failures: int = 0


class FailureThrottle:
    """Per key id, at most `max_failures` failed verifications every `window_seconds`.

    A window opens at a key id's first counted verification and lasts `window_seconds`.
    Each verification of a secret not yet proven for the key id is counted when it
    starts (`admit`), so that a burst of concurrent guesses cannot overshoot the limit,
    and given back if the secret turns out right (`succeeded`). Once `max_failures` are
    counted, `admit` and `refuses` turn unproven secrets away until the window ends.
    """

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_seconds: float = 60.0,
        max_key_ids: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window_seconds <= 0 or max_key_ids < 1:
            raise ValueError("max_failures, window_seconds and max_key_ids must be positive")
        self._max_failures = max_failures
        self._window_seconds = window_seconds
        self._max_key_ids = max_key_ids
        self._monotonic = monotonic
        # In the order the windows opened, so the front is always the first to end.
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        # The digest of the secret that last verified for each key id (a key has one).
        self._proven: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        """How many key ids have an open window."""
        self._drop_ended()
        return len(self._windows)

    def refuses(self, key_id: str, digest: bytes) -> bool:
        """True when a secret with this digest must be refused for `key_id` unchecked."""
        if self.is_proven(key_id, digest):
            return False
        window = self._window(key_id)
        return window is not None and window.counted >= self._max_failures

    def admit(self, key_id: str, digest: bytes) -> bool:
        """Whether the secret may be verified now; counts it in the window unless proven."""
        if self.is_proven(key_id, digest):
            return True
        window = self._window(key_id)
        if window is None:
            window = _Window(ends=self._monotonic() + self._window_seconds)
            self._windows[key_id] = window
            while len(self._windows) > self._max_key_ids:
                self._windows.popitem(last=False)
        if window.counted >= self._max_failures:
            return False
        window.counted += 1
        return True

    def succeeded(self, key_id: str, digest: bytes) -> None:
        """The secret verified: it is no longer counted, and is proven from now on."""
        if not self.is_proven(key_id, digest):
            window = self._window(key_id)
            # A verification that straddled the end of a window was counted in the one
            # before: never give back more than the running verifications of this one.
            if window is not None and window.counted > window.failures:
                window.counted -= 1
        self.prove(key_id, digest)

    def prove(self, key_id: str, digest: bytes) -> None:
        """Remembers a secret known to be right (say, it matched the cached digest)."""
        self._proven[key_id] = digest
        self._proven.move_to_end(key_id)
        while len(self._proven) > self._max_key_ids:
            self._proven.popitem(last=False)

    def failed(self, key_id: str) -> Throttled | None:
        """The secret was wrong. Returns the window's notice once: when it fills up."""
        window = self._window(key_id)
        if window is None or window.failures >= window.counted:
            # The window the verification was counted in has ended since: it counted there.
            return None
        window.failures += 1
        if window.failures != self._max_failures:
            return None
        return Throttled(
            key_id=key_id,
            failures=window.failures,
            window_seconds=self._window_seconds,
            remaining_seconds=max(window.ends - self._monotonic(), 0.0),
        )

    def is_proven(self, key_id: str, digest: bytes) -> bool:
        """Whether this secret was seen to be the key id's right one."""
        proven = self._proven.get(key_id)
        return proven is not None and hmac.compare_digest(proven, digest)

    def _window(self, key_id: str) -> _Window | None:
        """The key id's open window, if it has one."""
        self._drop_ended()
        return self._windows.get(key_id)

    def _drop_ended(self) -> None:
        now = self._monotonic()
        while self._windows:
            first = next(iter(self._windows.values()))
            if first.ends > now:
                return
            self._windows.popitem(last=False)
