"""keysvc behind a real Envoy (1.40): the ext_authz filter, configured by examples/envoy.yaml,
asks keysvc's Check about every request, and only keysvc's yes reaches the upstream.

Every request goes through Envoy on a loopback port to the echo upstream (conftest.Upstream),
which shows what reached it. keysvc serves examples/gateway-routes.toml.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from keysvc_client import KeyServiceClient

from keysvc.access.callers import Callers
from keysvc.access.gate import Gate
from keysvc.api import envoy as envoy_edge
from keysvc.api.envoy_stubs.envoy.config.core.v3 import address_pb2
from keysvc.api.envoy_stubs.envoy.service.auth.v3 import (
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from keysvc.api.gateway import Gateway, parse_routes
from keysvc.core.errors import Unavailable
from keysvc.core.model import Decision
from tests.e2e.harness import NewKey, ServerProcess, poll, with_checksum
from tests.services import free_port

from .conftest import Envoy, Upstream, keysvc_factory

pytestmark = pytest.mark.slow


def bearer(key: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key}")


@pytest.fixture
def upstream_requests(upstream: Upstream) -> Iterator[list[Any]]:
    """What reaches the upstream during the test, and only then."""
    upstream.requests.clear()
    yield upstream.requests


class TestRefused:
    """A request keysvc refuses gets keysvc's answer from Envoy and never reaches the upstream."""

    def test_no_key_is_401_with_the_bare_challenge(
        self, envoy: Envoy, upstream_requests: list[Any]
    ) -> None:
        answer = envoy.send("GET", "/api/v1/links")
        assert answer.status == 401
        assert answer.header("www-authenticate") == 'Bearer realm="api"'
        assert answer.header("content-type") == "application/json"
        assert answer.header("cache-control") == "no-store"
        assert answer.json()["error"]["reason"] == "missing"
        assert upstream_requests == []

    @pytest.mark.parametrize(
        "value",
        [
            "Bearer garbage",
            "Bearer " + with_checksum("ck_live_" + "A" * 44),
            "Basic dXNlcjpwYXNz",
        ],
    )
    def test_a_value_that_is_no_key_is_401_invalid_token(
        self, envoy: Envoy, upstream_requests: list[Any], value: str
    ) -> None:
        answer = envoy.send("GET", "/api/v1/links", [("Authorization", value)])
        assert answer.status == 401
        challenge = answer.header("www-authenticate") or ""
        assert challenge.startswith('Bearer realm="api", error="invalid_token"')
        assert answer.json()["error"]["reason"] in ("malformed", "not_found")
        assert upstream_requests == []

    def test_two_keys_are_refused_whatever_they_hold(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        key = new_key(scopes=["links:read"]).secret
        answer = envoy.send("GET", "/api/v1/links", [bearer(key), bearer(key)])
        assert answer.status == 401
        assert answer.json()["error"]["reason"] == "malformed"
        assert upstream_requests == []

    def test_a_missing_scope_is_403_with_the_insufficient_scope_challenge(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        key = new_key(scopes=["links:read"]).secret
        answer = envoy.send("POST", "/api/v1/links", [bearer(key)], body=b"{}")
        assert answer.status == 403
        assert answer.header("www-authenticate") == (
            'Bearer realm="api", error="insufficient_scope", scope="links:write"'
        )
        assert answer.json() == {
            "error": {
                "status": 403,
                "reason": "insufficient_scope",
                "message": "the API key lacks the scope links:write",
                "missing_scopes": ["links:write"],
            }
        }
        assert upstream_requests == []

    def test_overlapping_lines_need_the_scopes_of_both(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        """GET /api/v1/links/export matches "{link_id}" and "export": it needs both lines'."""
        reader = new_key(scopes=["links:read"]).secret
        answer = envoy.send("GET", "/api/v1/links/export", [bearer(reader)])
        assert answer.status == 403
        assert answer.json()["error"]["missing_scopes"] == ["customers:read"]
        both = new_key(scopes=["links:read", "customers:read"]).secret
        assert envoy.send("GET", "/api/v1/links/export", [bearer(both)]).status == 200
        assert [request.path for request in upstream_requests] == ["/api/v1/links/export"]

    def test_a_revoked_key_is_401_on_the_next_request(
        self,
        envoy: Envoy,
        new_key: NewKey,
        admin: KeyServiceClient,
        account: str,
        upstream_requests: list[Any],
    ) -> None:
        created = new_key(scopes=["links:read"])
        assert envoy.send("GET", "/api/v1/links", [bearer(created.secret)]).status == 200
        admin.revoke_key(account, created.key.id)
        answer = envoy.send("GET", "/api/v1/links", [bearer(created.secret)])
        assert answer.status == 401
        assert answer.json()["error"]["reason"] == "revoked"
        assert 'error_description="the API key has been revoked"' in (
            answer.header("www-authenticate") or ""
        )
        assert len(upstream_requests) == 1

    def test_a_key_restricted_to_other_addresses_is_403(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        """Envoy hands keysvc the client's address: here the loopback, not 203.0.113.0/24."""
        elsewhere = new_key(allowed_ips=["203.0.113.0/24"]).secret
        answer = envoy.send("GET", "/api/v1/links", [bearer(elsewhere)])
        assert answer.status == 403
        assert answer.json()["error"]["reason"] == "ip_not_allowed"
        here = new_key(allowed_ips=["127.0.0.1"]).secret
        assert envoy.send("GET", "/api/v1/links", [bearer(here)]).status == 200
        assert len(upstream_requests) == 1


class TestUndeclared:
    """A route no line of the route file declares is 404, for any key, and never reaches the
    upstream."""

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/v1/admin"),
            ("DELETE", "/api/v1/links/plink_1"),
            ("PUT", "/api/v1/links"),
            ("GET", "/api/v1/links/plink_1/refunds"),
            ("GET", "/"),
            # Envoy resolves the dot segments first: this is GET /api/v1/admin.
            ("GET", "/api/v1/links/../admin"),
        ],
    )
    def test_an_undeclared_route_is_404_even_with_every_scope(
        self,
        envoy: Envoy,
        new_key: NewKey,
        upstream_requests: list[Any],
        method: str,
        path: str,
    ) -> None:
        everything = new_key(scopes=["links:read", "links:write", "customers:read"]).secret
        answer = envoy.send(method, path, [bearer(everything)])
        assert answer.status == 404
        assert answer.json() == {
            "error": {"status": 404, "reason": "not_found", "message": "no such route"}
        }
        assert upstream_requests == []

    def test_an_encoded_slash_never_reaches_the_upstream(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        key = new_key(scopes=["links:read"]).secret
        answer = envoy.send("GET", "/api/v1/links/a%2F..%2F..%2Fadmin", [bearer(key)])
        assert answer.status in (400, 404)
        assert upstream_requests == []


class TestAllowed:
    """An allowed request reaches the upstream with keysvc's identity headers, and without the
    key or any identity header the client made up."""

    def test_the_upstream_gets_the_identity_and_not_the_key(
        self, envoy: Envoy, new_key: NewKey, account: str, upstream_requests: list[Any]
    ) -> None:
        created = new_key(mode="test", scopes=["links:read", "links:write"])
        answer = envoy.send(
            "GET",
            "/api/v1/links?limit=3",
            [
                bearer(created.secret),
                ("X-Keysvc-Key-Id", "forged"),
                ("x-keysvc-account-id", "acct_victim"),
                ("X-Keysvc-Scopes", "customers:write"),
                ("X-Keysvc-Admin", "true"),
            ],
        )
        assert answer.status == 200
        (received,) = upstream_requests
        assert answer.json()["path"] == received.path == "/api/v1/links?limit=3"
        assert received.header("x-keysvc-key-id") == [created.key.id]
        assert received.header("x-keysvc-account-id") == [account]
        assert received.header("x-keysvc-mode") == ["test"]
        assert received.header("x-keysvc-scopes") == ["links:read links:write"]
        assert "x-keysvc-admin" not in received.names()
        assert "authorization" not in received.names()
        assert created.secret not in json.dumps(answer.json())

    def test_head_is_covered_by_the_get_line(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        key = new_key(scopes=["links:read"]).secret
        assert envoy.send("HEAD", "/api/v1/links/plink_1", [bearer(key)]).status == 200
        assert [request.method for request in upstream_requests] == ["HEAD"]

    def test_an_empty_line_takes_any_valid_key(
        self, envoy: Envoy, new_key: NewKey, upstream_requests: list[Any]
    ) -> None:
        key = new_key(scopes=["customers:read"]).secret
        assert envoy.send("GET", "/api/v1/me", [bearer(key)]).status == 200
        assert envoy.send("GET", "/api/v1/me").status == 401
        assert len(upstream_requests) == 1


class TestKeptKey:
    """With --gateway-strip-key false, the upstream gets the Authorization header too."""

    def test_the_upstream_sees_the_key(
        self,
        tmp_path: Path,
        upstream: Upstream,
        upstream_requests: list[Any],
        authorizer_token: str,
    ) -> None:
        factory = keysvc_factory(tmp_path, authorizer_token, "--gateway-strip-key", "false")
        proxy: Envoy | None = None
        try:
            keysvc = factory.start()
            with keysvc.client() as admin:
                secret = admin.create_key("acct_kept", "Kept", "live", ["links:read"]).secret
            proxy = Envoy(
                tmp_path,
                keysvc=keysvc.target,
                upstream_port=upstream.port,
                token=authorizer_token,
            ).start()
            answer = proxy.send("GET", "/api/v1/links", [bearer(secret), ("X-Keysvc-Debug", "1")])
            assert answer.status == 200
            (received,) = upstream_requests
            assert received.header("authorization") == [f"Bearer {secret}"]
            assert "x-keysvc-debug" not in received.names()
        finally:
            if proxy is not None:
                proxy.stop()
            factory.close()


class TestCannotDecide:
    """When keysvc cannot decide, Envoy answers 503: never 200, never the upstream."""

    def test_keysvc_stopped_is_503_and_back_is_200(
        self,
        tmp_path: Path,
        upstream: Upstream,
        upstream_requests: list[Any],
        authorizer_token: str,
    ) -> None:
        port = free_port()
        factory = keysvc_factory(tmp_path, authorizer_token)
        proxy: Envoy | None = None
        try:
            keysvc = factory.start("--listen", f"127.0.0.1:{port}")
            with keysvc.client() as admin:
                secret = admin.create_key("acct_down", "Down", "live", ["links:read"]).secret
            proxy = Envoy(
                tmp_path, keysvc=keysvc.target, upstream_port=upstream.port, token=authorizer_token
            ).start()
            assert proxy.send("GET", "/api/v1/links", [bearer(secret)]).status == 200
            assert keysvc.stop() == 0

            for headers in ([bearer(secret)], [], [("Authorization", "Bearer garbage")]):
                answer = proxy.send("GET", "/api/v1/links", headers)
                assert answer.status == 503, answer
            assert len(upstream_requests) == 1

            # On the same port and data, keysvc is asked again, with no restart of Envoy.
            again = factory.start("--listen", f"127.0.0.1:{port}", data_dir=keysvc.data_dir)
            assert again.port == port
            back = proxy
            poll(
                lambda: back.send("GET", "/api/v1/links", [bearer(secret)]).status == 200,
                timeout=10,
                what="Envoy to reach keysvc again",
            )
        finally:
            if proxy is not None:
                proxy.stop()
            factory.close()

    def test_envoy_without_keysvcs_credential_gets_503(
        self,
        tmp_path: Path,
        gateway_keysvc: ServerProcess,
        upstream: Upstream,
        new_key: NewKey,
        upstream_requests: list[Any],
    ) -> None:
        """Check is an Authorize-class call: a gateway keysvc does not know is refused, and
        Envoy turns that into 503, not into an open door."""
        key = new_key(scopes=["links:read"]).secret
        proxy = Envoy(
            tmp_path,
            keysvc=gateway_keysvc.target,
            upstream_port=upstream.port,
            token="kst_not-a-token-keysvc-knows",
        ).start()
        try:
            assert proxy.send("GET", "/api/v1/links", [bearer(key)]).status == 503
        finally:
            proxy.stop()
        assert upstream_requests == []
        assert "Envoy's Check refused" in gateway_keysvc.read_log()


# -- Check itself, over gRPC, for what a running keysvc cannot be made to do on demand -----------


class _UnavailableAuthorizer:
    """An Authorizer whose backends are all down."""

    async def authorize(self, *args: object, **kwargs: object) -> Decision:
        raise Unavailable("the database cannot be reached")


class _BrokenAuthorizer:
    async def authorize(self, *args: object, **kwargs: object) -> Decision:
        raise RuntimeError("a bug")


def _check_request(path: str = "/api/v1/links") -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", path
    http.headers["authorization"] = "Bearer " + with_checksum("ck_live_" + "B" * 44)
    request.attributes.source.address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=40000)
        )
    )
    return request


async def _check(authorizer: object, request: external_auth_pb2.CheckRequest) -> Any:
    routes = parse_routes('"GET /api/v1/links" = "links:read"')
    gateway = Gateway(routes, authorizer)  # type: ignore[arg-type]
    servicer = envoy_edge.EnvoyAuthorization(gateway, Gate(Callers(), open_authorize=True))
    async with AsyncExitStack() as stack:
        server = grpc.aio.server()
        envoy_edge.add_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        try:
            return await stub.Check(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err


class TestCheckUnavailable:
    """keysvc unable to decide fails the RPC with UNAVAILABLE (Envoy's status_on_error: 503)."""

    @pytest.mark.parametrize("authorizer", [_UnavailableAuthorizer(), _BrokenAuthorizer()])
    def test_a_backend_down_or_a_bug_is_unavailable_never_ok(self, authorizer: object) -> None:
        outcome = asyncio.run(_check(authorizer, _check_request()))
        assert isinstance(outcome, grpc.aio.AioRpcError)
        assert outcome.code() is grpc.StatusCode.UNAVAILABLE

    def test_an_undeclared_route_is_denied_without_asking_the_authorizer(self) -> None:
        outcome = asyncio.run(_check(_BrokenAuthorizer(), _check_request("/api/v1/admin")))
        assert isinstance(outcome, external_auth_pb2.CheckResponse)
        assert outcome.status.code == status_pb2.Status(code=5).code
        assert outcome.denied_response.status.code == 404
        assert outcome.WhichOneof("http_response") == "denied_response"


class TestReflection:
    """With --gateway-routes, reflection lists Envoy's service beside KeyService."""

    def test_grpcurl_describes_check(self, gateway_keysvc: ServerProcess) -> None:
        listed = gateway_keysvc.grpcurl("list")
        assert listed.returncode == 0, listed.stderr
        assert "envoy.service.auth.v3.Authorization" in listed.stdout.split()
        described = gateway_keysvc.grpcurl("describe", "envoy.service.auth.v3.CheckResponse")
        assert described.returncode == 0, described.stderr
        assert "denied_response" in described.stdout
