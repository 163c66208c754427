"""The dependency rule of docs/architecture.md, checked by import-linter with the contracts in
pyproject.toml: each layer imports only the layers below it, and the core, the ports and the
use cases import no transport and no storage library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
        """keysvc as it is keeps both contracts."""
        result = _lint(REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 kept, 0 broken" in result.stdout

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
