"""Keys restricted to allowed IPs, through every integration on real servers against a real
keysvc: the glue sends the request's client address, taken from the immediate peer, or from a
trusted proxy's X-Forwarded-For / Forwarded, and keysvc allows the key only from its addresses.

The API servers listen on every address, IPv4 and IPv6 (so an IPv4 client reaches them as an
IPv4-mapped IPv6 peer, as on a dual-stack host), and the requests come from chosen loopback
addresses: 127.0.0.2 is inside 127.0.0.0/30, 127.0.0.5 outside it. The proxies trusted, when
any are, are 127.0.0.1 (HTTP) and ::1 (gRPC); a request "via the proxy" comes from there with
the proxy's header. Addresses beyond loopback (203.0.113.0/24, 2001:db8::/32) can only arrive
in a header.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from keysvc_client import Guard, aio, keysvc_pb2

from tests.e2e.harness import ServerProcess

from . import servers
from .conftest import TIMEOUT
from .test_grpc_interceptor import METHODS, RUNNERS, LinksServer

pytestmark = pytest.mark.slow

pb = keysvc_pb2


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")

# Every address, both families, where there is IPv6: IPv4 peers then arrive IPv4-mapped.
LISTEN = "::" if IPV6 else "127.0.0.1"
LISTEN_GRPC = "[::]" if IPV6 else "127.0.0.1"
PROXY = "127.0.0.1"  # the HTTP servers' trusted proxy, when they trust one
GRPC_PROXY = "::1"


@dataclass
class Restricted:
    """Creates keys in one account, restricted to addresses, with the generated stub."""

    server: ServerProcess
    account: str

    def create(
        self, *allowed_ips: str, expire_in: float | None = None
    ) -> keysvc_pb2.CreateKeyResponse:
        request = pb.CreateKeyRequest(
            account_id=self.account,
            name="IP restriction test",
            mode=pb.MODE_LIVE,
            scopes=["links:read", "links:write"],
            allowed_ips=list(allowed_ips),
        )
        if expire_in is not None:
            request.expire_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=expire_in))
        with self.server.channel() as channel:
            response: keysvc_pb2.CreateKeyResponse = self.server.stub(channel).CreateKey(
                request, metadata=self.server.admin_metadata, timeout=10
            )
        assert len(response.key.allowed_ips) == len(allowed_ips), "keysvc dropped allowed_ips"
        return response

    def bearer(self, *allowed_ips: str) -> str:
        return f"Bearer {self.create(*allowed_ips).secret}"


@pytest.fixture
def restricted(server: ServerProcess, account: str) -> Restricted:
    return Restricted(server, account)


# ----------------------------------------------------------------------------------------------
# HTTP: each integration in a sample app (sample_apps.py) under uvicorn or werkzeug


@dataclass(frozen=True)
class Flavour:
    kind: str  # "asgi" (uvicorn) or "wsgi" (werkzeug)
    app: str  # the sample_apps factory or app name
    path: str  # a route that needs links:read


FLAVOURS = {
    "starlette-decorator": Flavour("asgi", "starlette_decorated", "/api/v1/links"),
    "starlette-middleware": Flavour("asgi", "starlette_table", "/api/v1/links/x1"),
    "fastapi": Flavour("asgi", "fastapi_app", "/api/v1/links/x1"),
    "flask": Flavour("wsgi", "flask", "/api/v1/links/x1"),
}

# What the sample app's Guard trusts.
CONFIGS: dict[str, dict[str, str]] = {
    "direct": {},
    "x-forwarded-for": {"SAMPLE_TRUSTED_PROXIES": PROXY},
    "forwarded": {"SAMPLE_TRUSTED_PROXIES": PROXY, "SAMPLE_FORWARDED_HEADER": "forwarded"},
}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: Any

    @property
    def reason(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("reason") if isinstance(error, dict) else None


@dataclass
class Api:
    """A sample app served by its own process, asked from chosen source addresses."""

    served: servers.SampleServer
    path: str

    def get(
        self,
        authorization: str,
        source: str = "127.0.0.1",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        """GET the app's links:read route from `source` (a loopback address of either family),
        with `headers` sent as given, repeated fields included."""
        host = "::1" if ":" in source else "127.0.0.1"
        connection = http.client.HTTPConnection(
            host, self.served.port, timeout=30, source_address=(source, 0)
        )
        try:
            connection.putrequest("GET", self.path)
            connection.putheader("Authorization", authorization)
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return Reply(response.status, response.headers, body)

    def ran(self) -> int:
        """How many handlers (and dependencies) have run so far."""
        return len(self.served.ran())


class ApiServers:
    """Sample servers of every flavour and configuration, started when first needed and kept
    for the module: each start costs a process."""

    def __init__(self, server: ServerProcess, directory: Path) -> None:
        self._server = server
        self._directory = directory
        self._stack = ExitStack()
        self._running: dict[tuple[str, str], Api] = {}

    def get(self, flavour: str, config: str) -> Api:
        if (flavour, config) not in self._running:
            shape = FLAVOURS[flavour]
            env = CONFIGS[config]
            if shape.kind == "asgi":
                # uvicorn's own proxy handling would rewrite the peer from X-Forwarded-For for
                # 127.0.0.1 before the app sees it: the glue's trusted_proxies decide here.
                served = servers.asgi(
                    shape.app,
                    self._server.target,
                    self._directory,
                    "--no-proxy-headers",
                    host=LISTEN,
                    env=env,
                )
            else:
                served = servers.wsgi(
                    shape.app, self._server.target, self._directory, host=LISTEN, env=env
                )
            self._running[flavour, config] = Api(self._stack.enter_context(served), shape.path)
        return self._running[flavour, config]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def api_servers(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServers]:
    running = ApiServers(server, tmp_path_factory.mktemp("api-servers"))
    yield running
    running.close()


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def assert_allowed(reply: Reply, key: keysvc_pb2.CreateKeyResponse) -> None:
    assert reply.status == 200, reply.body
    assert reply.body["key_id"] == key.key.id


def assert_ip_refused(api: Api, reply: Reply, ran_before: int) -> None:
    assert (reply.status, reply.reason) == (403, "ip_not_allowed"), reply.body
    assert reply.body["error"]["status"] == 403
    assert "www-authenticate" not in reply.headers
    assert api.ran() == ran_before, "a handler ran for a refused request"


class TestDirectClients:
    """Without trusted proxies the immediate peer is the client, and no header changes that."""

    def test_an_ipv4_address_allows_that_address_only(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "direct")
        key = restricted.create("127.0.0.2")
        assert_allowed(api.get(f"Bearer {key.secret}", source="127.0.0.2"), key)
        ran = api.ran()
        assert_ip_refused(api, api.get(f"Bearer {key.secret}", source="127.0.0.5"), ran)

    def test_a_cidr_range_allows_addresses_inside_it(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "direct")
        key = restricted.create("192.0.2.0/24", "127.0.0.0/30")
        for inside in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            assert_allowed(api.get(f"Bearer {key.secret}", source=inside), key)
        ran = api.ran()
        for outside in ("127.0.0.4", "127.0.0.5", "127.1.0.2"):
            assert_ip_refused(api, api.get(f"Bearer {key.secret}", source=outside), ran)

    @needs_ipv6
    def test_ipv6_addresses_and_ranges(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "direct")
        for allowed in (["::1"], ["::/127"], ["0:0:0:0:0:0:0:1"], ["2001:db8::/32", "::1/128"]):
            key = restricted.create(*allowed)
            assert_allowed(api.get(f"Bearer {key.secret}", source="::1"), key)
        ran = api.ran()
        for other in (["2001:db8::/32"], ["::2"], ["127.0.0.1"]):
            refused = api.get(restricted.bearer(*other), source="::1")
            assert_ip_refused(api, refused, ran)

    def test_forwarding_headers_are_not_trusted_by_default(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        """A client that claims an allowed address in either header is still where it is."""
        api = api_servers.get(flavour, "direct")
        header = restricted.bearer("203.0.113.0/24", "2001:db8::/32")
        ran = api.ran()
        for claim in (
            [("X-Forwarded-For", "203.0.113.7")],
            [("Forwarded", "for=203.0.113.7")],
            [("Forwarded", 'for="[2001:db8::7]"'), ("X-Forwarded-For", "2001:db8::7")],
        ):
            assert_ip_refused(api, api.get(header, source="127.0.0.1", headers=claim), ran)

    def test_an_unrestricted_key_works_from_anywhere(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "direct")
        key = restricted.create()
        sources = ["127.0.0.1", "127.0.0.5"] + (["::1"] if IPV6 else [])
        for source in sources:
            assert_allowed(api.get(f"Bearer {key.secret}", source=source), key)


class TestBehindATrustedProxy:
    """With trusted_proxies, X-Forwarded-For counts only from a trusted peer, read from the
    right: the first hop that is not a trusted proxy is the client."""

    def test_the_address_the_proxy_forwards_for_is_the_client(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "x-forwarded-for")
        key = restricted.create("203.0.113.0/24")
        via_proxy = [("X-Forwarded-For", "203.0.113.7")]
        assert_allowed(api.get(f"Bearer {key.secret}", source=PROXY, headers=via_proxy), key)
        ran = api.ran()
        outside = [("X-Forwarded-For", "198.51.100.9")]
        assert_ip_refused(api, api.get(f"Bearer {key.secret}", PROXY, outside), ran)

    @needs_ipv6
    def test_ipv6_clients_behind_the_proxy(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "x-forwarded-for")
        key = restricted.create("2001:db8::/32")
        for hop in ("2001:db8::7", "[2001:db8::7]:4711"):
            reply = api.get(f"Bearer {key.secret}", PROXY, [("X-Forwarded-For", hop)])
            assert_allowed(reply, key)
        ran = api.ran()
        refused = api.get(f"Bearer {key.secret}", PROXY, [("X-Forwarded-For", "2001:db9::7")])
        assert_ip_refused(api, refused, ran)

    def test_the_same_header_from_an_untrusted_peer_is_not_trusted(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        """From 127.0.0.2, which is no proxy of ours, the header is the client's own claim."""
        api = api_servers.get(flavour, "x-forwarded-for")
        claim = [("X-Forwarded-For", "203.0.113.7")]
        ran = api.ran()
        assert_ip_refused(
            api, api.get(restricted.bearer("203.0.113.0/24"), "127.0.0.2", claim), ran
        )
        # The peer itself is the client.
        key = restricted.create("127.0.0.2")
        assert_allowed(api.get(f"Bearer {key.secret}", "127.0.0.2", claim), key)

    def test_a_spoofed_leftmost_value_never_wins(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        """The client sent X-Forwarded-For: 203.0.113.7; the proxy appended 198.51.100.9, the
        address the request really came from."""
        api = api_servers.get(flavour, "x-forwarded-for")
        ran = api.ran()
        spoofed = [("X-Forwarded-For", "203.0.113.7, 198.51.100.9")]
        header = restricted.bearer("203.0.113.0/24")
        assert_ip_refused(api, api.get(header, PROXY, spoofed), ran)
        as_two_fields = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.9")]
        assert_ip_refused(api, api.get(header, PROXY, as_two_fields), ran)
        key = restricted.create("198.51.100.9")
        assert_allowed(api.get(f"Bearer {key.secret}", PROXY, spoofed), key)

    def test_chains_of_trusted_proxies_are_skipped(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "x-forwarded-for")
        key = restricted.create("203.0.113.0/24")
        chain = [("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 127.0.0.1")]
        assert_allowed(api.get(f"Bearer {key.secret}", PROXY, chain), key)

    def test_a_hop_that_is_not_an_address_fails_closed(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        """`unknown` or garbage where the client should be is no address, never the proxy's:
        a key allowed the proxy's own range is refused too."""
        api = api_servers.get(flavour, "x-forwarded-for")
        header = restricted.bearer("127.0.0.0/8", "203.0.113.0/24")
        ran = api.ran()
        for hop in ("unknown", "_hidden", "203.0.113.7 garbage", "203.0.113.7, unknown", ""):
            refused = api.get(header, PROXY, [("X-Forwarded-For", hop)])
            assert_ip_refused(api, refused, ran)

    def test_the_forwarded_header_is_not_read_when_the_proxies_set_x_forwarded_for(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        """A proxy passes on the header it does not manage as the client sent it."""
        api = api_servers.get(flavour, "x-forwarded-for")
        ran = api.ran()
        claim = [("Forwarded", "for=203.0.113.7")]
        refused = api.get(restricted.bearer("203.0.113.0/24"), PROXY, claim)
        assert_ip_refused(api, refused, ran)


class TestBehindAProxySettingForwarded:
    """forwarded_header="forwarded": RFC 7239's for=, read from the right the same way."""

    @needs_ipv6
    def test_a_quoted_ipv6_node_with_a_port(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "forwarded")
        key = restricted.create("2001:db8::/32")
        forwarded = [("Forwarded", 'for="[2001:db8::7]:4711";proto=https;by=127.0.0.1')]
        assert_allowed(api.get(f"Bearer {key.secret}", PROXY, forwarded), key)

    def test_several_elements_are_read_from_the_right(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "forwarded")
        key = restricted.create("203.0.113.0/24")
        chain = [("Forwarded", "for=198.51.100.1, for=203.0.113.7"), ("Forwarded", "for=127.0.0.1")]
        assert_allowed(api.get(f"Bearer {key.secret}", PROXY, chain), key)
        ran = api.ran()
        spoofed = [("Forwarded", "for=203.0.113.7, for=198.51.100.9")]
        assert_ip_refused(api, api.get(f"Bearer {key.secret}", PROXY, spoofed), ran)
        for hidden in ("for=unknown", "for=_hidden", 'for="203.0.113.7'):
            assert_ip_refused(
                api, api.get(f"Bearer {key.secret}", PROXY, [("Forwarded", hidden)]), ran
            )
        # X-Forwarded-For is the header these proxies do not manage.
        xff = [("X-Forwarded-For", "203.0.113.7")]
        assert_ip_refused(api, api.get(f"Bearer {key.secret}", PROXY, xff), ran)
        # And from an untrusted peer, Forwarded is the client's own claim.
        claim = [("Forwarded", "for=203.0.113.7")]
        assert_ip_refused(api, api.get(f"Bearer {key.secret}", "127.0.0.2", claim), ran)


class TestExpiredKeys:
    def test_an_expired_key_is_401_with_an_invalid_token_challenge(
        self, api_servers: ApiServers, flavour: str, restricted: Restricted
    ) -> None:
        api = api_servers.get(flavour, "direct")
        key = restricted.create(expire_in=2.0)
        assert_allowed(api.get(f"Bearer {key.secret}"), key)
        wait_until_past(key.key.expire_time.ToDatetime(tzinfo=UTC))
        ran = api.ran()
        reply = api.get(f"Bearer {key.secret}")
        assert (reply.status, reply.reason) == (401, "expired"), reply.body
        assert reply.body["error"]["message"] == "the API key has expired"
        assert reply.headers["www-authenticate"] == (
            'Bearer realm="api", error="invalid_token", error_description="the API key has expired"'
        )
        assert api.ran() == ran


def wait_until_past(moment: datetime) -> None:
    remaining = (moment - datetime.now(UTC)).total_seconds()
    assert remaining < 30, "the key expires too late for this test"
    time.sleep(max(0.0, remaining) + 0.2)


# ----------------------------------------------------------------------------------------------
# gRPC: KeysvcInterceptor and AsyncKeysvcInterceptor, serving IPv4 and IPv6


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str | None
    value: str = ""


LIST = "/links.v1.Links/ListLinks"


def call(
    port: int, authorization: str, family: str = "ipv4", metadata: Sequence[tuple[str, str]] = ()
) -> Outcome:
    """ListLinks over IPv4 (from 127.0.0.1) or IPv6 (from ::1), with extra metadata."""
    target = f"127.0.0.1:{port}" if family == "ipv4" else f"[::1]:{port}"
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary(LIST, StringValue.SerializeToString, StringValue.FromString)
        try:
            reply = unary(
                StringValue(),
                metadata=(("authorization", authorization), *metadata),
                timeout=TIMEOUT,
            )
        except grpc.RpcError as err:
            failed: Any = err
            reasons = [v for k, v in failed.trailing_metadata() or () if k == "keysvc-reason"]
            return Outcome(failed.code(), reasons[0] if reasons else None)
    return Outcome(grpc.StatusCode.OK, None, reply.value)


@pytest.fixture(params=RUNNERS)
def grpc_api(
    request: pytest.FixtureRequest, server: ServerProcess
) -> Iterator[Callable[..., LinksServer]]:
    """grpc_api(**guard_options): a links server of the flavour on every address."""
    running: list[Iterator[LinksServer]] = []

    def start(**guard: Any) -> LinksServer:
        runner = RUNNERS[request.param](server.target, METHODS, listen=LISTEN_GRPC, **guard)
        running.append(runner)
        return next(runner)

    yield start
    for runner in running:
        next(runner, None)


def port_of(links: LinksServer) -> int:
    return int(links.target.rsplit(":", 1)[1])


IP_REFUSED = Outcome(grpc.StatusCode.PERMISSION_DENIED, "ip_not_allowed")


class TestGrpc:
    def test_the_peer_is_the_client(
        self, grpc_api: Callable[..., LinksServer], restricted: Restricted
    ) -> None:
        links = grpc_api()
        port = port_of(links)
        for allowed in (["127.0.0.1"], ["127.0.0.0/8"], ["10.0.0.0/8", "127.0.0.1/32"]):
            key = restricted.create(*allowed)
            outcome = call(port, key.secret)
            assert (outcome.code, outcome.value.split()[0]) == (grpc.StatusCode.OK, key.key.id)
        ran = list(links.ran)
        for other in (["127.0.0.2"], ["10.0.0.0/8"], ["::1"]):
            assert call(port, restricted.bearer(*other)) == IP_REFUSED
        assert links.ran == ran

    @needs_ipv6
    def test_ipv6_peers(self, grpc_api: Callable[..., LinksServer], restricted: Restricted) -> None:
        port = port_of(grpc_api())
        for allowed in (["::1"], ["::/127"]):
            key = restricted.create(*allowed)
            assert call(port, key.secret, "ipv6").code == grpc.StatusCode.OK
        for other in (["2001:db8::/32"], ["127.0.0.1"]):
            assert call(port, restricted.bearer(*other), "ipv6") == IP_REFUSED

    def test_forwarding_metadata_is_not_trusted_by_default(
        self, grpc_api: Callable[..., LinksServer], restricted: Restricted
    ) -> None:
        port = port_of(grpc_api())
        header = restricted.bearer("203.0.113.0/24")
        for metadata in ([("x-forwarded-for", "203.0.113.7")], [("forwarded", "for=203.0.113.7")]):
            assert call(port, header, metadata=metadata) == IP_REFUSED

    @needs_ipv6
    def test_behind_a_trusted_proxy(
        self, grpc_api: Callable[..., LinksServer], restricted: Restricted
    ) -> None:
        """The proxy (::1) is trusted and 127.0.0.1 is not: only the proxy's metadata counts."""
        links = grpc_api(trusted_proxies=[GRPC_PROXY])
        port = port_of(links)
        key = restricted.create("203.0.113.0/24")
        via_proxy = [("x-forwarded-for", "203.0.113.7")]
        assert call(port, key.secret, "ipv6", via_proxy).code == grpc.StatusCode.OK
        assert call(port, key.secret, "ipv4", via_proxy) == IP_REFUSED
        spoofed = [("x-forwarded-for", "203.0.113.7, 198.51.100.9")]
        assert call(port, key.secret, "ipv6", spoofed) == IP_REFUSED
        assert call(port, key.secret, "ipv6", [("x-forwarded-for", "unknown")]) == IP_REFUSED

    @needs_ipv6
    def test_behind_a_proxy_setting_forwarded(
        self, grpc_api: Callable[..., LinksServer], restricted: Restricted
    ) -> None:
        links = grpc_api(trusted_proxies=[GRPC_PROXY], forwarded_header="forwarded")
        port = port_of(links)
        key = restricted.create("2001:db8::/32")
        forwarded = [("forwarded", 'for="[2001:db8::7]:4711"')]
        assert call(port, key.secret, "ipv6", forwarded).code == grpc.StatusCode.OK
        xff = [("x-forwarded-for", "2001:db8::7")]
        assert call(port, key.secret, "ipv6", xff) == IP_REFUSED

    def test_an_expired_key_is_unauthenticated(
        self, grpc_api: Callable[..., LinksServer], restricted: Restricted
    ) -> None:
        port = port_of(grpc_api())
        key = restricted.create(expire_in=2.0)
        assert call(port, key.secret).code == grpc.StatusCode.OK
        wait_until_past(key.key.expire_time.ToDatetime(tzinfo=UTC))
        assert call(port, key.secret) == Outcome(grpc.StatusCode.UNAUTHENTICATED, "expired")


# ----------------------------------------------------------------------------------------------
# The Guard on its own


class TestTheGuardSendsTheAddress:
    """check() passes client_ip on; without one, a restricted key is refused."""

    def test_blocking_and_asyncio(self, server: ServerProcess, restricted: Restricted) -> None:
        header = restricted.bearer("198.51.100.0/24", "2001:db8::/32")
        with Guard(server.target, timeout=TIMEOUT) as guard:
            assert guard.check(header, client_ip="198.51.100.9").status == 200
            assert guard.check(header, client_ip="::ffff:198.51.100.9").status == 200
            assert guard.check(header, client_ip="2001:db8::9").status == 200
            for elsewhere in ("198.51.101.9", "2001:db9::9", None, "", "not an address"):
                verdict = guard.check(header, ["links:read"], client_ip=elsewhere)
                assert (verdict.status, verdict.reason) == (403, "ip_not_allowed"), elsewhere
            assert guard.check(header).reason == "ip_not_allowed"  # the old call: no address

        async def checks() -> list[int]:
            async with aio.Guard(server.target, timeout=TIMEOUT) as guard:
                return [
                    (await guard.check(header, client_ip=address)).status
                    for address in ("198.51.100.9", "2001:db8::9", "198.51.101.9", None)
                ]

        assert asyncio.run(checks()) == [200, 200, 403, 403]
