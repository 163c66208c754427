"""GitHub secret scanning over HTTP: GitHub POSTs the keysvc keys it finds in public places,
keysvc revokes the real ones as leaked and answers which were real.

    POST /github/secret-scanning
    Github-Public-Key-Identifier: <which of GitHub's keys signed>
    Github-Public-Key-Signature:  <base64 ECDSA P-256 / SHA-256 signature of the raw body>

    [{"token": "ck_live_…", "type": "keysvc_api_key", "url": "https://github.com/…",
      "source": "content"}, …]

    200 [{"token_hash": "<SHA-256 of the token, hex>", "token_type": "keysvc_api_key",
          "label": "true_positive" | "false_positive"}, …]        one per finding, in order

The signature is checked over the body exactly as received, before any of it is parsed.
Refusals are JSON `{"error": "<what is wrong>"}`. A 4xx revokes nothing: 400 a malformed
request, 403 a signature that does not verify or a key the GitHub keys file does not list,
413 a body or a list of findings beyond the limits. A 503 (a backend cannot answer now) may
come after some of the keys were revoked: GitHub sends the alert again, and a key revoked the
first time is a true positive the second. No token ever appears in a log line or a message:
real keys by their display prefix, anything else by its SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keysvc.access.github_signatures import (
    KEY_IDENTIFIER_HEADER,
    SIGNATURE_HEADER,
    GitHubPublicKeys,
    MalformedSignature,
    MissingSignature,
    SignatureError,
    UnknownKeyIdentifier,
)
from keysvc.core import keys, validation
from keysvc.core.errors import InvalidArgument, Unavailable
from keysvc.core.model import Actor, LeakedKey, LeakOutcome

log = logging.getLogger(__name__)

PATH = "/github/secret-scanning"
# Who the audit trail says revoked a key reported by GitHub.
ACTOR_NAME = "github-secret-scanning"
MAX_BODY_BYTES = 1024 * 1024
# Each real-looking token costs an argon2 check; a signed alert with more findings is refused
# rather than kept waiting past GitHub's timeout.
MAX_FINDINGS = 1000
# RevokeLeakedKeys calls in flight for one alert (each takes up to MAX_LEAKED_KEYS keys and
# waits out the revocation lease).
CONCURRENT_BATCHES = 8

TRUE_POSITIVE = "true_positive"
FALSE_POSITIVE = "false_positive"


class LeakRevoker(Protocol):
    """What this edge needs of the use cases (keysvc.usecases.admin.KeyAdmin)."""

    async def revoke_leaked_keys(
        self, raw_keys: Sequence[str], source: str, actor: Actor
    ) -> list[LeakedKey]: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """One secret GitHub found: the token as found, the type GitHub matched it as, where."""

    token: str = field(repr=False)
    type: str
    url: str = ""
    source: str = ""

    @property
    def token_hash(self) -> str:
        """The SHA-256 of the token in hex: what GitHub's feedback format and keysvc's logs
        name it by."""
        return hashlib.sha256(self.token.encode("utf-8")).hexdigest()

    @property
    def where(self) -> str:
        """Where it was found, as the audit trail records it: the URL, else GitHub's `source`
        (the URL may be empty)."""
        text = self.url or f"GitHub secret scanning ({self.source or 'no url'})"
        # RevokeLeakedKeys refuses control and invisible characters and over-long sources.
        text = "".join("?" if unicodedata.category(c).startswith("C") else c for c in text)
        return text.strip()[: validation.SOURCE_MAX] or "GitHub secret scanning"


class Refused(Exception):
    """A request answered with status `status` (4xx or 5xx) and `message`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def parse_findings(body: bytes, *, max_findings: int = MAX_FINDINGS) -> list[Finding]:
    """The findings of a (verified) body; Refused(400) naming what is wrong, or (413) too many."""
    try:
        document: Any = json.loads(body)
    except UnicodeDecodeError:
        raise Refused(400, "body: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        # The decoder's message gives a position, never the text.
        raise Refused(400, f"body: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(document, list):
        raise Refused(400, f"body: expected a JSON array of findings, got {_json_type(document)}")
    if len(document) > max_findings:
        raise Refused(
            413, f"body: at most {max_findings} findings per request, got {len(document)}"
        )
    return [_finding(item, f"body[{index}]") for index, item in enumerate(document)]


def _finding(item: Any, where: str) -> Finding:
    if not isinstance(item, dict):
        raise Refused(400, f"{where}: expected an object, got {_json_type(item)}")
    values: dict[str, str] = {}
    for name in ("token", "type", "url", "source"):
        value = item.get(name)
        if value is None and name in ("url", "source"):
            # GitHub documents that the url may be empty; older alerts have no source.
            value = ""
        if not isinstance(value, str):
            expected = "a string" if name in ("url", "source") else "required, a string"
            raise Refused(400, f"{where}.{name}: {expected}, got {_json_type(value)}")
        values[name] = value
    if not values["token"]:
        raise Refused(400, f"{where}.token: required, got an empty string")
    return Finding(**values)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes: from its
    Content-Length before anything is read, else once more than `limit` bytes arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"body: at most {limit} bytes, Content-Length says {declared}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body: at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def peer(request: Request) -> str:
    """The client's address as gRPC names peers in the audit trail ("ipv4:203.0.113.7:53122")."""
    client = request.client
    if client is None:
        return "unknown"
    host, port = client.host, client.port
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class SecretScanning:
    """The endpoint: verifies, parses, revokes in batches, answers GitHub's feedback format."""

    def __init__(
        self,
        revoker: LeakRevoker,
        public_keys: GitHubPublicKeys,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_findings: int = MAX_FINDINGS,
        batch_size: int = validation.MAX_LEAKED_KEYS,
    ) -> None:
        self._revoker = revoker
        self._public_keys = public_keys
        self._max_body_bytes = max_body_bytes
        self._max_findings = max_findings
        self._batch_size = batch_size

    async def handle(self, request: Request) -> Response:
        client = peer(request)
        try:
            body = await read_body(request, self._max_body_bytes)
            key_identifier = self._verify(request, body)
            findings = parse_findings(body, max_findings=self._max_findings)
            results = await self._revoke(findings, client)
        except Refused as refusal:
            log.warning(
                "github secret scanning: refused a request from %s: %d %s",
                client,
                refusal.status,
                refusal.message,
            )
            return JSONResponse({"error": refusal.message}, status_code=refusal.status)
        except ClientDisconnect:
            log.warning("github secret scanning: %s went away before sending its body", client)
            return Response(status_code=400)
        except Exception:
            # The traceback goes to the log (it holds no token: keysvc's messages never do);
            # GitHub learns nothing about internals, and sends the alert again.
            log.exception("github secret scanning: a request from %s failed", client)
            return JSONResponse({"error": "internal error"}, status_code=500)
        answer = [
            _feedback(finding, result) for finding, result in zip(findings, results, strict=True)
        ]
        counts = {label: sum(1 for a in answer if a["label"] == label) for label in _LABELS}
        log.info(
            "github secret scanning: alert from %s signed by key %s: %d findings, %d real keys"
            " (%d revoked now), %d false positives",
            client,
            key_identifier,
            len(findings),
            counts[TRUE_POSITIVE],
            sum(1 for r in results if r is not None and r.outcome is LeakOutcome.REVOKED),
            counts[FALSE_POSITIVE],
        )
        return JSONResponse(answer)

    def _verify(self, request: Request, body: bytes) -> str:
        try:
            return self._public_keys.verify(
                body,
                request.headers.get(KEY_IDENTIFIER_HEADER),
                request.headers.get(SIGNATURE_HEADER),
            )
        except (MissingSignature, MalformedSignature) as err:
            raise Refused(400, str(err)) from None
        except UnknownKeyIdentifier as err:
            raise Refused(
                403, f"{err} (not in keysvc's GitHub keys file: has GitHub rotated its keys?)"
            ) from None
        except SignatureError as err:
            raise Refused(403, str(err)) from None

    async def _revoke(self, findings: Sequence[Finding], client: str) -> list[LeakedKey | None]:
        """What RevokeLeakedKeys made of each finding that is a well-formed keysvc key (None
        for the others, which cannot be real), calling it per place found, in batches."""
        results: list[LeakedKey | None] = [None] * len(findings)
        by_source: dict[str, list[int]] = {}
        for index, finding in enumerate(findings):
            if keys.parse(keys.strip_bearer(finding.token)) is not None:
                by_source.setdefault(finding.where, []).append(index)
        actor = Actor(ACTOR_NAME, client)
        slots = asyncio.Semaphore(CONCURRENT_BATCHES)

        async def revoke(source: str, indices: list[int]) -> None:
            async with slots:
                leaked = await self._revoker.revoke_leaked_keys(
                    [findings[i].token for i in indices], source, actor
                )
            if len(leaked) != len(indices):
                raise RuntimeError(f"{len(indices)} keys sent, {len(leaked)} results")
            for i, result in zip(indices, leaked, strict=True):
                results[i] = result
                _log_result(findings[i], result, source)

        batches = [
            revoke(source, indices[start : start + self._batch_size])
            for source, indices in by_source.items()
            for start in range(0, len(indices), self._batch_size)
        ]
        # Every batch runs to its end before the answer: a failed one fails the request
        # (GitHub sends it again; what was revoked stays revoked, and counts as real).
        for outcome in await asyncio.gather(*batches, return_exceptions=True):
            if isinstance(outcome, Unavailable):
                raise Refused(503, f"{outcome}; retry later")
            if isinstance(outcome, InvalidArgument):
                raise Refused(400, str(outcome))
            if isinstance(outcome, BaseException):
                raise outcome
        return results


_LABELS = (TRUE_POSITIVE, FALSE_POSITIVE)


def _feedback(finding: Finding, result: LeakedKey | None) -> dict[str, str]:
    real = result is not None and result.outcome is not LeakOutcome.NOT_FOUND
    return {
        "token_hash": finding.token_hash,
        "token_type": finding.type,
        "label": TRUE_POSITIVE if real else FALSE_POSITIVE,
    }


def _log_result(finding: Finding, result: LeakedKey, source: str) -> None:
    if result.outcome is LeakOutcome.NOT_FOUND:
        log.info(
            "github secret scanning: %s… (sha256 %s) matches no key: false positive",
            result.prefix or "a token",
            finding.token_hash,
        )
        return
    # The use case itself warns of each key it revokes; this adds where GitHub found it.
    log.info(
        "github secret scanning: key %s (%s) of account %s %s, found at %s",
        result.key_id,
        result.prefix,
        result.account_id,
        "revoked as leaked" if result.outcome is LeakOutcome.REVOKED else "was already revoked",
        source,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no such endpoint: POST to {PATH}", 405: f"only POST is allowed on {PATH}"}
    return JSONResponse(
        {"error": message.get(exc.status_code, exc.detail)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def create_app(
    revoker: LeakRevoker,
    public_keys: GitHubPublicKeys,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_findings: int = MAX_FINDINGS,
    batch_size: int = validation.MAX_LEAKED_KEYS,
) -> Starlette:
    """The ASGI app serving GitHub secret scanning alerts on PATH, and nothing else."""
    endpoint = SecretScanning(
        revoker,
        public_keys,
        max_body_bytes=max_body_bytes,
        max_findings=max_findings,
        batch_size=batch_size,
    )
    return Starlette(
        routes=[Route(PATH, endpoint.handle, methods=["POST"])],
        exception_handlers={HTTPException: _http_error},
    )
