"""Sessions: who is signed in, in a signed cookie, and the CSRF token bound to it.

The cookie holds the user's name, a CSRF token, when the session began and a fingerprint of
the user's password hash, signed with the session key (itsdangerous, HMAC-SHA256; the key
is 256 random bits). It is HttpOnly, SameSite=Strict, Secure under
TLS, and good for 12 hours from sign-in, however busy the session. Removing a user, or giving
them a new password, ends their sessions at their next request. Signing out ends the session
in this process too, not only in the browser: a copy of the cookie is refused from then on
(the dashboard remembers ended sessions by their token until they would have expired).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

__all__ = [
    "COOKIE_NAME",
    "LIFETIME_SECONDS",
    "Session",
    "SessionKeyError",
    "Sessions",
    "read_or_create_key",
]

COOKIE_NAME = "keysvc_dashboard"
LIFETIME_SECONDS = 12 * 60 * 60
_SALT = "keysvc-dashboard-session"


class SessionKeyError(Exception):
    """The session key file cannot be read or created, or is readable by others."""


def read_or_create_key(path: Path) -> bytes:
    """The session key in `path`, generated there (mode 0600) the first time."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as err:
        raise SessionKeyError(f"cannot create session key file {path}: {err.strerror}") from None
    else:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
    try:
        mode = path.stat().st_mode
        key = path.read_text().strip()
    except OSError as err:
        raise SessionKeyError(f"cannot read session key file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SessionKeyError(
            f"session key file {path} is readable by others: run 'chmod 600 {path}'"
        )
    if len(key) < 32:
        raise SessionKeyError(f"session key file {path}: expected at least 32 characters")
    return key.encode()


def fingerprint(password_hash: str) -> str:
    """Changes when the password does; says nothing of it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    """A browser's session: `user` is None before sign-in (the sign-in form has a CSRF token
    too, so that nobody can sign a browser in as someone else)."""

    user: str | None
    csrf_token: str
    began: float
    password: str = ""

    def csrf_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token.encode(), token.encode())


class Sessions:
    """Signs sessions into cookie values and reads them back."""

    def __init__(
        self,
        key: bytes,
        *,
        secure: bool,
        lifetime: float = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._serializer = URLSafeTimedSerializer(
            key, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256}
        )
        self.secure = secure
        self.lifetime = lifetime
        # Sessions signed out, by CSRF token (random per session), with when they would end.
        self._ended: dict[str, float] = {}

    def new(self, user: str | None = None, password_hash: str = "") -> Session:
        password = fingerprint(password_hash) if user is not None else ""
        return Session(user, secrets.token_urlsafe(32), self._clock(), password)

    def dump(self, session: Session) -> str:
        payload = [session.user, session.csrf_token, session.began, session.password]
        return self._serializer.dumps(payload)

    def load(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None if there is none, it is forged or it is over."""
        if not cookie:
            return None
        try:
            payload = self._serializer.loads(cookie, max_age=int(self.lifetime))
        except BadSignature:
            return None
        if not isinstance(payload, list) or len(payload) != 4:
            return None
        user, csrf_token, began, password = payload
        if not (
            (user is None or isinstance(user, str))
            and isinstance(csrf_token, str)
            and isinstance(began, int | float)
            and isinstance(password, str)
        ):
            return None
        if self._clock() - began > self.lifetime or csrf_token in self._ended:
            return None
        return Session(user, csrf_token, float(began), password)

    def end(self, session: Session) -> None:
        """Refuses `session` from now on, whoever holds a copy of its cookie."""
        now = self._clock()
        self._ended = {token: end for token, end in self._ended.items() if end > now}
        self._ended[session.csrf_token] = session.began + self.lifetime

    def cookie_header(self, session: Session | None) -> str:
        """A Set-Cookie value carrying `session`, or clearing the cookie for None."""
        if session is None:
            value, max_age = "", 0
        else:
            value = self.dump(session)
            remaining = self.lifetime - (self._clock() - session.began)
            max_age = max(int(remaining), 0)
        parts = [
            f"{COOKIE_NAME}={value}",
            "Path=/",
            f"Max-Age={max_age}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)
