"""The users file: who may sign in to the dashboard, with which password, seeing which accounts.

A TOML file, mode 0600, managed by `keysvc dashboard users add|list|remove`:

    [users."alice"]
    password_hash = "$argon2id$v=19$m=65536,t=3,p=4$..."
    accounts = ["acct_123", "acct_456"]

    [users."ops"]
    password_hash = "$argon2id$..."
    all_accounts = true
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "ACCOUNT_PATTERN",
    "NAME_PATTERN",
    "User",
    "UsersFile",
    "UsersFileError",
    "hash_password",
    "load",
    "save",
    "verify_password",
]

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# keysvc's own rule for account ids (keysvc.core.validation), repeated here: the dashboard
# knows keysvc only through its client.
ACCOUNT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

# argon2-cffi's defaults (RFC 9106's low-memory profile): a sign-in is rare, so it may cost.
_HASHER = PasswordHasher()


class UsersFileError(Exception):
    """The users file cannot be read, is not valid, or is readable by others."""


@dataclass(frozen=True)
class User:
    """One person who may sign in: the accounts they may open, or all of them."""

    name: str
    password_hash: str
    accounts: tuple[str, ...] = ()
    all_accounts: bool = False

    def may_open(self, account: str) -> bool:
        return self.all_accounts or account in self.accounts


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"user name {name!r}: 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_account(account: str) -> str:
    if not ACCOUNT_PATTERN.fullmatch(account):
        raise ValueError(
            f"account {account!r}: 1 to 64 letters, digits, '_', '-', '.' or ':', starting"
            " with a letter or digit"
        )
    return account


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _user(name: str, entry: object) -> User:
    if not isinstance(entry, dict):
        raise UsersFileError(f"users.{name}: expected a table")
    check_name(name)
    password_hash = entry.get("password_hash")
    if not isinstance(password_hash, str) or not password_hash.startswith("$argon2"):
        raise UsersFileError(f"users.{name}.password_hash: expected an argon2 hash")
    all_accounts = entry.get("all_accounts", False)
    accounts = entry.get("accounts", [])
    if not isinstance(all_accounts, bool):
        raise UsersFileError(f"users.{name}.all_accounts: expected true or false")
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise UsersFileError(f"users.{name}.accounts: expected a list of account ids")
    for account in accounts:
        check_account(account)
    unknown = sorted(set(entry) - {"password_hash", "accounts", "all_accounts"})
    if unknown:
        raise UsersFileError(f"users.{name}: unknown setting {unknown[0]!r}")
    return User(name, password_hash, tuple(accounts), all_accounts)


def parse(text: str, where: str = "users file") -> dict[str, User]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsersFileError(f"{where}: not valid TOML: {err}") from None
    table = document.get("users", {})
    if not isinstance(table, dict) or set(document) - {"users"}:
        raise UsersFileError(f"{where}: expected only [users.NAME] tables")
    try:
        return {name: _user(name, entry) for name, entry in table.items()}
    except ValueError as err:
        raise UsersFileError(f"{where}: {err}") from None


def load(path: Path) -> dict[str, User]:
    """The users in `path`; refused when others may read it, as ssh refuses a key. A missing
    file is refused too: callers that create one (`users add`) check first."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsersFileError(f"cannot read users file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UsersFileError(f"users file {path}: not UTF-8") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsersFileError(f"users file {path} is readable by others: run 'chmod 600 {path}'")
    return parse(text, str(path))


def _toml_string(value: str) -> str:
    """`value` as a TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render(users: Iterable[User]) -> str:
    lines = [
        "# Users of the keysvc dashboard. Managed with `keysvc dashboard users add|remove`.",
        "",
    ]
    for user in sorted(users, key=lambda u: u.name):
        lines.append(f"[users.{_toml_string(user.name)}]")
        lines.append(f"password_hash = {_toml_string(user.password_hash)}")
        if user.all_accounts:
            lines.append("all_accounts = true")
        else:
            accounts = ", ".join(_toml_string(a) for a in user.accounts)
            lines.append(f"accounts = [{accounts}]")
        lines.append("")
    return "\n".join(lines)


def save(path: Path, users: Mapping[str, User]) -> None:
    """Writes the users to `path`, mode 0600, replacing it whole: a reader (the running
    dashboard) sees the old file or the new one, never half of one."""
    text = render(users.values())
    # What is written must read back as what was meant.
    if parse(text) != dict(users):
        raise UsersFileError("internal error: the users file would not read back as written")
    directory = path.parent if str(path.parent) else Path(".")
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class UsersFile:
    """The users file as the running dashboard sees it: read again whenever it changes, so
    that `users add` and `users remove` hold without a restart. A file that becomes
    unreadable or invalid lets nobody in until it is fixed (fail closed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._users: dict[str, User] = load(path)
        self._signature = self._stat()
        # Verified for names nobody has, so that a wrong name costs what a wrong password does.
        self._dummy_hash = hash_password(secrets.token_urlsafe(16))

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def users(self) -> dict[str, User]:
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            try:
                self._users = load(self.path)
            except UsersFileError as err:
                log.error("%s; nobody can sign in until it is fixed", err)
                self._users = {}
            else:
                log.info("users file %s read again: %d users", self.path, len(self._users))
        return self._users

    def get(self, name: str) -> User | None:
        return self.users().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if `password` is theirs; None otherwise, at about the same cost whether
        or not the name exists."""
        user = self.get(name)
        if user is None:
            verify_password(self._dummy_hash, password)
            return None
        return user if verify_password(user.password_hash, password) else None
