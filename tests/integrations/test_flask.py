"""What only the Flask integration does: protect()'s safety net for views left unprotected,
decorated in the wrong order or wrapped above requires(), blueprints under SCRIPT_NAME on a
real werkzeug server, each request's own key, view arguments, and mistakes refused at import.

The behaviour common to every integration (200, 401, 403, 503, revocation, modes) is in
test_http.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from flask.testing import FlaskClient
from keysvc_client import Guard, aio
from keysvc_client.integrations.flask import authorized_key, protect, requires

from tests.e2e.harness import ServerProcess

from . import servers
from .conftest import TIMEOUT, Keys
from .servers import SampleServer

pytestmark = pytest.mark.slow


@pytest.fixture
def guard(server: ServerProcess) -> Iterator[Guard]:
    with Guard(server.target, timeout=TIMEOUT) as guard:
        yield guard


@pytest.fixture
def ran() -> list[str]:
    """The views that ran."""
    return []


@pytest.fixture
def client(guard: Guard, ran: list[str]) -> FlaskClient:
    app = flask.Flask(__name__)
    protect(app)

    @app.get("/api/v1/links/<link_id>")
    @requires(guard, "links:read")
    def get_link(link_id: str) -> Any:
        ran.append("get_link")
        return {"link_id": link_id, "key_id": authorized_key().key_id}

    @app.get("/api/v1/forgotten")
    def forgotten() -> Any:
        ran.append("forgotten")
        return {"oops": True}

    @requires(guard, "links:write")  # above the route decorator: the bare view is registered
    @app.post("/api/v1/upside-down")
    def upside_down() -> Any:
        ran.append("upside_down")
        return {"oops": True}

    @app.get("/status")
    def status() -> Any:
        try:
            authorized_key()
        except LookupError:
            return {"key": None}
        return {"key": "checked"}

    return app.test_client()


class TestProtect:
    def test_a_view_nothing_protects_is_refused_with_500(
        self, client: FlaskClient, ran: list[str], keys: Keys, caplog: pytest.LogCaptureFixture
    ) -> None:
        response = client.get("/api/v1/forgotten", headers={"Authorization": keys.bearer()})
        assert response.status_code == 500
        assert response.get_json()["error"]["reason"] == "misconfigured"
        assert ran == []
        assert "no requires() protects it" in caplog.text

    def test_requires_above_the_route_decorator_is_refused_with_500(
        self, client: FlaskClient, ran: list[str], keys: Keys, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Flask registered the undecorated view: without protect() it would run for anyone."""
        response = client.post(
            "/api/v1/upside-down", headers={"Authorization": keys.bearer(["links:write"])}
        )
        assert response.status_code == 500
        assert ran == []
        assert "above the route decorator" in caplog.text

    def test_paths_outside_the_api_and_unknown_ones_are_flasks(self, client: FlaskClient) -> None:
        assert client.get("/status").get_json() == {"key": None}
        assert client.get("/api/v1/nothing-here").status_code == 404


class TestViews:
    def test_view_arguments_reach_the_view(self, client: FlaskClient, keys: Keys) -> None:
        created = keys.new(["links:read"])
        response = client.get("/api/v1/links/plink_9", headers={"Authorization": created.secret})
        assert response.get_json() == {"link_id": "plink_9", "key_id": created.key.id}

    def test_the_key_does_not_outlive_its_request(self, client: FlaskClient, keys: Keys) -> None:
        assert (
            client.get("/api/v1/links/x", headers={"Authorization": keys.bearer()}).status_code
            == 200
        )
        assert client.get("/status").get_json() == {"key": None}


class TestMistakesFailAtImport:
    def test_an_asyncio_guard(self) -> None:
        with pytest.raises(TypeError, match=r"keysvc_client\.Guard"):
            requires(aio.Guard("127.0.0.1:1"), "links:read")  # type: ignore[arg-type]

    def test_a_bad_scope(self) -> None:
        with pytest.raises(ValueError, match="not a scope"):
            requires(Guard("127.0.0.1:1"), "links")

    def test_a_prefix_that_is_not_a_path(self) -> None:
        with pytest.raises(ValueError, match="prefix"):
            protect(flask.Flask(__name__), prefix="api")


@pytest.fixture(scope="module")
def mounted(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SampleServer]:
    """The blueprint app mounted under /api by a dispatcher, on werkzeug with one thread and an
    app context pushed for the process's lifetime (see sample_apps.flask_app)."""
    with servers.wsgi("flask", server.target, tmp_path_factory.mktemp("flask")) as app:
        yield app


class TestUnderScriptName:
    """An app mounted under /api sees request.path without it: protect() still covers it."""

    def test_a_blueprint_view_is_checked(self, mounted: SampleServer, keys: Keys) -> None:
        assert mounted.request("GET", "/api/v1/links/plink_1").reason == "missing"
        created = keys.new(["links:read"])
        answer = mounted.request("GET", "/api/v1/links/plink_1", created.secret)
        assert answer.body == {"handler": "get_link", "key_id": created.key.id}

    def test_an_unguarded_blueprint_view_is_refused_with_500(
        self, mounted: SampleServer, keys: Keys
    ) -> None:
        ran = mounted.ran()
        answer = mounted.request("GET", "/api/v1/links/forgotten/x", keys.bearer())
        assert (answer.status, answer.reason) == (500, "misconfigured")
        assert mounted.ran() == ran
        assert "'/api/v1/links/forgotten/x' reaches view 'links.forgotten'" in mounted.log()


class TestTheFirstRequestNamesEveryUnguardedView:
    def test_each_mistake_is_logged_before_any_request_reaches_it(
        self, mounted: SampleServer
    ) -> None:
        """The app's first request, even a public one, logs every unguarded view and why."""
        assert mounted.request("GET", "/api/status").status == 200  # public, outside /api/v1/
        log = mounted.log()
        for view, problem in [
            ("links.forgotten", "no requires() protects it"),
            ("links.upside_down", "requires() is above the route decorator"),
            ("links.cached_link", "a decorator above requires()"),
        ]:
            assert re.search(
                rf"view '{view}' \(\S+\) is under '/api/v1/' but {re.escape(problem)}", log
            )
        assert "'links.get_link'" not in log


class TestWrappersAboveRequires:
    def test_a_response_cache_above_requires_is_refused(
        self, mounted: SampleServer, keys: Keys
    ) -> None:
        """functools.wraps copies requires()'s attributes to the cache's wrapper, which would
        serve the first key's answer to requests without one: protect() looks past them."""
        ran = mounted.ran()
        with_key = mounted.request("GET", "/api/v1/links/plink_7/cached", keys.bearer())
        without = mounted.request("GET", "/api/v1/links/plink_7/cached")
        assert (with_key.status, without.status) == (500, 500)
        assert mounted.ran() == ran
        assert "a decorator above requires() (response_cache.<locals>.serve) runs before" in (
            mounted.log()
        )


class TestNoRequestSeesAnothersKey:
    def test_authorized_key_is_this_requests_only(self, mounted: SampleServer, keys: Keys) -> None:
        """flask.g outlives requests in the app context the app keeps pushed: neither a public
        view after a checked request nor a refused request sees the earlier key."""
        created = keys.new(["links:read"])
        before = len(mounted.request("GET", "/api/_requests").body["keys"])
        assert mounted.request("GET", "/api/v1/links/plink_1", created.secret).status == 200
        public = mounted.request("GET", "/api/status")
        assert public.body == {"handler": "status", "key_id": None, "g": None}
        refused = mounted.request("GET", "/api/v1/links/plink_1", "Bearer ck_live_forged")
        assert refused.status == 401
        seen = mounted.request("GET", "/api/_requests").body["keys"][before:]
        assert seen == [created.key.id, None, None]


class TestLogging:
    def test_an_encoded_newline_cannot_forge_a_log_line(self, mounted: SampleServer) -> None:
        forged = "ERROR:keysvc_client.guard:keysvc allowed everything"
        path = "/api/v1/links/forgotten/x%0A" + forged.replace(" ", "%20")
        assert mounted.request("GET", path).status == 500
        log = mounted.log()
        assert "forgotten/x\\n" + forged in log
        assert not re.search("^" + re.escape(forged), log, re.MULTILINE)
