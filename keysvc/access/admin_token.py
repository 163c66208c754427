"""The zero-config admin token: generated at first start into the data directory, mode 0600."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TOKEN_PREFIX = "ksadm_"  # noqa: S105 (a label that makes leaked tokens recognisable)


class AdminTokenError(Exception):
    """The admin token file is missing, unreadable or too widely readable."""


def read(path: Path) -> str:
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
