"""GitHub's signatures on secret scanning alerts: which alerts are proven to come from GitHub,
and what a keys file must hold."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keysvc.access.github_signatures import (
    BadSignature,
    GitHubPublicKeys,
    KeysFileError,
    MalformedSignature,
    MissingSignature,
    UnknownKeyIdentifier,
)
from tests.github_alerts import (
    DOCUMENTED_BODY,
    DOCUMENTED_KEY,
    DOCUMENTED_KEY_IDENTIFIER,
    DOCUMENTED_SIGNATURE,
    GitHubSigner,
    alert,
    finding,
    keys_document,
)

BODY = alert(finding("ck_live_leaked"), finding("something else", url=""))


@pytest.fixture(scope="module")
def github() -> GitHubSigner:
    return GitHubSigner.new()


@pytest.fixture(scope="module")
def keys(github: GitHubSigner) -> GitHubPublicKeys:
    return GitHubPublicKeys.parse(keys_document(github).encode())


class TestVerify:
    def test_a_signature_by_a_listed_key_verifies(
        self, github: GitHubSigner, keys: GitHubPublicKeys
    ) -> None:
        """GitHub's signature of the body, with the identifier of its key, verifies; verify()
        returns that identifier."""
        assert keys.verify(BODY, github.key_identifier, github.sign(BODY)) == github.key_identifier

    def test_githubs_documented_sample_verifies(self) -> None:
        """The signed sample in GitHub's partner documentation verifies with the key GitHub
        publishes under its identifier: the format (base64 DER, SHA-256 over the raw body) is
        GitHub's own."""
        keys = GitHubPublicKeys.parse(
            json.dumps(
                {
                    "public_keys": [
                        {"key_identifier": DOCUMENTED_KEY_IDENTIFIER, "key": DOCUMENTED_KEY}
                    ]
                }
            ).encode()
        )

        verified = keys.verify(DOCUMENTED_BODY, DOCUMENTED_KEY_IDENTIFIER, DOCUMENTED_SIGNATURE)

        assert verified == DOCUMENTED_KEY_IDENTIFIER
        with pytest.raises(BadSignature):
            keys.verify(DOCUMENTED_BODY + b"\n", DOCUMENTED_KEY_IDENTIFIER, DOCUMENTED_SIGNATURE)

    def test_a_forged_signature_is_refused(
        self, github: GitHubSigner, keys: GitHubPublicKeys
    ) -> None:
        """A signature by a key pair GitHub never listed, claiming GitHub's identifier, is
        refused."""
        forger = GitHubSigner.new()

        with pytest.raises(BadSignature, match="does not verify the body"):
            keys.verify(BODY, github.key_identifier, forger.sign(BODY))

    def test_a_signature_by_another_listed_key_is_refused(self, github: GitHubSigner) -> None:
        """Signed by one listed key, claimed to be by another listed key: refused."""
        other = GitHubSigner.new()
        keys = GitHubPublicKeys.parse(keys_document(github, other).encode())

        assert keys.verify(BODY, other.key_identifier, other.sign(BODY)) == other.key_identifier
        with pytest.raises(BadSignature):
            keys.verify(BODY, other.key_identifier, github.sign(BODY))

    def test_an_unknown_key_identifier_is_refused(
        self, github: GitHubSigner, keys: GitHubPublicKeys
    ) -> None:
        """A key identifier the file does not list is refused by name, whatever the signature."""
        with pytest.raises(UnknownKeyIdentifier, match="'f00d'") as refused:
            keys.verify(BODY, "f00d", github.sign(BODY))
        assert refused.value.key_identifier == "f00d"

    @pytest.mark.parametrize(
        "tamper",
        [
            lambda body: body.replace(b"ck_live_leaked", b"ck_live_lEaked"),
            lambda body: body + b" ",
            lambda body: json.dumps(json.loads(body)).encode(),  # same JSON, other spacing
            lambda body: body[:-1],
        ],
        ids=["one-character", "trailing-space", "re-serialized", "truncated"],
    )
    def test_a_tampered_body_is_refused(
        self, github: GitHubSigner, keys: GitHubPublicKeys, tamper: object
    ) -> None:
        """The signature covers the raw bytes: any change to them, even one that parses to the
        same JSON, is refused."""
        assert callable(tamper)
        signature = github.sign(BODY)

        with pytest.raises(BadSignature):
            keys.verify(tamper(BODY), github.key_identifier, signature)

    @pytest.mark.parametrize(
        "signature",
        ["not base64!", "MEQCIQDa*", "MEQCIQDaMKqrGnE27S0", "YWJj\n"],
        ids=["punctuation", "star", "bad-padding", "newline"],
    )
    def test_a_signature_that_is_not_base64_is_refused(
        self, github: GitHubSigner, keys: GitHubPublicKeys, signature: str
    ) -> None:
        """A header that is not strict base64 is malformed."""
        with pytest.raises(MalformedSignature, match="not base64"):
            keys.verify(BODY, github.key_identifier, signature)

    def test_base64_that_is_no_signature_is_refused(
        self, github: GitHubSigner, keys: GitHubPublicKeys
    ) -> None:
        """Valid base64 of bytes that are no DER signature does not verify."""
        with pytest.raises(BadSignature):
            keys.verify(BODY, github.key_identifier, base64.b64encode(b"\x30\x06garbage").decode())

    def test_an_overlong_signature_is_refused_before_decoding(
        self, github: GitHubSigner, keys: GitHubPublicKeys
    ) -> None:
        """A header far longer than any P-256 signature is not decoded."""
        with pytest.raises(MalformedSignature, match="too long"):
            keys.verify(BODY, github.key_identifier, "A" * 100_000)

    @pytest.mark.parametrize(("key_identifier", "signature"), [(None, "x"), ("", "x"), ("k", None)])
    def test_missing_headers_are_named(
        self, keys: GitHubPublicKeys, key_identifier: str | None, signature: str | None
    ) -> None:
        """An unsigned request is refused, naming the missing header."""
        header = "Identifier" if not key_identifier else "Signature"
        with pytest.raises(MissingSignature, match=f"Github-Public-Key-{header}: required"):
            keys.verify(BODY, key_identifier, signature)


class TestKeysFile:
    def test_githubs_format_is_read(self, tmp_path: Path) -> None:
        """The JSON of GitHub's endpoint, as saved: every key by its identifier, and which
        are current."""
        old, new = GitHubSigner.new(), GitHubSigner.new()
        path = tmp_path / "keys.json"
        path.write_text(keys_document(old, new, current=new))

        keys = GitHubPublicKeys.load(path)

        assert set(keys.keys) == {old.key_identifier, new.key_identifier}
        assert keys.current == {new.key_identifier}

    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(KeysFileError, match=r"keys\.json: cannot read"):
            GitHubPublicKeys.load(tmp_path / "keys.json")

    @pytest.mark.parametrize(
        ("content", "problem"),
        [
            ("not json", "not JSON"),
            ("[]", 'expected an object with a list "public_keys"'),
            ('{"public_keys": {}}', 'expected an object with a list "public_keys"'),
            ('{"public_keys": []}', '"public_keys" is empty'),
            ('{"public_keys": ["x"]}', r"public_keys\[0\]: expected an object"),
            ('{"public_keys": [{"key": "x"}]}', r"public_keys\[0\]\.key_identifier: required"),
            ('{"public_keys": [{"key_identifier": "a"}]}', r"public_keys\[0\]\.key: required"),
            (
                '{"public_keys": [{"key_identifier": "a", "key": "-----BEGIN PUBLIC KEY-----"}]}',
                r"public_keys\[0\]\.key: not a PEM public key",
            ),
        ],
    )
    def test_a_malformed_file_is_refused_naming_the_problem(
        self, content: str, problem: str
    ) -> None:
        with pytest.raises(KeysFileError, match=problem):
            GitHubPublicKeys.parse(content.encode(), origin="keys.json")

    def test_an_identifier_given_twice_is_refused(self) -> None:
        signer = GitHubSigner.new()
        document = json.loads(keys_document(signer))
        document["public_keys"] *= 2

        with pytest.raises(KeysFileError, match="given twice"):
            GitHubPublicKeys.parse(json.dumps(document).encode())

    @pytest.mark.parametrize("kind", ["rsa", "p384"])
    def test_a_key_that_is_not_p256_is_refused(self, kind: str) -> None:
        """GitHub signs with ECDSA P-256: an RSA or a P-384 key in the file is a mistake."""
        private = (
            generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP384R1())
        )
        pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        document = {"public_keys": [{"key_identifier": "a", "key": pem.decode()}]}

        with pytest.raises(KeysFileError, match="not an ECDSA P-256 public key"):
            GitHubPublicKeys.parse(json.dumps(document).encode())
