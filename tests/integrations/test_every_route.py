"""Every route of a sample app of each framework, as the framework itself lists them, is either
checked with exactly its declared scopes or unreachable (or public, outside the API).

"Exactly" means: no key is 401; a key lacking any one declared scope is 403; a key holding just
the declared scopes reaches the handler, which sees that key. "Unreachable" means a key holding
every scope there is is refused, and nothing of the app runs. A route the listing shows that the
sample does not declare fails the test, so a route added to a sample must be declared too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from starlette.routing import Mount, Route

from keysvc.core.scopes import CATALOGUE
from tests.e2e.harness import ServerProcess

from . import sample_apps, servers
from .conftest import Keys
from .sample_apps import PUBLIC, UNREACHABLE, Declared, Sample
from .test_grpc_interceptor import METHODS, RUNNERS, LinksServer, call

pytestmark = pytest.mark.slow

# What each POST route takes as a valid body (FastAPI validates it once the key is allowed).
BODIES: dict[str, Any] = {
    "/api/v1/links/{link_id}/refund": {"amount": 5},
    "/api/v1/customers": {"name": "Ada", "email": "ada@example.com"},
}


@dataclass(frozen=True)
class Outcome:
    """What one request came to: allowed (and with which key), or refused with which status,
    and whether anything of the app ran."""

    status: int  # HTTP status; for gRPC, the HTTP status of the refusal its code stands for
    ran: bool
    key_id: str | None = None


Send = Callable[[str, str, str | None], Outcome]


class KeyRing:
    """One key per set of scopes, made when first needed."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self._made: dict[frozenset[str], tuple[str, str]] = {}

    def holding(self, scopes: tuple[str, ...]) -> tuple[str, str]:
        """(key id, Authorization header) of a key with exactly `scopes` (a key needs one
        scope at least: with none, one that no route of the samples asks for alone)."""
        wanted = frozenset(scopes) or frozenset({"webhooks:read"})
        if wanted not in self._made:
            created = self._keys.new(sorted(wanted))
            self._made[wanted] = (created.key.id, f"Bearer {created.secret}")
        return self._made[wanted]


def hold_to(declared: Declared, send: Send, ring: KeyRing) -> None:
    """Checks every line of `declared`, collecting every route that breaks its line."""
    broken: list[str] = []
    for (method, template), expected in sorted(declared.items()):
        path = concrete(template)

        def expect(what: str, outcome: Outcome, ok: bool) -> None:
            if not ok:
                broken.append(f"{method} {template} {what}: {outcome}")  # noqa: B023

        if expected == PUBLIC:
            outcome = send(method, path, None)
            expect("is public", outcome, outcome.status == 200)
            continue
        if expected == UNREACHABLE:
            _, every_scope = ring.holding(tuple(CATALOGUE))
            for header in (None, every_scope):
                outcome = send(method, path, header)
                expect("is unreachable", outcome, outcome.status >= 400 and not outcome.ran)
            continue
        assert isinstance(expected, tuple)
        outcome = send(method, path, None)
        expect("without a key is 401", outcome, (outcome.status, outcome.ran) == (401, False))
        for scope in expected:
            lacking = tuple(s for s in expected if s != scope)
            outcome = send(method, path, ring.holding(lacking)[1])
            expect(
                f"without {scope} is 403", outcome, (outcome.status, outcome.ran) == (403, False)
            )
        key_id, header = ring.holding(expected)
        outcome = send(method, path, header)
        expect(
            f"with just {', '.join(expected) or 'any key'} runs with that key",
            outcome,
            outcome.status < 300 and outcome.ran and outcome.key_id == key_id,
        )
    assert not broken, "\n".join(broken)


def concrete(template: str) -> str:
    """A path that the template matches: each parameter filled with a value of its type."""
    filled = re.sub(r"\{(\w+):int\}|<int:(\w+)>", "1", template)
    return re.sub(r"\{\w+(:\w+)?\}|<(\w+:)?\w+>", "x1", filled)


def http_sender(served: servers.SampleServer) -> Send:
    def send(method: str, path: str, header: str | None) -> Outcome:
        before = len(served.ran())
        body: Any = next((v for t, v in BODIES.items() if concrete(t) == path), {})
        reply = served.request(method, path, header, json_body=body if method == "POST" else None)
        ran = len(served.ran()) > before
        key_id = reply.body.get("key_id") if isinstance(reply.body, dict) else None
        return Outcome(reply.status, ran, key_id)

    return send


# ----------------------------------------------------------------------------------------------
# Each framework's own listing of its routes


def starlette_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    yield method, prefix + route.path
        elif isinstance(route, Mount):
            # A mounted app with no routes to list is the sample's `opaque` part.
            yield from starlette_routes(route.routes, prefix + route.path)


def fastapi_routes(app: Any) -> Iterator[tuple[str, str]]:
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            yield method.upper(), path


def flask_routes(wsgi: Any) -> Iterator[tuple[str, str]]:
    for prefix, app in [("", wsgi.app), *wsgi.mounts.items()]:
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield method, prefix + rule.rule


def listed_and_declared(listed: Iterator[tuple[str, str]], sample: Sample) -> None:
    assert set(listed) == set(sample.declared), "the sample's routes and its DECLARED differ"


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, sample, listing",
    [
        (
            "starlette_table",
            sample_apps.STARLETTE_TABLE,
            lambda: starlette_routes(sample_apps.starlette_table().routes),
        ),
        (
            "starlette_decorated",
            sample_apps.STARLETTE_DECORATED,
            lambda: starlette_routes(sample_apps.starlette_decorated().routes),
        ),
        ("fastapi_app", sample_apps.FASTAPI, lambda: fastapi_routes(sample_apps.fastapi_app())),
    ],
    ids=["starlette-middleware", "starlette-decorator", "fastapi"],
)
def test_every_route_of_an_asgi_app(
    server: ServerProcess,
    tmp_path: Path,
    keys: Keys,
    factory: str,
    sample: Sample,
    listing: Callable[[], Iterator[tuple[str, str]]],
) -> None:
    listed_and_declared(listing(), sample)
    with servers.asgi(factory, server.target, tmp_path) as served:
        hold_to({**sample.declared, **sample.opaque}, http_sender(served), KeyRing(keys))


def test_every_route_of_a_flask_app_under_script_name(
    server: ServerProcess, tmp_path: Path, keys: Keys
) -> None:
    listed_and_declared(flask_routes(sample_apps.flask_app(serving=False)), sample_apps.FLASK)
    with servers.wsgi("flask", server.target, tmp_path) as served:
        hold_to(sample_apps.FLASK.declared, http_sender(served), KeyRing(keys))


GRPC_DECLARED: Declared = {
    ("RPC", "/links.v1.Links/ListLinks"): ("links:read",),
    ("RPC", "/links.v1.Links/CreateLink"): ("links:write",),
    ("RPC", "/links.v1.Links/WatchLinks"): ("links:read",),
    ("RPC", "/links.v1.Links/Forgotten"): UNREACHABLE,  # a method the table leaves out
    ("RPC", "/public.v1.Public/Ping"): PUBLIC,
}

_HTTP_OF = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 404,
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_every_method_of_a_grpc_server(server: ServerProcess, keys: Keys, runner: str) -> None:
    serving = RUNNERS[runner](server.target, METHODS)
    links: LinksServer = next(serving)
    try:
        assert {("RPC", method) for method in links.methods} == set(GRPC_DECLARED)

        def send(_: str, method: str, header: str | None) -> Outcome:
            before = len(links.ran)
            outcome = call(links.target, method, header)
            key_id = outcome.values[0].split()[0] if outcome.values else None
            status = _HTTP_OF.get(outcome.code, 500)
            return Outcome(status, len(links.ran) > before, key_id)

        hold_to(GRPC_DECLARED, send, KeyRing(keys))
    finally:
        next(serving, None)
