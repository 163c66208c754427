"""What only the Flask integration does: protect()'s safety net for views left unprotected or
decorated in the wrong order, view arguments, and mistakes refused at import.

The behaviour common to every integration (200, 401, 403, 503, revocation, modes) is in
test_http.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import pytest
from flask.testing import FlaskClient
from keysvc_client import Guard, aio
from keysvc_client.integrations.flask import authorized_key, protect, requires

from tests.e2e.harness import ServerProcess

from .conftest import TIMEOUT, Keys

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
