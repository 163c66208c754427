"""FastAPI under real uvicorn: KeysvcRoute checks the key before FastAPI reads the body or runs
any dependency, across APIRouters included in one another; the forms that would check too late
are refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import fastapi
import pytest
from keysvc_client import Guard, aio
from keysvc_client.integrations import fastapi as keysvc_fastapi
from keysvc_client.integrations import starlette as keysvc_starlette

from tests.e2e.harness import ServerProcess

from . import servers
from .conftest import Keys
from .servers import SampleServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleServer]:
    with servers.asgi("fastapi_app", server.target, tmp_path_factory.mktemp("fastapi")) as app:
        yield app


class TestNothingRunsBeforeTheCheck:
    def test_a_dependency_does_not_run_for_a_request_without_a_key(self, app: SampleServer) -> None:
        """load_link would answer 404 for a missing link, and note that it ran: without a key
        the answer is 401 either way, and it never ran."""
        ran = app.ran()
        for link in ("missing", "plink_1"):
            answer = app.request("GET", f"/api/v1/links/{link}")
            assert (answer.status, answer.reason) == (401, "missing")
        assert app.ran() == ran

    def test_a_key_without_the_scope_learns_nothing_either(
        self, app: SampleServer, keys: Keys
    ) -> None:
        ran = app.ran()
        answer = app.request("GET", "/api/v1/links/missing", keys.bearer(["events:read"]))
        assert (answer.status, answer.reason) == (403, "insufficient_scope")
        assert app.ran() == ran

    @pytest.mark.parametrize(
        "body", [b"{not json", b'{"amount": "lots"}', b"[]"], ids=["not-json", "wrong", "list"]
    )
    def test_the_body_is_not_read_before_the_check(self, app: SampleServer, body: bytes) -> None:
        """A bad body gets 401, not 422 with the fields FastAPI expected."""
        ran = app.ran()
        answer = app.request("POST", "/api/v1/links/plink_1/refund", data=body)
        assert (answer.status, answer.reason) == (401, "missing")
        assert "detail" not in answer.body
        assert app.ran() == ran

    def test_with_the_key_fastapi_answers_as_usual(self, app: SampleServer, keys: Keys) -> None:
        """The dependency's 404 and the body's 422 are for callers whose key was allowed."""
        header = keys.bearer(["links:read", "links:write"])
        assert app.request("GET", "/api/v1/links/missing", header).status == 404
        invalid = app.request("POST", "/api/v1/links/plink_1/refund", header, data=b"{}")
        assert invalid.status == 422
        created = keys.new(["links:read", "links:write"])
        refunded = app.request(
            "POST", "/api/v1/links/plink_1/refund", created.secret, json_body={"amount": 5}
        )
        assert refunded.status == 200
        assert refunded.body == {"handler": "refund", "key_id": created.key.id, "amount": 5}


class TestRouterDependenciesAddUp:
    def test_the_router_and_the_route_each_add_their_scopes(
        self, app: SampleServer, keys: Keys
    ) -> None:
        """The links router needs links:read; its export route adds customers:read."""
        refused = app.request("GET", "/api/v1/links/export", keys.bearer(["customers:read"]))
        assert refused.body["error"]["missing_scopes"] == ["links:read"]
        refused = app.request("GET", "/api/v1/links/export", keys.bearer(["links:read"]))
        assert refused.body["error"]["missing_scopes"] == ["customers:read"]
        allowed = app.request(
            "GET", "/api/v1/links/export", keys.bearer(["links:read", "customers:read"])
        )
        assert (allowed.status, allowed.body["handler"]) == (200, "export_links")

    def test_the_endpoint_gets_the_key(self, app: SampleServer, keys: Keys) -> None:
        created = keys.new(["customers:write"])
        answer = app.request(
            "POST",
            "/api/v1/customers",
            created.secret,
            json_body={"name": "Ada", "email": "ada@example.com"},
        )
        assert (answer.status, answer.body["key_id"]) == (201, created.key.id)


class TestFormsThatWouldCheckTooLate:
    def test_requires_without_keysvc_route_refuses_every_request(
        self, app: SampleServer, keys: Keys
    ) -> None:
        """On a plain router requires() would run after the body and other dependencies: it
        refuses with 500 even a key holding the scope, and logs how to fix it."""
        ran = app.ran()
        answer = app.request("GET", "/api/v1/misrouted", keys.bearer(["links:read"]))
        assert answer.status == 500
        assert answer.body["detail"]["reason"] == "misconfigured"
        assert app.ran() == ran
        assert "give its router route_class=KeysvcRoute" in app.log()

    def test_a_keysvc_route_without_requires_fails_when_added(self) -> None:
        router = fastapi.APIRouter(route_class=keysvc_fastapi.KeysvcRoute)
        with pytest.raises(ValueError, match=r"GET /health declares no requires\(\)"):

            @router.get("/health")
            async def health() -> None: ...

    def test_two_guards_on_one_route_fail_when_added(self) -> None:
        first, second = aio.Guard("127.0.0.1:1"), aio.Guard("127.0.0.1:2")
        router = fastapi.APIRouter(
            route_class=keysvc_fastapi.KeysvcRoute,
            dependencies=[keysvc_fastapi.requires(first, "links:read")],
        )
        with pytest.raises(ValueError, match="different Guards"):

            @router.get("/links", dependencies=[keysvc_fastapi.requires(second)])
            async def links() -> None: ...

    def test_starlettes_decorator_on_a_fastapi_endpoint_fails_at_import(self) -> None:
        """The endpoint takes more than the request: FastAPI would fill it before the check."""
        guard = aio.Guard("127.0.0.1:1")
        with pytest.raises(TypeError, match=r"'link_id'.*integrations\.fastapi"):

            @keysvc_starlette.requires(guard, "links:read")
            async def get_link(request: fastapi.Request, link_id: str) -> None: ...

    def test_a_blocking_guard_is_refused(self) -> None:
        with pytest.raises(TypeError, match=r"aio\.Guard"):
            keysvc_fastapi.requires(Guard("127.0.0.1:1"), "links:read")  # type: ignore[arg-type]
