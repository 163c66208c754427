"""Fixtures for the API-server glue: a real keysvc process, keys in it, and addresses without one.

The glue's behaviour does not depend on keysvc's storage, so keysvc runs on the embedded
default here; tests/e2e covers the storage backends.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from keysvc_client import CreateKeyResponse, KeyServiceClient

from tests.e2e.harness import ServerFactory, ServerProcess

# Generous: the checks here are about verdicts, not speed, and a key keysvc has not seen yet
# costs an argon2 verification that a busy CI machine can stretch past the 50 ms default.
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One keysvc shared by a module's tests; each test keeps to its own account."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc"))
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """keysvc servers of the test's own, to stop, freeze and restart."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[KeyServiceClient]:
    with server.client() as client:
        yield client


@pytest.fixture
def account() -> str:
    """An account id no other test uses."""
    return f"acct_{uuid.uuid4().hex[:16]}"


@dataclass
class Keys:
    """Creates and revokes keys in one account of the shared keysvc."""

    admin: KeyServiceClient
    account: str

    def new(self, scopes: Iterable[str] = ("links:read",), mode: str = "live") -> CreateKeyResponse:
        return self.admin.create_key(self.account, "API server test", mode, list(scopes))

    def bearer(self, scopes: Iterable[str] = ("links:read",), mode: str = "live") -> str:
        """The Authorization header value of a new key."""
        return f"Bearer {self.new(scopes, mode).secret}"

    def revoke(self, created: CreateKeyResponse) -> None:
        self.admin.revoke_key(self.account, created.key.id)


@pytest.fixture
def keys(admin: KeyServiceClient, account: str) -> Keys:
    return Keys(admin, account)


def free_port() -> int:
    """A loopback port nothing listens on (the OS hands out ports in turn, so it stays free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def nowhere() -> str:
    """A keysvc target with nothing listening: keysvc is down."""
    return f"127.0.0.1:{free_port()}"
