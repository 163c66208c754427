"""GitHub's side of secret scanning, for the tests: a signing key pair made at test time, the
keys file that lists it (as api.github.com/meta/public_keys/secret_scanning would), and
alerts signed the way GitHub signs them (ECDSA P-256 / SHA-256 over the raw body, base64 DER).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# What GitHub would call keysvc's secret type (the name a partner registers).
TOKEN_TYPE = "keysvc_api_key"
URL = "https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt"

# GitHub's own sample from its partner program documentation: a body, the identifier of the
# key that signed it and the signature, and that key as GitHub publishes it.
DOCUMENTED_KEY_IDENTIFIER = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"
DOCUMENTED_KEY = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\n"
    "AjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n"
    "-----END PUBLIC KEY-----\n"
)
DOCUMENTED_BODY = (
    b'[{"source":"commit","token":"some_token","type":"some_type",'
    b'"url":"https://example.com/base-repo-url/"}]'
)
DOCUMENTED_SIGNATURE = (
    "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9f"
    "ErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg=="
)


@dataclass(frozen=True)
class GitHubSigner:
    """One of GitHub's signing keys, made at test time."""

    private_key: ec.EllipticCurvePrivateKey
    key_identifier: str

    @classmethod
    def new(cls) -> GitHubSigner:
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # GitHub's identifiers are 64 hex digits too.
        return cls(private_key=key, key_identifier=hashlib.sha256(der).hexdigest())

    @property
    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def sign(self, body: bytes) -> str:
        """The Github-Public-Key-Signature of `body`."""
        return base64.b64encode(self.private_key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()

    def headers(self, body: bytes, *, key_identifier: str | None = None) -> dict[str, str]:
        """The headers GitHub sends with `body`; `key_identifier` claims another key."""
        return {
            "Content-Type": "application/json",
            "Github-Public-Key-Identifier": key_identifier or self.key_identifier,
            "Github-Public-Key-Signature": self.sign(body),
        }


def keys_document(*signers: GitHubSigner, current: GitHubSigner | None = None) -> str:
    """The public keys of `signers` as GitHub's endpoint lists them."""
    entries: list[dict[str, Any]] = [
        {
            "key_identifier": signer.key_identifier,
            "key": signer.public_key_pem,
            "is_current": signer is (current or signers[-1]),
        }
        for signer in signers
    ]
    return json.dumps({"public_keys": entries}, indent=2)


def finding(token: str, *, url: str = URL, source: str = "content") -> dict[str, str]:
    return {"token": token, "type": TOKEN_TYPE, "url": url, "source": source}


def alert(*findings: dict[str, str]) -> bytes:
    """A body as GitHub sends it: compact JSON, as the signature will cover it."""
    return json.dumps(list(findings), separators=(",", ":")).encode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def feedback(token: str, label: str) -> dict[str, str]:
    """GitHub's feedback format for one finding."""
    return {"token_hash": token_hash(token), "token_type": TOKEN_TYPE, "label": label}
