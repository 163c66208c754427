"""The dependency rule of docs/architecture.md, checked by import-linter with the contracts in
pyproject.toml: each layer imports only the layers below it, the core, the ports and the
use cases import no transport and no storage library, and the dashboard reaches keysvc only
through keysvc_client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the keysvc package under `root`, with `root`'s pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestLayers:
    def test_keysvc_keeps_every_contract(self) -> None:
        """keysvc as it is keeps all three contracts."""
        result = _lint(REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 kept, 0 broken" in result.stdout

    def test_a_layer_reaching_up_is_caught(self, tmp_path: Path) -> None:
        """A copy of keysvc whose key format imports the runtime's settings breaks the layers
        contract, and the check says so."""
        shutil.copytree(REPO / "keysvc", tmp_path / "keysvc")
        shutil.copy(REPO / "pyproject.toml", tmp_path)
        keys = tmp_path / "keysvc" / "core" / "keys.py"
        keys.write_text(keys.read_text() + "\nfrom keysvc.runtime import config  # noqa\n")

        result = _lint(tmp_path)

        assert result.returncode != 0
        assert "keysvc.core.keys -> keysvc.runtime.config" in result.stdout

    def test_a_use_case_reaching_for_storage_is_caught(self, tmp_path: Path) -> None:
        """A copy of keysvc whose Authorize imports SQLAlchemy breaks the second contract."""
        shutil.copytree(REPO / "keysvc", tmp_path / "keysvc")
        shutil.copy(REPO / "pyproject.toml", tmp_path)
        authorize = tmp_path / "keysvc" / "usecases" / "authorize.py"
        authorize.write_text(authorize.read_text() + "\nimport sqlalchemy  # noqa\n")

        result = _lint(tmp_path)

        assert result.returncode != 0
        assert "keysvc.usecases.authorize -> sqlalchemy" in result.stdout


class TestDashboard:
    def test_every_other_part_of_keysvc_is_forbidden_to_it(self) -> None:
        """The dashboard's contract names every subpackage of keysvc but the dashboard: a new
        one must be added to it (or the dashboard could import it unchecked)."""
        config = tomllib.loads((REPO / "pyproject.toml").read_text())
        [contract] = [
            c
            for c in config["tool"]["importlinter"]["contracts"]
            if c.get("source_modules") == ["keysvc.dashboard"]
        ]
        subpackages = {
            f"keysvc.{path.parent.name}"
            for path in (REPO / "keysvc").glob("*/__init__.py")
            if path.parent.name != "dashboard"
        }
        assert subpackages <= set(contract["forbidden_modules"])

    def test_the_dashboard_reaching_past_the_client_is_caught(self, tmp_path: Path) -> None:
        """A copy of keysvc whose dashboard imports the server's scope catalogue, instead of
        asking keysvc's ListScopes, breaks the dashboard's contract."""
        shutil.copytree(REPO / "keysvc", tmp_path / "keysvc")
        shutil.copy(REPO / "pyproject.toml", tmp_path)
        pages = tmp_path / "keysvc" / "dashboard" / "pages.py"
        pages.write_text(pages.read_text() + "\nfrom keysvc.core import scopes  # noqa\n")

        result = _lint(tmp_path)

        assert result.returncode != 0
        assert "keysvc.dashboard.pages -> keysvc.core.scopes" in result.stdout
