"""The client package stays free of the server's dependencies, and each framework is optional."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"


def imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    listing = "print(' '.join({m.split('.')[0] for m in sys.modules}))"
    script = f"{code}\nimport sys\n{listing}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


class TestDependencies:
    def test_the_guard_needs_no_framework_and_no_server_code(self) -> None:
        loaded = imported_after("import keysvc_client, keysvc_client.aio")
        frameworks = {"starlette", "fastapi", "flask"}
        assert not loaded & {"keysvc", "sqlalchemy", "redis", "argon2", *frameworks}

    def test_each_integration_imports_its_framework_only(self) -> None:
        grpc_only = imported_after("import keysvc_client.integrations.grpc")
        starlette = imported_after("import keysvc_client.integrations.starlette")
        fastapi = imported_after("import keysvc_client.integrations.fastapi")
        flask = imported_after("import keysvc_client.integrations.flask")
        assert not grpc_only & {"keysvc", "starlette", "fastapi", "flask"}
        assert "starlette" in starlette and not starlette & {"keysvc", "fastapi", "flask"}
        assert "fastapi" in fastapi and not fastapi & {"keysvc", "flask"}
        assert "flask" in flask and not flask & {"keysvc", "starlette", "fastapi"}

    def test_the_frameworks_are_optional_extras(self) -> None:
        project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
        assert [d.split(">")[0] for d in project["dependencies"]] == [
            "grpcio",
            "grpcio-health-checking",
            "protobuf",
        ]
        extras = project["optional-dependencies"]
        assert extras["starlette"][0].startswith("starlette")
        assert extras["fastapi"][0].startswith("fastapi")
        assert extras["flask"][0].startswith("flask")
