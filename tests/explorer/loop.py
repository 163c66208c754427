"""A deterministic event loop for exploring schedules: virtual time, and every choice of which
ready callback runs next made by a seeded random generator.

Time advances only when nothing is ready: the loop jumps to the next timer. So a schedule that
sleeps for minutes runs in milliseconds, and the same seed replays the same interleaving.
Nothing may use threads or real I/O under it (the explorer's backends run inline).
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    """Holds registrations (the loop's own self-pipe) and never reports one ready; waiting
    for `timeout` moves the loop's clock on by that much instead."""

    def __init__(self) -> None:
        self._map: dict[Any, selectors.SelectorKey] = {}
        self.loop: ExplorerLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        if timeout is None:
            raise RuntimeError("deadlock: nothing is ready and no timer is set")
        self.loop.advance(max(timeout, 0.0))
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._map.clear()


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class ExplorerLoop(asyncio.SelectorEventLoop):
    def __init__(self, seed: int) -> None:
        selector = _VirtualSelector()
        self._now = 0.0
        self.rng = random.Random(seed)
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def _run_once(self) -> None:
        ready: Any = self._ready  # type: ignore[attr-defined]
        if len(ready) > 1:
            callbacks = list(ready)
            self.rng.shuffle(callbacks)
            ready.clear()
            ready.extend(callbacks)
        super()._run_once()  # type: ignore[misc]


def run(seed: int, main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` to completion on a fresh ExplorerLoop seeded with `seed`."""
    loop = ExplorerLoop(seed)
    try:
        return loop.run_until_complete(main)
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
