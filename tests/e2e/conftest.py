"""Fixtures for the end-to-end tests: real keysvc servers, clients to them, fresh accounts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from keysvc_client import CreateKeyResponse, KeyServiceClient
from keysvc_client.v1 import keysvc_pb2_grpc

from tests.conftest import Backend, new_backend

from .harness import NewKey, ServerFactory, ServerProcess


@pytest.fixture(scope="module")
def module_backend(backend_name: str, request: pytest.FixtureRequest) -> Backend:
    return new_backend(backend_name, request)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_backend: Backend
) -> Iterator[ServerProcess]:
    """One server shared by a module's tests; each test keeps to its own account."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc"), args=module_backend.server_args)
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture
def backend(backend_name: str, request: pytest.FixtureRequest) -> Backend:
    """An empty backend of the test's own (a fresh database and Redis prefix in production)."""
    return new_backend(backend_name, request)


@pytest.fixture
def server_factory(tmp_path: Path, backend: Backend) -> Iterator[ServerFactory]:
    """Starts servers of the test's own (extra flags, environment, restarts, shutdowns)."""
    factory = ServerFactory(tmp_path, args=backend.server_args)
    yield factory
    factory.close()


@pytest.fixture
def account() -> str:
    """An account id no other test uses."""
    return f"acct_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[KeyServiceClient]:
    """A client of the shared server holding its admin token."""
    with server.client() as client:
        yield client


@pytest.fixture
def public(server: ServerProcess) -> Iterator[KeyServiceClient]:
    """A client of the shared server without any token, as an API server calls Authorize."""
    with server.client(admin=False) as client:
        yield client


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[keysvc_pb2_grpc.KeyServiceStub]:
    """The generated stub of the shared server, for requests the typed client will not build."""
    with server.channel() as channel:
        yield server.stub(channel)


@pytest.fixture
def new_key(admin: KeyServiceClient, account: str) -> NewKey:
    """Creates a key in the test's account: new_key(mode="live", scopes=(...), name=...)."""

    def create(
        mode: str = "live",
        scopes: Iterable[str] = ("links:read",),
        name: str = "Production server",
        account_id: str = account,
    ) -> CreateKeyResponse:
        return admin.create_key(account_id, name, mode, list(scopes))

    return create
