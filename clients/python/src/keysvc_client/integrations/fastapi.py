"""FastAPI: a route class that checks each request's key before FastAPI does anything with it.

    guard = keysvc_client.aio.Guard("127.0.0.1:50051")
    router = APIRouter(prefix="/api/v1", route_class=KeysvcRoute)

    @router.get("/links/{link_id}", dependencies=[requires(guard, "links:read")])
    async def get_link(link: Annotated[Link, Depends(load_link)]) -> Link: ...

    @router.post("/links", status_code=201)
    async def create_link(
        body: NewLink, key: Annotated[KeyContext, requires(guard, "links:write")]
    ) -> Link: ...

FastAPI reads the body and runs a route's dependencies before the endpoint, so a check made by
a dependency or a decorator comes after them. KeysvcRoute checks the key first, before the body
is read or any dependency runs; requires() declares what the route needs, and gives the
endpoint the key. A refused request gets the same JSON error body and status as with every
other integration (401, 403, or 503 when keysvc cannot decide).

Mistakes fail when the app is built: a KeysvcRoute route that declares no requires() (public
routes belong on another router), or routes declaring different Guards. A requires() that runs
on a route without KeysvcRoute refuses every request with 500 and logs why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from keysvc_client._aio_guard import Guard
from keysvc_client._guard_common import KeyContext, authorization_value, required_scopes
from keysvc_client.integrations.starlette import STATE_KEY, authorized_key, error_response

__all__ = ["STATE_KEY", "KeysvcRoute", "authorized_key", "requires"]

log = logging.getLogger("keysvc_client.guard")

# Where KeysvcRoute notes, in the request's own state, what it checked.
_CHECKED = "keysvc_checked"


@dataclass(frozen=True, slots=True)
class _Checked:
    guard: Guard
    scopes: frozenset[str]


class _Requirement:
    """The dependency requires() declares: it hands over the key KeysvcRoute checked."""

    def __init__(self, guard: Guard, scopes: tuple[str, ...]) -> None:
        self.guard = guard
        self.scopes = scopes

    async def __call__(self, request: Request) -> KeyContext:
        checked = request.scope.get("state", {}).get(_CHECKED)
        key = request.scope.get("state", {}).get(STATE_KEY)
        if (
            isinstance(checked, _Checked)
            and checked.guard is self.guard
            and checked.scopes >= set(self.scopes)
            and isinstance(key, KeyContext)
        ):
            return key
        # Without KeysvcRoute, FastAPI read the body and may have run other dependencies
        # already: the route is misconfigured, and nothing it does may depend on a key.
        log.error(
            "%r %r: requires(%s) ran on a route that is not a KeysvcRoute, after FastAPI read "
            "the body and ran other dependencies; give its router route_class=KeysvcRoute. "
            "Refusing with 500",
            request.method,
            request.url.path,
            ", ".join(self.scopes) or "any valid key",
        )
        raise HTTPException(
            500,
            {
                "status": 500,
                "reason": "misconfigured",
                "message": "the API key could not be checked",
            },
            headers={"Cache-Control": "no-store"},
        )


def requires(guard: Guard, *scopes: str) -> params.Depends:
    """Declares that a route runs only for a key holding every one of `scopes` (none: any valid
    key), as a FastAPI dependency whose value is the key's KeyContext.

    Use it in `dependencies=[...]` of the route or of its APIRouter, or as a parameter
    (`key: Annotated[KeyContext, requires(guard, "links:read")]`), on routes of a router with
    `route_class=KeysvcRoute`. Several on one route add up: the key needs all their scopes.
    """
    if not isinstance(guard, Guard):
        raise TypeError(
            f"FastAPI needs a keysvc_client.aio.Guard, not {type(guard).__name__}: "
            "a blocking Guard would stall the event loop"
        )
    depends: params.Depends = Depends(_Requirement(guard, required_scopes(scopes)))
    return depends


class KeysvcRoute(APIRoute):
    """A route class that checks the key its requires() declare before FastAPI reads the body
    or runs any dependency, and refuses the request when keysvc does not allow it.

    Set it on every router that serves the API: `APIRouter(route_class=KeysvcRoute)`. Each of
    its routes must declare requires(); a route without one fails when it is added.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        guard, scopes = _declared(self)

        async def checked(request: Request) -> Response:
            values = request.headers.getlist("authorization")
            verdict = await guard.check(
                authorization_value(values),
                scopes,
                client_ip=guard.trusted_proxies.asgi_client(request.scope),
            )
            if not verdict.allowed:
                return error_response(verdict, guard.realm)
            # A dict of this request's own: the key must never reach another request's state.
            request.scope["state"] = {
                **request.scope.get("state", {}),
                STATE_KEY: verdict.key,
                _CHECKED: _Checked(guard, frozenset(scopes)),
            }
            return await handle(request)

        return checked


def _declared(route: APIRoute) -> tuple[Guard, tuple[str, ...]]:
    """The Guard and every scope the route's requires() ask for, wherever they are declared."""
    requirements = list(_requirements(route.dependant))
    where = f"{', '.join(sorted(route.methods or ()))} {route.path}"
    if not requirements:
        raise ValueError(
            f"{where} declares no requires(): every route of a KeysvcRoute router is checked "
            "(put public routes on a router of their own)"
        )
    guards = {id(requirement.guard) for requirement in requirements}
    if len(guards) > 1:
        raise ValueError(f"{where} declares requires() with different Guards: use one")
    scopes: dict[str, None] = {}
    for requirement in requirements:
        scopes.update(dict.fromkeys(requirement.scopes))
    return requirements[0].guard, tuple(scopes)


def _requirements(dependant: Dependant) -> Iterator[_Requirement]:
    if isinstance(dependant.call, _Requirement):
        yield dependant.call
    for dependency in dependant.dependencies:
        yield from _requirements(dependency)
