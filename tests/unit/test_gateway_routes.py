"""The gateway decision (keysvc.api.gateway): the route file, which route a request is held to,
and the answer a gateway gets, decided by the real Authorizer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from keysvc.api.gateway import (
    IDENTITY_HEADERS,
    Gateway,
    GatewayAnswer,
    RouteTable,
    load_routes,
    parse_routes,
    request_path,
)
from keysvc.core import keys
from keysvc.core.errors import StartupError, Unavailable
from keysvc.core.model import Actor, Decision, Mode
from keysvc.runtime import config

from .conftest import Keysvc
from .support import async_test

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway-routes.toml"
ADMIN = Actor("admin", "ipv4:127.0.0.1:50000")

TABLE = """\
"GET /api/v1/links" = "links:read"
"POST /api/v1/links" = "links:write"
"GET /api/v1/links/{link_id}" = "links:read"
"GET /api/v1/links/export" = ["links:read", "customers:read"]
"GET /api/v1/me" = []
"""


class TestRouteFile:
    """The route file is KeysvcMiddleware's table in TOML; any mistake stops the start, naming
    the file and the line."""

    def test_the_shipped_example_is_valid(self) -> None:
        routes = load_routes(EXAMPLE)
        assert [(r.method, r.template) for r in routes.routes][:2] == [
            ("GET", "/api/v1/links"),
            ("POST", "/api/v1/links"),
        ]
        assert routes.source == str(EXAMPLE)

    def test_a_line_takes_one_scope_a_list_or_none(self) -> None:
        routes = parse_routes(TABLE)
        assert {(r.method, r.template): r.scopes for r in routes.routes} == {
            ("GET", "/api/v1/links"): ("links:read",),
            ("POST", "/api/v1/links"): ("links:write",),
            ("GET", "/api/v1/links/{link_id}"): ("links:read",),
            ("GET", "/api/v1/links/export"): ("links:read", "customers:read"),
            ("GET", "/api/v1/me"): (),
        }
        assert [r.line for r in routes.routes] == [1, 2, 3, 4, 5]

    @pytest.mark.parametrize(
        ("line", "problem"),
        [
            ('"GET /api/v1/refunds" = "refunds:write"', "unknown scope refunds:write"),
            ('"GET /api/v1/refunds" = "links-read"', "not a scope name"),
            ('"GET /api/v1/refunds" = ["links:read", 3]', "a scope is a name"),
            ('"GET /api/v1/refunds" = true', "give a scope"),
            ('"FETCH /api/v1/refunds" = "links:read"', "is not 'METHOD /path'"),
            ('"GET api/v1/refunds" = "links:read"', "is not 'METHOD /path'"),
            ('"/api/v1/refunds" = "links:read"', "is not 'METHOD /path'"),
            ('"GET /api/v1/refunds?all=1" = "links:read"', "is not 'METHOD /path'"),
            ('"GET /api/v1/refunds/{id:uuidish}" = "links:read"', "not a path template"),
            ('"GET /api/v1/refunds/{id}/{id}" = "links:read"', "not a path template"),
            ('"GET /api/v1/links/{link_id:str}" = "links:read"', "declares the route of line 3"),
            ('"GET /api/v1/refunds" = { scope = "links:read" }', "give a scope"),
        ],
    )
    def test_a_bad_line_is_refused_naming_it(self, line: str, problem: str) -> None:
        text = TABLE + "\n# the next line is wrong\n" + line + "\n"
        with pytest.raises(StartupError) as raised:
            parse_routes(text, source="routes.toml")
        assert str(raised.value).startswith("gateway routes routes.toml, line 8: ")
        assert problem in str(raised.value)

    def test_text_that_is_not_toml_is_refused_with_its_line(self) -> None:
        with pytest.raises(StartupError, match=r"routes.toml: .*line 2"):
            parse_routes('"GET /a" = "links:read"\nGET /b = links:read\n', source="routes.toml")

    def test_the_same_line_twice_is_refused(self) -> None:
        with pytest.raises(StartupError, match="line 2"):
            parse_routes('"GET /a" = "links:read"\n"GET /a" = "links:write"\n')

    def test_an_empty_file_is_refused(self) -> None:
        """A table without routes would answer every request 404: surely a mistake."""
        with pytest.raises(StartupError, match="no routes"):
            parse_routes("# nothing yet\n")

    def test_a_file_that_cannot_be_read_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(StartupError, match="cannot read it"):
            load_routes(tmp_path / "missing.toml")

    def test_methods_are_read_as_the_middleware_reads_them(self) -> None:
        (route,) = parse_routes('"get /api/v1/links" = "links:read"').routes
        assert route.method == "GET"


class TestMatching:
    """A request is held to every line that matches it; one that none matches has no route."""

    routes = parse_routes(TABLE)

    @pytest.mark.parametrize(
        ("method", "path", "scopes"),
        [
            ("GET", "/api/v1/links", ("links:read",)),
            ("HEAD", "/api/v1/links", ("links:read",)),
            ("POST", "/api/v1/links", ("links:write",)),
            ("GET", "/api/v1/links/plink_1", ("links:read",)),
            # Two lines match: the scopes of both, whatever their order in the file.
            ("GET", "/api/v1/links/export", ("links:read", "customers:read")),
            ("GET", "/api/v1/me", ()),
        ],
    )
    def test_declared_routes_need_their_scopes(
        self, method: str, path: str, scopes: tuple[str, ...]
    ) -> None:
        assert self.routes.required(method, path) == scopes

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("PUT", "/api/v1/links"),
            ("HEAD", "/api/v1/me/"),
            ("POST", "/api/v1/links/plink_1"),
            ("GET", "/api/v1/links/plink_1/refunds"),
            ("GET", "/api/v1"),
            ("get", "/api/v1/links"),
            ("GET", ""),
        ],
    )
    def test_anything_else_has_no_route(self, method: str, path: str) -> None:
        assert self.routes.required(method, path) is None

    @pytest.mark.parametrize(
        ("path", "decoded"),
        [
            ("/api/v1/links?limit=3", "/api/v1/links"),
            ("/api/v1/links#top", "/api/v1/links"),
            ("/api/v1/links/plink%5F1", "/api/v1/links/plink_1"),
            ("/api/v1/links/caf%C3%A9", "/api/v1/links/café"),
        ],
    )
    def test_paths_are_read_as_a_router_reads_them(self, path: str, decoded: str) -> None:
        assert request_path(path) == decoded

    @pytest.mark.parametrize(
        "path",
        [
            "/api/v1/links/a%2Fb",
            "/api/v1/links/a%2fb",
            "/api/v1/links/a%5Cb",
            "/api/v1/links/a\\b",
            "/api/v1/links/..",
            "/api/v1/links/%2E%2E/admin",
            "/api/v1/./links",
            "/api/v1/links/a%0Ab",
            "/api/v1/links/%FF",
            "api/v1/links",
            "*",
            "/" + "a" * 9000,
        ],
    )
    def test_a_path_the_upstream_could_read_otherwise_is_refused(self, path: str) -> None:
        assert request_path(path) is None


async def _key(keysvc: Keysvc, *scopes: str, allowed_ips: tuple[str, ...] = ()) -> str:
    created = await keysvc.admin.create_key(
        "acct_gw", "Gateway", Mode.TEST, scopes, ADMIN, allowed_ips=allowed_ips
    )
    keysvc.clock.advance(1)
    return created.raw_key


def _gateway(keysvc: Keysvc) -> Gateway:
    return Gateway(parse_routes(TABLE), keysvc.authorizer)


def _error(answer: GatewayAnswer) -> dict[str, object]:
    body: dict[str, dict[str, object]] = json.loads(answer.body)
    return body["error"]


class TestDecide:
    """decide() answers as Authorize decides, in the Guard's words."""

    @async_test
    async def test_an_allowed_request_carries_the_identity(self, keysvc: Keysvc) -> None:
        key = await _key(keysvc, "links:read", "links:write")
        answer = await _gateway(keysvc).decide(
            "GET", "/api/v1/links?limit=1", f"Bearer {key}", "127.0.0.1"
        )
        assert answer.allowed and answer.status == 200
        assert answer.key is not None
        assert dict(answer.upstream_headers) == {
            "x-keysvc-key-id": answer.key.key_id,
            "x-keysvc-account-id": "acct_gw",
            "x-keysvc-mode": "test",
            "x-keysvc-scopes": "links:read links:write",
        }
        assert tuple(answer.upstream_headers) == IDENTITY_HEADERS
        assert answer.body == b""

    @async_test
    async def test_no_key_is_401_with_the_bare_challenge(self, keysvc: Keysvc) -> None:
        answer = await _gateway(keysvc).decide("GET", "/api/v1/links", None, "127.0.0.1")
        assert (answer.status, answer.reason) == (401, "missing")
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        assert answer.headers["Content-Type"] == "application/json"
        assert _error(answer)["reason"] == "missing"
        assert not answer.upstream_headers

    @async_test
    async def test_a_missing_scope_is_403_naming_it(self, keysvc: Keysvc) -> None:
        key = await _key(keysvc, "links:read")
        answer = await _gateway(keysvc).decide("POST", "/api/v1/links", f"Bearer {key}", None)
        assert answer.status == 403
        assert answer.headers["WWW-Authenticate"] == (
            'Bearer realm="api", error="insufficient_scope", scope="links:write"'
        )
        assert _error(answer)["missing_scopes"] == ["links:write"]
        assert not answer.upstream_headers

    @async_test
    async def test_a_revoked_key_is_401(self, keysvc: Keysvc) -> None:
        key = await _key(keysvc, "links:read")
        gateway = _gateway(keysvc)
        assert (await gateway.decide("GET", "/api/v1/links", key, None)).allowed
        await keysvc.admin.revoke_key("acct_gw", keys.parse(key).key_id, ADMIN)  # type: ignore[union-attr]
        answer = await gateway.decide("GET", "/api/v1/links", key, None)
        assert (answer.status, answer.reason) == (401, "revoked")

    @async_test
    async def test_the_client_address_reaches_the_allowed_ips_check(self, keysvc: Keysvc) -> None:
        key = await _key(keysvc, "links:read", allowed_ips=("203.0.113.0/24",))
        gateway = _gateway(keysvc)
        allowed = await gateway.decide("GET", "/api/v1/links", key, "::ffff:203.0.113.7")
        assert allowed.status == 200
        for elsewhere in ("198.51.100.1", None, "not an address"):
            answer = await gateway.decide("GET", "/api/v1/links", key, elsewhere)
            assert (answer.status, answer.reason) == (403, "ip_not_allowed")

    @async_test
    async def test_an_undeclared_route_is_404_for_any_key(self, keysvc: Keysvc) -> None:
        key = await _key(keysvc, "links:read", "links:write", "customers:read")
        answer = await _gateway(keysvc).decide("DELETE", "/api/v1/links/x", key, None)
        assert (answer.status, answer.reason) == (404, "not_found")
        assert _error(answer) == {"status": 404, "reason": "not_found", "message": "no such route"}
        assert not answer.allowed and not answer.upstream_headers


class _Down:
    """An Authorizer whose backends cannot answer."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def authorize(self, *args: object, **kwargs: object) -> Decision:
        self.calls += 1
        raise self.error


class TestCannotDecide:
    """keysvc unable to decide is 503 with Retry-After: never an allow, never a key refusal."""

    @pytest.mark.parametrize("error", [Unavailable("database down"), RuntimeError("a bug")])
    @async_test
    async def test_it_is_503(self, error: Exception) -> None:
        down = _Down(error)
        gateway = Gateway(parse_routes(TABLE), down)  # type: ignore[arg-type]
        answer = await gateway.decide("GET", "/api/v1/links", "Bearer ck_test_x", None)
        assert (answer.status, answer.reason) == (503, "unavailable")
        assert answer.unavailable and not answer.allowed
        assert answer.headers["Retry-After"] == "1"
        assert not answer.upstream_headers
        assert down.calls == 1

    @async_test
    async def test_an_undeclared_route_needs_no_keysvc(self) -> None:
        down = _Down(Unavailable("database down"))
        gateway = Gateway(parse_routes(TABLE), down)  # type: ignore[arg-type]
        answer = await gateway.decide("GET", "/nowhere", "Bearer ck_test_x", None)
        assert answer.status == 404 and down.calls == 0


class TestSettings:
    """--gateway-routes names the file; --gateway-strip-key is on unless turned off."""

    def _settings(self, argv: list[str], env: dict[str, str] | None = None) -> config.Settings:
        parser = argparse.ArgumentParser(exit_on_error=False)
        config.add_options(parser, config.SERVE_OPTIONS)
        return config.settings_from(parser.parse_args(argv), env or {})

    def test_by_default_no_gateway_and_the_key_is_stripped(self) -> None:
        settings = self._settings([])
        assert settings.gateway_routes is None
        assert settings.gateway_strip_key is True

    def test_the_flags_and_variables(self) -> None:
        flagged = self._settings(["--gateway-routes", "r.toml", "--gateway-strip-key", "false"])
        assert (flagged.gateway_routes, flagged.gateway_strip_key) == (Path("r.toml"), False)
        env = {"KEYSVC_GATEWAY_ROUTES": "e.toml", "KEYSVC_GATEWAY_STRIP_KEY": "no"}
        from_env = self._settings([], env)
        assert (from_env.gateway_routes, from_env.gateway_strip_key) == (Path("e.toml"), False)


def test_route_tables_count_their_lines() -> None:
    assert len(RouteTable(())) == 0
    assert len(parse_routes(TABLE)) == 5
