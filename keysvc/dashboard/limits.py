"""What the dashboard remembers in its own memory: failed sign-ins per name (the throttle), and
the forms that make a key, each good for one key. Bounded, and forgotten at a restart."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque

__all__ = ["OnceTokens", "SignInThrottle"]


class SignInThrottle:
    """At most `limit` failed sign-ins per name in `window` seconds; then that name is refused
    unchecked until the window is over. Names nobody has count alike, so the refusal says
    nothing about who exists. Bounded: the least recent names are forgotten first."""

    def __init__(self, limit: int = 10, window: float = 60.0, names: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self._names = names
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, name: str, now: float) -> deque[float]:
        failures = self._failures.get(name, deque())
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        return failures

    def blocked(self, name: str) -> bool:
        with self._lock:
            return len(self._recent(name, time.monotonic())) >= self.limit

    def failed(self, name: str) -> None:
        with self._lock:
            now = time.monotonic()
            failures = self._recent(name, now)
            failures.append(now)
            self._failures[name] = failures
            self._failures.move_to_end(name)
            while len(self._failures) > self._names:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


class OnceTokens:
    """The forms that make a key (create, roll) carry a token used once: posting the same
    form again (a reload, a double click) makes no second key and shows no key."""

    def __init__(self, lifetime: float = 12 * 3600, size: int = 100_000) -> None:
        self._lifetime = lifetime
        self._size = size
        self._used: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new() -> str:
        return secrets.token_urlsafe(18)

    def claim(self, token: str) -> bool:
        """True the first time `token` is claimed (and not released since)."""
        with self._lock:
            now = time.monotonic()
            while self._used and next(iter(self._used.values())) < now:
                self._used.popitem(last=False)
            if not token or token in self._used:
                return False
            self._used[token] = now + self._lifetime
            while len(self._used) > self._size:
                self._used.popitem(last=False)
            return True

    def release(self, token: str) -> None:
        """The form was refused: it may be posted again, corrected."""
        with self._lock:
            self._used.pop(token, None)
