"""What the unit tests share: injected clocks, a counting verifier, a coroutine runner."""

from __future__ import annotations

import asyncio
import functools
import threading
import zlib
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from keysvc.core import keys
from keysvc.core.hashing import Argon2Parameters, Verifier

T = TypeVar("T")

# Cheap enough that a test can hash dozens of keys; production uses the OWASP minimum.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_cost_kib=1024, parallelism=1)

# How long a test waits for something another task does before it calls it a hang.
DEADLINE_SECONDS = 10.0


@runtime_checkable
class AsyncFixture(Protocol):
    """A fixture whose value must be made inside the test's event loop: @async_test enters it
    there and passes the test what it returns, and closes it when the test ends."""

    async def enter(self, stack: AsyncExitStack) -> Any: ...


def async_test(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Runs an `async def` test on a fresh event loop (no pytest-asyncio here), entering its
    AsyncFixture arguments in that loop first."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            async with AsyncExitStack() as stack:
                for name, value in list(kwargs.items()):
                    if isinstance(value, AsyncFixture):
                        kwargs[name] = await value.enter(stack)
                return await fn(*args, **kwargs)

        return asyncio.run(main())

    return run


async def within_deadline(awaitable: Any) -> Any:
    """`awaitable`'s result, or a test failure instead of a hang."""
    return await asyncio.wait_for(awaitable, timeout=DEADLINE_SECONDS)


class FakeClock:
    """A UTC wall clock that moves only when the test moves it."""

    def __init__(self, start: datetime = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class FakeMonotonic:
    """A monotonic clock in seconds that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingVerifier(Verifier):
    """A real argon2id verifier that counts verifications: the cost a cold look-up pays."""

    def __init__(self, parameters: Argon2Parameters = FAST_ARGON2) -> None:
        super().__init__(parameters)
        self._lock = threading.Lock()
        self._verifications = 0

    @property
    def verifications(self) -> int:
        with self._lock:
            return self._verifications

    def verify(self, verifier: str, raw_key: str) -> bool:
        with self._lock:
            self._verifications += 1
        return super().verify(verifier, raw_key)


def checksum(text: str) -> str:
    """The key format's checksum as its docstring defines it: CRC32 in six base62 digits."""
    value = zlib.crc32(text.encode("ascii"))
    digits = ""
    for _ in range(keys.CHECKSUM_LENGTH):
        value, digit = divmod(value, len(keys.ALPHABET))
        digits = keys.ALPHABET[digit] + digits
    return digits


def signed(unsigned: str) -> str:
    """`unsigned` with a valid checksum appended: a well-formed key nobody issued."""
    return unsigned + checksum(unsigned)


def secret_of(raw_key: str) -> str:
    """The random secret inside a raw key (between the key id and the checksum)."""
    end = len(raw_key) - keys.CHECKSUM_LENGTH
    return raw_key[end - keys.SECRET_LENGTH : end]
