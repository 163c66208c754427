"""Fixtures for the Guard against real keysvc servers: both flavours behind one blocking face,
keys in their own account, and keysvc's own count of the decisions it made and how they came.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from keysvc_client import CreateKeyResponse, Guard, KeyServiceClient, Verdict, aio
from keysvc_client.metrics import GuardStats
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ServerFactory, ServerProcess

# Generous: a key keysvc has not seen yet costs an argon2 verification that a busy machine can
# stretch past the 50 ms default. The tests are about where the answer comes from.
TIMEOUT = 5.0

# A lease long enough that nothing a test does in between outlasts it; RevokeKey then takes
# as long, which the push tests rely on.
LONG_LEASE = ("--lease-seconds", "5")
METRICS = ("--metrics-listen", "127.0.0.1:0")


class GuardUnderTest:
    """A blocking or an asyncio Guard, checked from plain code (the asyncio one in a loop of
    its own, in a thread, as an ASGI server runs it)."""

    def __init__(self, flavour: str, target: str, **options: Any) -> None:
        self.flavour = flavour
        self._loop: asyncio.AbstractEventLoop | None = None
        if flavour == "sync":
            self.guard: Guard | aio.Guard = Guard(target, **{"timeout": TIMEOUT, **options})
            return
        self.guard = aio.Guard(target, **{"timeout": TIMEOUT, **options})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def check(
        self, header: str | None, scopes: Iterable[str] = (), client_ip: str | None = None
    ) -> Verdict:
        if isinstance(self.guard, Guard):
            return self.guard.check(header, tuple(scopes), client_ip=client_ip)
        verdict: Verdict = self._run(self.guard.check(header, tuple(scopes), client_ip=client_ip))
        return verdict

    def stats(self) -> GuardStats:
        return self.guard.stats()

    def close(self) -> None:
        if isinstance(self.guard, Guard):
            self.guard.close()
        else:
            self._run(self.guard.close())

    def shut_down(self) -> None:
        """Closes the Guard, and ends the asyncio one's loop."""
        self.close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(TIMEOUT * 3)


@pytest.fixture(params=["sync", "aio"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeGuard = Callable[..., GuardUnderTest]


@pytest.fixture
def make_guard(flavour: str) -> Iterator[MakeGuard]:
    """make_guard(target, **options): a Guard of the test's flavour, closed after the test."""
    made: list[GuardUnderTest] = []

    def make(target: str, **options: Any) -> GuardUnderTest:
        guard = GuardUnderTest(flavour, target, **options)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        guard.shut_down()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A keysvc with a long lease and its metrics, shared by a module's tests."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc"))
    try:
        yield factory.start(*LONG_LEASE, *METRICS)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def short_lease(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A keysvc with the harness's short lease (0.3 s): leases run out within a test."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc-short"))
    try:
        yield factory.start(*METRICS)
    finally:
        factory.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """keysvc servers of the test's own, to freeze, cut off and stop."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@dataclass
class Keys:
    """Creates keys in one account of a keysvc."""

    admin: KeyServiceClient
    account: str

    def new(
        self,
        scopes: Iterable[str] = ("links:read",),
        mode: str = "live",
        **options: Any,
    ) -> CreateKeyResponse:
        return self.admin.create_key(self.account, "Guard test", mode, list(scopes), **options)


KeysOf = Callable[[ServerProcess], Keys]


@pytest.fixture
def keys_of() -> Iterator[KeysOf]:
    """keys_of(server): Keys in an account of its own on `server`."""
    admins: list[KeyServiceClient] = []

    def of(server: ServerProcess) -> Keys:
        admins.append(server.client())
        return Keys(admins[-1], f"acct_{uuid.uuid4().hex[:16]}")

    yield of
    for admin in admins:
        admin.close()


@pytest.fixture
def keys(server: ServerProcess, keys_of: KeysOf) -> Keys:
    return keys_of(server)


def decisions(server: ServerProcess) -> dict[str, float]:
    """keysvc's count of the Authorize decisions it made, by transport (unary, session)."""
    assert server.metrics_url, "the server was started without --metrics-listen"
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts = {"unary": 0.0, "session": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "keysvc_authorize_decisions_total":
                counts[sample.labels["transport"]] += sample.value
    return counts
