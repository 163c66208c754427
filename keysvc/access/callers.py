"""Who may call keysvc: named callers, each an admin or an authorizer, and how each proves it.

    admin       every RPC (the dashboard, scripts, operators)
    authorizer  Authorize only (the platform's API servers)

A caller proves who it is with a bearer token, of which keysvc keeps only the
SHA-256, or with a client certificate under mutual TLS. The list is a TOML file:

    [[callers]]
    name = "dashboard"
    role = "admin"
    token_sha256 = "<64 hex digits>"      # from `keysvc callers new-token`

    [[callers]]
    name = "api-eu-1"
    role = "authorizer"
    client_identity = "api-eu-1"           # certificate common name or DNS name
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_PREFIX = "kst_"  # noqa: S105 (a label that makes leaked tokens recognisable)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}")


class Role(enum.Enum):
    ADMIN = "admin"
    AUTHORIZER = "authorizer"


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class _Entry:
    caller: Caller
    token_digest: bytes | None = field(default=None, repr=False)
    client_identity: str | None = None


class CallersError(Exception):
    """The callers file cannot be used; the message says where and why."""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Callers:
    """The configured callers, looked up by token or by client certificate identity."""

    def __init__(self, entries: Iterable[_Entry] = ()) -> None:
        self._entries = list(entries)

    def with_token(self, name: str, role: Role, token: str) -> Callers:
        """These callers plus one more holding `token` (kept as its digest only)."""
        entry = _Entry(Caller(name, role), token_digest=token_digest(token))
        return Callers([*self._entries, entry])

    def count(self, role: Role) -> int:
        return sum(1 for e in self._entries if e.caller.role is role)

    @property
    def has_admins(self) -> bool:
        return self.count(Role.ADMIN) > 0

    @property
    def has_authorizers(self) -> bool:
        return self.count(Role.AUTHORIZER) > 0

    @property
    def uses_client_certificates(self) -> bool:
        return any(e.client_identity is not None for e in self._entries)

    def by_token(self, token: str | None) -> Caller | None:
        if token is None:
            return None
        presented = token_digest(token)
        # Every digest is compared, so timing does not tell which one (if any) matched.
        found = None
        for entry in self._entries:
            if entry.token_digest is not None and hmac.compare_digest(
                presented, entry.token_digest
            ):
                found = entry.caller
        return found

    def by_client_identity(self, identities: Iterable[str]) -> Caller | None:
        """The caller whose client_identity is one of the certificate's names, if any."""
        names = set(identities)
        for entry in self._entries:
            if entry.client_identity is not None and entry.client_identity in names:
                return entry.caller
        return None

    @classmethod
    def load(cls, path: Path) -> Callers:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise CallersError(f"cannot read callers file {path}: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise CallersError(f"callers file {path} is not UTF-8 text: {err.reason}") from err
        except tomllib.TOMLDecodeError as err:
            raise CallersError(f"callers file {path} is not valid TOML: {err}") from err
        # A misspelt table ([[caller]]) would otherwise leave keysvc with no callers at all.
        unknown = set(document) - {"callers"}
        if unknown:
            raise CallersError(
                f"callers file {path}: unknown table(s) {', '.join(sorted(unknown))};"
                " each caller is a [[callers]] table"
            )
        items = document.get("callers", [])
        if not isinstance(items, list):
            raise CallersError(f"callers file {path}: each caller is a [[callers]] table")
        entries: list[_Entry] = []
        for number, item in enumerate(items, start=1):
            where = f"{path}: caller {number}"
            entry = _entry(item, where)
            _refuse_clash(entry, entries, where)
            entries.append(entry)
        return cls(entries)


def entry_toml(name: str, role: Role, token: str) -> str:
    """The callers-file table for a caller holding `token`: its digest, never the token."""
    if not _NAME.fullmatch(name):
        raise CallersError("name must be 1 to 100 letters, digits or _.:@-")
    return (
        "[[callers]]\n"
        f'name = "{name}"\n'
        f'role = "{role.value}"\n'
        f'token_sha256 = "{token_digest(token).hex()}"\n'
    )


def _refuse_clash(entry: _Entry, earlier: list[_Entry], where: str) -> None:
    """One name, token or certificate identity per caller: a shared one would make the
    caller (and so its role) depend on the order of the file."""
    name = entry.caller.name
    for other in earlier:
        if other.caller.name == name:
            raise CallersError(f"{where}: name {name!r} is used twice")
        if entry.token_digest is not None and entry.token_digest == other.token_digest:
            raise CallersError(
                f"{where} ({name}): token_sha256 is also {other.caller.name!r}'s;"
                " give each caller a token of its own"
            )
        if entry.client_identity is not None and entry.client_identity == other.client_identity:
            raise CallersError(
                f"{where} ({name}): client_identity {entry.client_identity!r} is also"
                f" {other.caller.name!r}'s"
            )


def _entry(item: object, where: str) -> _Entry:
    if not isinstance(item, dict):
        raise CallersError(f"{where}: expected a table with name, role and a credential")
    unknown = set(item) - {"name", "role", "token_sha256", "client_identity"}
    if unknown:
        raise CallersError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CallersError(f"{where}: name must be 1 to 100 letters, digits or _.:@-")
    try:
        role = Role(item.get("role"))
    except ValueError:
        raise CallersError(f"{where} ({name}): role must be 'admin' or 'authorizer'") from None
    token = item.get("token_sha256")
    identity = item.get("client_identity")
    if token is None and identity is None:
        raise CallersError(f"{where} ({name}): needs token_sha256 or client_identity, or both")
    if token is not None and (not isinstance(token, str) or not _SHA256_HEX.fullmatch(token)):
        raise CallersError(
            f"{where} ({name}): token_sha256 must be 64 lowercase hex digits"
            " (the SHA-256 of the token, never the token itself)"
        )
    if identity is not None and (not isinstance(identity, str) or not identity):
        raise CallersError(f"{where} ({name}): client_identity must be a non-empty string")
    return _Entry(
        Caller(name, role),
        token_digest=bytes.fromhex(token) if token else None,
        client_identity=identity,
    )
