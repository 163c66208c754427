"""keysvc behind a real NGINX, started with examples/nginx.conf (its addresses replaced by free
loopback ports): every /api/v1/ request is decided by keysvc's forward-auth before it reaches
the upstream, an echo server that reports what it received."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from keysvc_client import CreateKeyResponse, KeyServiceClient

from tests.conftest import new_backend
from tests.e2e.harness import ServerFactory, ServerProcess
from tests.gateways.conftest import Upstream
from tests.gateways.upstream import Nginx, Response, http_address, send, start_keysvc

pytestmark = pytest.mark.slow

IDENTITY = ("x-keysvc-key-id", "x-keysvc-account-id", "x-keysvc-mode", "x-keysvc-scopes")


@pytest.fixture(scope="module")
def keysvc(
    tmp_path_factory: pytest.TempPathFactory, backend_name: str, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """One keysvc serving forward-auth, on each backend, shared by the module's tests."""
    backend = new_backend(backend_name, request)
    base = tmp_path_factory.mktemp("keysvc")
    factory = ServerFactory(base, args=backend.server_args)
    try:
        yield start_keysvc(factory)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def nginx(keysvc: ServerProcess, upstream: Upstream) -> Iterator[Nginx]:
    gateway = Nginx(keysvc=http_address(keysvc), api=f"127.0.0.1:{upstream.port}")
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.remove()


@pytest.fixture
def admin(keysvc: ServerProcess) -> Iterator[KeyServiceClient]:
    with keysvc.client() as client:
        yield client


@pytest.fixture
def account() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


def new_key(admin: KeyServiceClient, account: str, *scopes: str) -> CreateKeyResponse:
    return admin.create_key(account, "Behind NGINX", "live", list(scopes or ["links:read"]))


def bearer(key: CreateKeyResponse) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key.secret}")


def refusal(response: Response) -> dict[str, object]:
    assert response.header("content-type") == "application/json", response
    error: dict[str, object] = response.json()["error"]
    assert error["status"] == response.status
    return error


class TestRefused:
    """What NGINX answers for keysvc's refusals; the upstream never sees the request."""

    def test_no_key_is_401_with_the_bare_challenge(self, nginx: Nginx, upstream: Upstream) -> None:
        before = len(upstream.requests)

        response = send(nginx.address, "GET", "/api/v1/links")

        assert response.status == 401
        assert response.header("www-authenticate") == 'Bearer realm="api"'
        assert refusal(response)["reason"] == "missing"
        assert response.header("cache-control") == "no-store"
        assert len(upstream.requests) == before

    @pytest.mark.parametrize(
        "authorization",
        ["Bearer garbage", "Bearer ck_live_" + "A" * 50, "Basic dXNlcjpwYXNz"],
        ids=["garbage", "not-a-real-key", "basic"],
    )
    def test_a_key_that_is_not_one_is_401_invalid_token(
        self, nginx: Nginx, upstream: Upstream, authorization: str
    ) -> None:
        before = len(upstream.requests)

        response = send(nginx.address, "GET", "/api/v1/links", [("Authorization", authorization)])

        assert response.status == 401
        challenge = response.header("www-authenticate")
        assert challenge is not None
        assert challenge.startswith('Bearer realm="api", error="invalid_token"')
        assert refusal(response)["reason"] in ("malformed", "not_found")
        assert len(upstream.requests) == before

    def test_a_missing_scope_is_403_naming_it(
        self, nginx: Nginx, upstream: Upstream, admin: KeyServiceClient, account: str
    ) -> None:
        key = new_key(admin, account, "links:read")
        before = len(upstream.requests)

        response = send(
            nginx.address, "POST", "/api/v1/links", [bearer(key)], body=b'{"amount": 2500}'
        )

        assert response.status == 403
        assert response.header("www-authenticate") == (
            'Bearer realm="api", error="insufficient_scope", scope="links:write"'
        )
        error = refusal(response)
        assert (error["reason"], error["missing_scopes"]) == ("insufficient_scope", ["links:write"])
        assert len(upstream.requests) == before

    def test_a_route_no_line_declares_is_404(
        self, nginx: Nginx, upstream: Upstream, admin: KeyServiceClient, account: str
    ) -> None:
        """Even for a key holding every scope the table names: undeclared is unreachable."""
        key = new_key(admin, account, "links:read", "links:write")
        before = len(upstream.requests)

        for method, path in [
            ("DELETE", "/api/v1/links/plink_1"),
            ("GET", "/api/v1/refunds"),
            ("GET", "/api/v1/links/plink_1%2F..%2Fadmin"),
        ]:
            response = send(nginx.address, method, path, [bearer(key)])
            assert response.status == 404, (method, path, response)
            assert refusal(response)["reason"] == "not_found"
        assert len(upstream.requests) == before

    def test_a_revoked_key_is_401_on_the_next_request(
        self, nginx: Nginx, upstream: Upstream, admin: KeyServiceClient, account: str
    ) -> None:
        key = new_key(admin, account)
        assert send(nginx.address, "GET", "/api/v1/links", [bearer(key)]).status == 200
        before = len(upstream.requests)

        admin.revoke_key(account, key.key.id)
        response = send(nginx.address, "GET", "/api/v1/links", [bearer(key)])

        assert response.status == 401
        assert refusal(response)["reason"] == "revoked"
        assert 'error="invalid_token"' in (response.header("www-authenticate") or "")
        assert len(upstream.requests) == before


class TestAllowed:
    """An allowed request reaches the upstream with keysvc's identity headers, and only them."""

    def test_the_upstream_gets_the_identity_of_the_key(
        self, nginx: Nginx, upstream: Upstream, admin: KeyServiceClient, account: str
    ) -> None:
        key = new_key(admin, account, "links:read", "links:write")

        response = send(nginx.address, "GET", "/api/v1/links/plink_1?expand=true", [bearer(key)])

        assert response.status == 200
        assert (response.json()["method"], response.json()["path"]) == (
            "GET",
            "/api/v1/links/plink_1?expand=true",
        )
        seen = upstream.requests[-1]
        assert {name: seen.header(name) for name in IDENTITY} == {
            "x-keysvc-key-id": [key.key.id],
            "x-keysvc-account-id": [account],
            "x-keysvc-mode": ["live"],
            "x-keysvc-scopes": ["links:read links:write"],
        }
        # The key itself stays at the gateway.
        assert seen.header("authorization") == []

    def test_a_clients_forged_identity_headers_never_reach_the_upstream(
        self, nginx: Nginx, upstream: Upstream, admin: KeyServiceClient, account: str
    ) -> None:
        key = new_key(admin, account)
        forged = [
            ("X-Keysvc-Key-Id", "forged"),
            ("x-keysvc-key-id", "forged-again"),
            ("X-KEYSVC-ACCOUNT-ID", "acct_victim"),
            ("X-Keysvc-Mode", "live"),
            ("X-Keysvc-Scopes", "links:read links:write refunds:write"),
            ("X-Keysvc-Scopes", "everything"),
            ("X_Keysvc_Account_Id", "acct_victim"),
        ]

        response = send(nginx.address, "GET", "/api/v1/links", [*forged, bearer(key)])

        assert response.status == 200
        seen = upstream.requests[-1]
        assert {name: seen.header(name) for name in IDENTITY} == {
            "x-keysvc-key-id": [key.key.id],
            "x-keysvc-account-id": [account],
            "x-keysvc-mode": ["live"],
            "x-keysvc-scopes": ["links:read"],
        }
        assert "x_keysvc_account_id" not in seen.names()

    def test_a_post_with_its_body_goes_through_with_the_scope_it_needs(
        self, nginx: Nginx, upstream: Upstream, admin: KeyServiceClient, account: str
    ) -> None:
        key = new_key(admin, account, "links:write")
        body = json.dumps({"name": "T-shirt", "amount": 2500, "currency": "eur"}).encode()

        response = send(nginx.address, "POST", "/api/v1/links", [bearer(key)], body=body)

        assert response.status == 200
        assert upstream.requests[-1].method == "POST"
        assert upstream.requests[-1].header("x-keysvc-key-id") == [key.key.id]

    def test_nginx_workers_are_not_root(self, nginx: Nginx) -> None:
        uids = nginx.worker_uids()
        assert uids, "nginx has no worker processes"
        assert 0 not in uids


class TestKeysvcCannotDecide:
    """keysvc down or hung: NGINX answers 503 with Retry-After, never 200."""

    @pytest.fixture
    def alone(self, tmp_path: Path, upstream: Upstream) -> Iterator[tuple[ServerProcess, Nginx]]:
        """A keysvc and an NGINX of the test's own, to stop."""
        factory = ServerFactory(tmp_path)
        gateway: Nginx | None = None
        try:
            server = start_keysvc(factory)
            gateway = Nginx(keysvc=http_address(server), api=f"127.0.0.1:{upstream.port}")
            gateway.start()
            yield server, gateway
        finally:
            if gateway is not None:
                gateway.remove()
            factory.close()

    def assert_unavailable(self, response: Response) -> None:
        assert response.status == 503, response
        assert response.header("retry-after") == "1"
        assert refusal(response)["reason"] == "unavailable"

    def test_keysvc_stopped_is_503(
        self, alone: tuple[ServerProcess, Nginx], upstream: Upstream
    ) -> None:
        server, gateway = alone
        with server.client() as admin:
            key = new_key(admin, f"acct_{uuid.uuid4().hex[:16]}")
        assert send(gateway.address, "GET", "/api/v1/links", [bearer(key)]).status == 200
        before = len(upstream.requests)

        assert server.stop() == 0
        for _ in range(3):
            self.assert_unavailable(send(gateway.address, "GET", "/api/v1/links", [bearer(key)]))

        assert len(upstream.requests) == before
        assert "auth request unexpected status: 502" in gateway.log()

    def test_keysvc_hung_is_503_once_nginx_gives_up(
        self, alone: tuple[ServerProcess, Nginx], upstream: Upstream
    ) -> None:
        server, gateway = alone
        with server.client() as admin:
            key = new_key(admin, f"acct_{uuid.uuid4().hex[:16]}")
        before = len(upstream.requests)

        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            response = send(gateway.address, "GET", "/api/v1/links", [bearer(key)])
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

        self.assert_unavailable(response)
        assert len(upstream.requests) == before
