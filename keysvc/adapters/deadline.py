"""The deadline of the RPC a database call serves, so that a write never commits after
the caller was told UNAVAILABLE."""

from __future__ import annotations

import time
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("keysvc_db_deadline", default=None)


def set_for_call(seconds: float) -> None:
    _deadline.set(time.monotonic() + seconds)


def passed() -> bool:
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() > deadline
