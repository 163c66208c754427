"""The zero-config admin token: generated at first start into the data directory, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# The file's location and how it is read belong to the client package, whose CLI reads it.
from keysvc_client.cli.admin_token import DEFAULT_DATA_DIR, FILE_NAME, AdminTokenError, read

__all__ = ["DEFAULT_DATA_DIR", "FILE_NAME", "AdminTokenError", "ensure", "read"]

TOKEN_PREFIX = "ksadm_"  # noqa: S105 (a label that makes leaked tokens recognisable)


def ensure(path: Path) -> tuple[str, bool]:
    """The token in `path`, generating it first if the file does not exist.

    Returns the token and whether it was generated now. O_EXCL makes two servers
    starting on one data directory agree on a single token.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read(path), False
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True
