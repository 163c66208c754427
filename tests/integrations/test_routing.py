"""KeysvcMiddleware checks the route Starlette will run, under real uvicorn: overlapping table
lines, routes the table leaves out, mounted apps, `uvicorn --root-path`, and an app mounted in
another; a table that does not match the app stops it from starting.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fastapi
import pytest
from keysvc_client import aio
from keysvc_client.integrations.starlette import KeysvcMiddleware
from starlette.applications import Starlette
from starlette.routing import Route

from tests.e2e.harness import ServerProcess

from . import servers
from .conftest import TIMEOUT, Keys
from .servers import SampleServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table_app(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SampleServer]:
    with servers.asgi("starlette_table", server.target, tmp_path_factory.mktemp("asgi")) as app:
        yield app


class TestTheRouteStarletteRuns:
    def test_an_earlier_line_cannot_weaken_a_route(
        self, table_app: SampleServer, keys: Keys
    ) -> None:
        """GET /links/export needs links:read and customers:read even though the
        /links/{link_id} line, which also matches its path, needs links:read only."""
        ran = table_app.ran()
        read_only = keys.bearer(["links:read"])
        refused = table_app.request("GET", "/api/v1/links/export", read_only)
        assert (refused.status, refused.reason) == (403, "insufficient_scope")
        assert refused.body["error"]["missing_scopes"] == ["customers:read"]
        assert table_app.ran() == ran
        allowed = table_app.request(
            "GET", "/api/v1/links/export", keys.bearer(["links:read", "customers:read"])
        )
        assert (allowed.status, allowed.body["handler"]) == (200, "export_links")

    def test_a_route_the_table_leaves_out_is_unreachable(
        self, table_app: SampleServer, keys: Keys
    ) -> None:
        """POST /links/refund_all is in the app and not in the table: no key reaches it, not
        even one holding the links:write that the /links/{link_id} pattern declares."""
        ran = table_app.ran()
        for header in (None, keys.bearer(["links:write"])):
            answer = table_app.request("POST", "/api/v1/links/refund_all", header)
            assert (answer.status, answer.reason) == (404, "not_found")
        assert table_app.ran() == ran

    def test_a_route_in_a_mount_is_checked_with_its_line(
        self, table_app: SampleServer, keys: Keys
    ) -> None:
        assert table_app.request("GET", "/api/v2/customers/cus_1").reason == "missing"
        answer = table_app.request(
            "GET", "/api/v2/customers/cus_1", keys.bearer(["customers:read"])
        )
        assert (answer.status, answer.body["handler"]) == (200, "get_customer")

    def test_a_mounted_app_without_routes_is_held_to_the_lines_matching_its_paths(
        self, table_app: SampleServer, keys: Keys
    ) -> None:
        """A raw ASGI app shows no routes: its declared path is checked, the rest is 404."""
        ran = table_app.ran()
        assert table_app.request("GET", "/api/raw/status").reason == "missing"
        assert (
            table_app.request("GET", "/api/raw/other", keys.bearer(["events:read"])).status == 404
        )
        assert table_app.ran() == ran
        answer = table_app.request("GET", "/api/raw/status", keys.bearer(["events:read"]))
        assert (answer.status, answer.body["handler"]) == (200, "raw /status")


class TestRootPath:
    """The table names the app's own routes; the root path it is served under is not part of
    them, and a request under it is never handed to the app unchecked."""

    @pytest.mark.parametrize(
        "factory, uvicorn_args, base",
        [
            ("starlette_table", ["--root-path", "/svc"], ""),  # a proxy strips /svc
            ("starlette_mounted", [], "/svc"),  # Mount("/svc", app=...) in another app
        ],
        ids=["uvicorn --root-path", "mounted"],
    )
    def test_declared_routes_are_checked_and_others_unreachable(
        self,
        server: ServerProcess,
        tmp_path: Path,
        keys: Keys,
        factory: str,
        uvicorn_args: list[str],
        base: str,
    ) -> None:
        with servers.asgi(factory, server.target, tmp_path, *uvicorn_args) as app:
            missing = app.request("GET", f"{base}/api/v1/links/plink_1")
            assert (missing.status, missing.reason) == (401, "missing")
            assert app.request("POST", f"{base}/api/v1/links/refund_all").status == 404
            assert app.request("GET", f"{base}/api/v1/forgotten").status == 404
            # A mounted app whose routes cannot be seen is held to the table's lines too.
            assert app.request("GET", f"{base}/api/raw/status").reason == "missing"
            assert app.request("GET", f"{base}/api/raw/other").status == 404
            assert app.ran() == []
            allowed = app.request("GET", f"{base}/api/v1/links/plink_1", keys.bearer())
            assert (allowed.status, allowed.body["handler"]) == (200, "get_link")
            assert app.ran() == ["get_link"]


class TestLogging:
    def test_an_encoded_newline_cannot_forge_a_log_line(self, table_app: SampleServer) -> None:
        """The refused path is logged, escaped: %0A does not start a line of its own."""
        forged = "ERROR:keysvc_client.guard:keysvc allowed everything"
        answer = table_app.request("GET", "/api/v1/x%0A" + forged.replace(" ", "%20"))
        assert answer.status == 404
        log = table_app.log()
        assert "/api/v1/x\\n" + forged in log  # the refusal is there, on one line
        assert not re.search("^" + re.escape(forged), log, re.MULTILINE)


class TestMistakesStopTheApp:
    def test_a_line_naming_no_route_fails_when_the_app_is_built(self) -> None:
        async def endpoint(request: object) -> None: ...

        app = Starlette(routes=[Route("/api/v1/links", endpoint)])
        guard = aio.Guard("127.0.0.1:1", timeout=TIMEOUT)
        with pytest.raises(ValueError, match=r"GET /api/v1/link/\{link_id\} names no route"):
            KeysvcMiddleware(app, guard=guard, routes={"GET /api/v1/link/{link_id}": "links:read"})
        with pytest.raises(ValueError, match="the route serves only GET, HEAD"):
            KeysvcMiddleware(app, guard=guard, routes={"POST /api/v1/links": "links:write"})

    def test_a_fastapi_app_is_refused(self) -> None:
        """FastAPI routes requests its own way: it takes keysvc_client.integrations.fastapi."""
        app = fastapi.FastAPI()
        app.add_middleware(
            KeysvcMiddleware, guard=aio.Guard("127.0.0.1:1"), routes={"GET /api/v1/links": []}
        )
        with pytest.raises(TypeError, match=r"integrations\.fastapi"):
            app.build_middleware_stack()

    def test_uvicorn_does_not_start_an_app_whose_table_does_not_match(self, tmp_path: Path) -> None:
        """With --lifespan on, the mistake ends the start with the reason, before any request."""
        module = tmp_path / "mismatched.py"
        module.write_text(
            "from keysvc_client import aio\n"
            "from keysvc_client.integrations.starlette import KeysvcMiddleware\n"
            "from starlette.applications import Starlette\n"
            "from starlette.middleware import Middleware\n"
            "from starlette.routing import Route\n"
            "async def links(request): ...\n"
            "app = Starlette(routes=[Route('/api/v1/links', links)], middleware=[Middleware(\n"
            "    KeysvcMiddleware, guard=aio.Guard('127.0.0.1:1'),\n"
            "    routes={'GET /api/v1/lnks': 'links:read'})])\n"
        )
        started = subprocess.run(
            [sys.executable, "-m", "uvicorn", "mismatched:app", "--port", "0", "--lifespan", "on"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode != 0
        assert "GET /api/v1/lnks names no route of the app" in started.stderr
