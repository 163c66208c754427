"""Is a secret scanning alert really from GitHub: its ECDSA P-256 / SHA-256 signature over the
raw body, checked against GitHub's published public keys.

GitHub signs each alert with one of the keys listed at
https://api.github.com/meta/public_keys/secret_scanning, names the key in the
`Github-Public-Key-Identifier` header and sends the base64 DER signature in
`Github-Public-Key-Signature`. keysvc reads that list from a file (it does not reach out to
GitHub at run time):

    {"public_keys": [{"key_identifier": "bcb5…", "key": "-----BEGIN PUBLIC KEY-----…",
                      "is_current": true}]}

    SignatureError          the alert is not proven to come from GitHub
    ├── MissingSignature    a header is absent or empty
    ├── MalformedSignature  the signature is not base64
    ├── UnknownKeyIdentifier  no key of the file has that identifier
    └── BadSignature        the signature does not verify the body with that key
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEY_IDENTIFIER_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"

# Longer than any DER P-256 signature in base64 (at most 72 bytes, 96 characters): a bound on
# what is decoded, and on an identifier quoted in a message.
_SIGNATURE_MAX = 256
_IDENTIFIER_MAX = 128


class SignatureError(Exception):
    """The alert is not proven to come from GitHub; the message says why (never the body)."""


class MissingSignature(SignatureError):
    """A signature header is missing or empty."""


class MalformedSignature(SignatureError):
    """The signature header is not base64 of a plausible signature."""


class UnknownKeyIdentifier(SignatureError):
    """No public key in the keys file has this identifier (GitHub may have rotated its keys:
    refresh the file)."""

    def __init__(self, key_identifier: str) -> None:
        self.key_identifier = key_identifier
        super().__init__(f"{KEY_IDENTIFIER_HEADER}: unknown key identifier {key_identifier!r}")


class BadSignature(SignatureError):
    """The signature does not verify the body with the named key."""


class KeysFileError(Exception):
    """The keys file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class GitHubPublicKeys:
    """GitHub's secret scanning public keys, by key identifier."""

    keys: Mapping[str, ec.EllipticCurvePublicKey]
    current: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path) -> GitHubPublicKeys:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise KeysFileError(f"{path}: cannot read: {err.strerror}") from err
        return cls.parse(data, origin=str(path))

    @classmethod
    def parse(cls, data: bytes, *, origin: str = "keys file") -> GitHubPublicKeys:
        """The keys in `data`, the JSON of GitHub's public keys endpoint."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise KeysFileError(
                f"{origin}: not JSON ({err}); expected the JSON of"
                " https://api.github.com/meta/public_keys/secret_scanning"
            ) from err
        entries = document.get("public_keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise KeysFileError(f'{origin}: expected an object with a list "public_keys"')
        if not entries:
            raise KeysFileError(f'{origin}: "public_keys" is empty: no alert could be verified')
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        current: set[str] = set()
        for index, entry in enumerate(entries):
            where = f"{origin}: public_keys[{index}]"
            if not isinstance(entry, dict):
                raise KeysFileError(f"{where}: expected an object")
            identifier = entry.get("key_identifier")
            pem = entry.get("key")
            if not isinstance(identifier, str) or not identifier:
                raise KeysFileError(f"{where}.key_identifier: required, a string")
            if not isinstance(pem, str) or not pem:
                raise KeysFileError(f"{where}.key: required, a PEM public key")
            if identifier in keys:
                raise KeysFileError(f"{where}: key identifier {identifier!r} given twice")
            keys[identifier] = _p256_key(pem, f"{where}.key")
            if entry.get("is_current") is True:
                current.add(identifier)
        return cls(keys=keys, current=frozenset(current))

    def verify(self, body: bytes, key_identifier: str | None, signature: str | None) -> str:
        """Checks that `signature` (base64 DER) is the key `key_identifier`'s ECDSA P-256 /
        SHA-256 signature of `body`, the raw bytes as received. Returns the identifier;
        raises a SignatureError otherwise."""
        if not key_identifier:
            raise MissingSignature(f"{KEY_IDENTIFIER_HEADER}: required header is missing")
        if not signature:
            raise MissingSignature(f"{SIGNATURE_HEADER}: required header is missing")
        key = self.keys.get(key_identifier)
        if key is None:
            raise UnknownKeyIdentifier(key_identifier[:_IDENTIFIER_MAX])
        if len(signature) > _SIGNATURE_MAX:
            raise MalformedSignature(f"{SIGNATURE_HEADER}: too long for an ECDSA P-256 signature")
        try:
            der = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError) as err:
            raise MalformedSignature(f"{SIGNATURE_HEADER}: not base64") from err
        try:
            key.verify(der, body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as err:
            # Also a DER structure that does not parse: either way, not GitHub's signature.
            raise BadSignature(
                f"{SIGNATURE_HEADER}: does not verify the body with key {key_identifier!r}"
            ) from err
        return key_identifier


def _p256_key(pem: str, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as err:
        raise KeysFileError(f"{where}: not a PEM public key") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeysFileError(f"{where}: not an ECDSA P-256 public key")
    return key
