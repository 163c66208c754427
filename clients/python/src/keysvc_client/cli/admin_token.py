"""The admin-token file a keysvc server generates into its data directory, as the CLI reads it.

The server writes `<data dir>/admin-token` with mode 0600 at first start (unless its callers
file names the admins); an operator on the server's host needs no other credential.
"""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["DEFAULT_DATA_DIR", "FILE_NAME", "AdminTokenError", "read"]

DEFAULT_DATA_DIR = ".keysvc"
"""The server's data directory unless --data-dir or $KEYSVC_DATA_DIR says otherwise."""

FILE_NAME = "admin-token"


class AdminTokenError(Exception):
    """The admin token file is missing, unreadable or too widely readable."""


def read(path: Path) -> str:
    """The token in `path`; refused when others may read the file, as ssh refuses a key."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as err:
        raise AdminTokenError(f"cannot read admin token file {path}: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminTokenError(
            f"admin token file {path} is readable by others: run 'chmod 600 {path}'"
        )
    if not token:
        raise AdminTokenError(f"admin token file {path} is empty")
    return token
