"""keysvc's forward-auth endpoint, asked directly as NGINX, Traefik and Caddy ask it, on a real
`keysvc serve --http-listen --gateway-routes`: the header names of each gateway, the
gateways it trusts and the peers it does not, the client's address, the routes no line
declares, and 503 when keysvc cannot decide."""

from __future__ import annotations

import argparse
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from keysvc_client import CreateKeyResponse, KeyServiceClient
from starlette.datastructures import Headers

from keysvc.api import forward_auth, gateway
from keysvc.core.errors import StartupError
from keysvc.runtime import config, http_listener
from tests.e2e.harness import ServerFactory, ServerProcess
from tests.gateways.upstream import EXAMPLES, Response, http_address, send, start_keysvc
from tests.services import PrivatePostgres

pytestmark = pytest.mark.slow

PATH = "/forward-auth"
# The module's keysvc trusts 127.0.0.1 alone: 127.0.0.2, on loopback too, is another peer.
TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def keysvc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("keysvc")
    factory = ServerFactory(base)
    try:
        yield start_keysvc(factory, "--gateway-trusted-proxies", TRUSTED)
    finally:
        factory.close()


@pytest.fixture
def admin(keysvc: ServerProcess) -> Iterator[KeyServiceClient]:
    with keysvc.client() as client:
        yield client


@pytest.fixture
def account() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


def new_key(
    admin: KeyServiceClient, account: str, *scopes: str, allowed_ips: tuple[str, ...] = ()
) -> CreateKeyResponse:
    return admin.create_key(
        account, "Behind a gateway", "test", list(scopes or ["links:read"]), allowed_ips=allowed_ips
    )


def ask(
    server: ServerProcess,
    headers: list[tuple[str, str]],
    *,
    method: str = "GET",
    source: str = TRUSTED,
) -> Response:
    return send(http_address(server), method, PATH, headers, source=source)


def nginx_asks(method: str, uri: str, key: CreateKeyResponse | None) -> list[tuple[str, str]]:
    """The subrequest examples/nginx.conf makes (its proxy_set_header lines)."""
    return [
        ("X-Original-Method", method),
        ("X-Original-URI", uri),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Real-IP", "203.0.113.7"),
        *([("Authorization", f"Bearer {key.secret}")] if key else []),
    ]


def traefik_asks(method: str, uri: str, key: CreateKeyResponse | None) -> list[tuple[str, str]]:
    """What Traefik's ForwardAuth sends with examples/traefik.yaml: authRequestHeaders, then
    the X-Forwarded-* it sets itself (trustForwardHeader false)."""
    return [
        *([("Authorization", f"Bearer {key.secret}")] if key else []),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Host", "api.example.com"),
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Uri", uri),
    ]


def caddy_asks(method: str, uri: str, key: CreateKeyResponse | None) -> list[tuple[str, str]]:
    """What Caddy's forward_auth sends: a GET with the client's headers, reverse_proxy's
    X-Forwarded-For/-Proto/-Host, and forward_auth's X-Forwarded-Method/-Uri."""
    return [
        ("User-Agent", "curl/8.5.0"),
        ("Accept", "*/*"),
        *([("Authorization", f"Bearer {key.secret}")] if key else []),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Host", "api.example.com"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Uri", uri),
    ]


GATEWAYS = {"nginx": nginx_asks, "traefik": traefik_asks, "caddy": caddy_asks}


def error(response: Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert body["status"] == response.status
    return body


class TestEachGatewaysHeaders:
    """NGINX names the request X-Original-*, Traefik and Caddy X-Forwarded-*: the same answers."""

    @pytest.mark.parametrize("name", GATEWAYS)
    def test_an_allowed_request_gets_the_identity_headers(
        self, keysvc: ServerProcess, admin: KeyServiceClient, account: str, name: str
    ) -> None:
        key = new_key(admin, account, "links:read", "links:write")

        response = ask(keysvc, GATEWAYS[name]("GET", "/api/v1/links/plink_1?expand=1", key))

        assert response.status == 200, response
        assert {header: response.header(header) for header in gateway.IDENTITY_HEADERS} == {
            "x-keysvc-key-id": key.key.id,
            "x-keysvc-account-id": account,
            "x-keysvc-mode": "test",
            "x-keysvc-scopes": "links:read links:write",
        }
        assert response.header(forward_auth.REFUSAL_HEADER) is None

    @pytest.mark.parametrize("name", GATEWAYS)
    def test_refusals_carry_the_challenge_and_the_json_body(
        self, keysvc: ServerProcess, admin: KeyServiceClient, account: str, name: str
    ) -> None:
        key = new_key(admin, account, "links:read")

        missing = ask(keysvc, GATEWAYS[name]("GET", "/api/v1/links", None))
        scope = ask(keysvc, GATEWAYS[name]("POST", "/api/v1/links", key))

        assert (missing.status, missing.header("www-authenticate")) == (401, 'Bearer realm="api"')
        assert error(missing)["reason"] == "missing"
        assert scope.status == 403
        assert scope.header("www-authenticate") == (
            'Bearer realm="api", error="insufficient_scope", scope="links:write"'
        )
        assert error(scope)["missing_scopes"] == ["links:write"]
        for response in (missing, scope):
            assert response.header("x-keysvc-key-id") is None
            # NGINX drops an auth_request's body: for it alone, the body comes as a header too.
            repeated = response.header(forward_auth.REFUSAL_HEADER)
            assert repeated == (response.body.decode() if name == "nginx" else None)

    @pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PROPFIND"])
    def test_any_method_asks(
        self, keysvc: ServerProcess, admin: KeyServiceClient, account: str, method: str
    ) -> None:
        """NGINX's subrequest keeps the client's method; Traefik and Caddy send GET."""
        key = new_key(admin, account)

        response = ask(keysvc, nginx_asks("GET", "/api/v1/links", key), method=method)

        assert response.status == 200
        assert response.header("x-keysvc-key-id") == key.key.id


class TestUndeclaredRoutes:
    """A request no line of the route table declares is refused, whatever the key."""

    @pytest.mark.parametrize(
        ("method", "uri"),
        [
            ("DELETE", "/api/v1/links/plink_1"),
            ("GET", "/api/v1/refunds"),
            ("GET", "/api/v1/links/plink_1/../../refunds"),
            ("GET", "/api/v1/links/a%2Fb"),
            ("GET", "/github/secret-scanning"),
        ],
    )
    @pytest.mark.parametrize("name", GATEWAYS)
    def test_404(
        self,
        keysvc: ServerProcess,
        admin: KeyServiceClient,
        account: str,
        name: str,
        method: str,
        uri: str,
    ) -> None:
        key = new_key(admin, account, "links:read", "links:write")

        response = ask(keysvc, GATEWAYS[name](method, uri, key))

        assert response.status == 404
        assert error(response)["reason"] == "not_found"
        assert response.header("x-keysvc-key-id") is None


class TestTrustedProxies:
    """Only the gateways of --gateway-trusted-proxies are answered; no header of any other peer
    is believed."""

    def test_a_peer_that_is_not_a_trusted_gateway_is_refused(
        self, keysvc: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        key = new_key(admin, account)

        for name, asks in GATEWAYS.items():
            response = ask(keysvc, asks("GET", "/api/v1/links", key), source=UNTRUSTED)
            assert response.status == 403, name
            assert error(response)["reason"] == "untrusted_proxy"
            assert response.header("x-keysvc-key-id") is None
        assert "not one of --gateway-trusted-proxies" in keysvc.read_log()
        # The same request from the trusted gateway is allowed.
        assert ask(keysvc, nginx_asks("GET", "/api/v1/links", key)).status == 200

    @pytest.mark.parametrize(
        "headers",
        [
            [("X-Original-Method", "GET"), ("X-Original-URI", "/api/v1/links"),
             ("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/v1/links")],
            [("X-Original-Method", "GET"), ("X-Forwarded-Uri", "/api/v1/links")],
            [("X-Original-Method", "GET"), ("X-Original-URI", "/api/v1/links"),
             ("X-Original-URI", "/api/v1/links/plink_1")],
            [("X-Forwarded-Method", "GET")],
            [("X-Original-Method", "GET"), ("X-Original-URI", " ")],
            [],
        ],
        ids=["both-families", "mixed", "twice", "no-uri", "empty", "none"],
    )  # fmt: skip
    def test_a_request_that_does_not_name_one_request_is_refused(
        self,
        keysvc: ServerProcess,
        admin: KeyServiceClient,
        account: str,
        headers: list[tuple[str, str]],
    ) -> None:
        """A gateway passes the client's own headers on (NGINX always, Traefik by default): a
        second account of the request is the client's, and keysvc will not choose."""
        key = new_key(admin, account)

        response = ask(keysvc, [*headers, ("Authorization", f"Bearer {key.secret}")])

        assert response.status == 403
        assert error(response)["reason"] == "bad_request"
        assert response.header("x-keysvc-key-id") is None


class TestClientAddress:
    """A key restricted to addresses is held to the client's, as the trusted gateway states it."""

    @pytest.fixture
    def restricted(self, admin: KeyServiceClient, account: str) -> CreateKeyResponse:
        return new_key(admin, account, allowed_ips=("203.0.113.0/24",))

    def address_header(self, *values: tuple[str, str]) -> list[tuple[str, str]]:
        return [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/v1/links"), *values]

    @pytest.mark.parametrize(
        ("stated", "status"),
        [
            ([("X-Forwarded-For", "203.0.113.7")], 200),
            ([("X-Forwarded-For", "198.51.100.9")], 403),
            # The client wrote the left part; the gateway appended the real address.
            ([("X-Forwarded-For", "203.0.113.7, 198.51.100.9")], 403),
            # The gateway itself (trusted) is skipped, from the right.
            ([("X-Forwarded-For", "203.0.113.7, 127.0.0.1")], 200),
            ([("X-Real-IP", "203.0.113.7")], 200),
            ([("X-Real-IP", "198.51.100.9")], 403),
            # X-Forwarded-For, when the gateway sends it, is what counts.
            ([("X-Forwarded-For", "198.51.100.9"), ("X-Real-IP", "203.0.113.7")], 403),
            # None stated, or none readable: no address, and a restricted key is refused.
            ([], 403),
            ([("X-Forwarded-For", "unknown")], 403),
            ([("X-Real-IP", "203.0.113.7"), ("X-Real-IP", "203.0.113.8")], 403),
        ],
    )
    def test_the_stated_address_decides(
        self,
        keysvc: ServerProcess,
        restricted: CreateKeyResponse,
        stated: list[tuple[str, str]],
        status: int,
    ) -> None:
        key = ("Authorization", f"Bearer {restricted.secret}")

        response = ask(keysvc, self.address_header(*stated, key))

        assert response.status == status, response
        if status == 403:
            assert error(response)["reason"] == "ip_not_allowed"

    def test_the_gateway_is_not_the_client(
        self, keysvc: ServerProcess, admin: KeyServiceClient, account: str
    ) -> None:
        """A key allowed from the gateway's own address is refused when no client address is
        stated: the peer is the gateway, never taken for the client."""
        key = new_key(admin, account, allowed_ips=(f"{TRUSTED}/32",))

        response = ask(keysvc, self.address_header(("Authorization", f"Bearer {key.secret}")))

        assert response.status == 403
        assert error(response)["reason"] == "ip_not_allowed"


class TestCannotDecide:
    """keysvc up but unable to decide (its database hung past the lease): 503 with Retry-After,
    never 200."""

    @pytest.fixture
    def postgres(self) -> Iterator[PrivatePostgres]:
        server = PrivatePostgres()
        server.start()
        yield server
        server.remove()

    def test_503_with_retry_after(self, tmp_path: Path, postgres: PrivatePostgres) -> None:
        factory = ServerFactory(
            tmp_path, args=["--database-url", postgres.url, "--database-timeout-seconds", "1"]
        )
        try:
            server = start_keysvc(factory)
            with server.client() as admin:
                key = new_key(admin, f"acct_{uuid.uuid4().hex[:16]}")
            postgres.pause()
            # A grant stays current for the lease (0.3 s: harness.serve_command) without the
            # database; past it, keysvc must read the key, and cannot.
            time.sleep(1.0)
            try:
                answers = [
                    ask(server, asks("GET", "/api/v1/links", key))
                    for asks in (nginx_asks, traefik_asks)
                ]
            finally:
                postgres.resume()
        finally:
            factory.close()

        for response in answers:
            assert response.status == 503, response
            assert response.header("retry-after") == "1"
            assert error(response)["reason"] == "unavailable"
            assert response.header("x-keysvc-key-id") is None


class TestTheListener:
    """--http-listen serves forward-auth without GitHub secret scanning, and only what it is
    given."""

    def test_github_secret_scanning_is_not_served_without_its_keys(
        self, keysvc: ServerProcess
    ) -> None:
        response = send(http_address(keysvc), "POST", "/github/secret-scanning", [], body=b"[]")

        assert response.status == 404
        assert response.json() == {"error": "no such endpoint: this listener serves /forward-auth"}


def _settings(argv: list[str], env: dict[str, str] | None = None) -> config.Settings:
    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_options(parser, config.SERVE_OPTIONS)
    return config.settings_from(parser.parse_args(argv), env or {})


class TestSettings:
    """--gateway-trusted-proxies, and what --http-listen needs."""

    def test_loopback_is_trusted_by_default(self) -> None:
        assert _settings([]).gateway_trusted_proxies == ("127.0.0.0/8", "::1")

    def test_from_the_flag_or_the_variable(self) -> None:
        flag = _settings(["--gateway-trusted-proxies", "10.0.0.0/8, 192.0.2.10,2001:db8::/32"])
        variable = _settings([], {"KEYSVC_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,192.0.2.10"})

        assert flag.gateway_trusted_proxies == ("10.0.0.0/8", "192.0.2.10", "2001:db8::/32")
        assert variable.gateway_trusted_proxies == ("10.0.0.0/8", "192.0.2.10")

    @pytest.mark.parametrize("value", ["10.0.0.1/8", "gateway.internal", "::ffff:10.0.0.1"])
    def test_what_is_not_an_address_or_range_is_refused(self, value: str) -> None:
        with pytest.raises(argparse.ArgumentError, match="--gateway-trusted-proxies"):
            _settings(["--gateway-trusted-proxies", value])

    def test_a_listener_for_forward_auth_alone_needs_no_github_keys(self, tmp_path: Path) -> None:
        routes = tmp_path / "gateway-routes.toml"
        routes.write_text('"GET /api/v1/links" = "links:read"\n')

        listener = http_listener.configured(
            _settings(["--http-listen", "127.0.0.1:0", "--gateway-routes", str(routes)])
        )

        assert listener is not None
        assert (listener.public_keys, listener.endpoints) == (None, [PATH])
        assert listener.trusted_proxies == ("127.0.0.0/8", "::1")

    def test_a_listener_with_nothing_to_serve_is_refused(self) -> None:
        with pytest.raises(StartupError, match=r"--github-keys-file.*--gateway-routes"):
            http_listener.configured(_settings(["--http-listen", "127.0.0.1:0"]))


class TestOriginalRequest:
    """Which request a gateway names, header by header."""

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"x-original-method": "POST", "x-original-uri": "/a?b=c"}, ("POST", "/a?b=c", True)),
            ({"x-forwarded-method": "GET", "x-forwarded-uri": "/a"}, ("GET", "/a", False)),
        ],
    )
    def test_one_family(self, headers: dict[str, str], expected: tuple[str, str, bool]) -> None:
        original = forward_auth.original_request(Headers(headers))

        assert (original.method, original.uri, original.nginx) == expected


class TestTraefikExample:
    """examples/traefik.yaml says what the Traefik requests above assume."""

    def test_the_middleware_asks_forward_auth_as_assumed(self) -> None:
        document = yaml.safe_load((EXAMPLES / "traefik.yaml").read_text())
        middleware = document["http"]["middlewares"]["keysvc"]["forwardAuth"]

        assert middleware["address"].endswith(PATH)
        assert middleware["trustForwardHeader"] is False
        assert middleware["authRequestHeaders"] == ["Authorization"]
        # Traefik copies the headers it matches (Go's canonical names), having removed the
        # client's own first.
        regex = re.compile(middleware["authResponseHeadersRegex"])
        canonical = ["X-Keysvc-Key-Id", "X-Keysvc-Account-Id", "X-Keysvc-Mode", "X-Keysvc-Scopes"]
        assert all(regex.match(name) for name in canonical)
        assert not regex.match("Authorization")
        router = document["http"]["routers"]["api"]
        assert router["middlewares"][0] == "keysvc"
