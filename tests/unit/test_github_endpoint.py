"""The GitHub secret scanning endpoint as GitHub meets it: which requests revoke keys, what each
finding is labelled, and how every bad request is refused. The use case behind it is a stand-in
here (the end-to-end tests run the real one): it knows a few raw keys and records its calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from starlette.testclient import TestClient

from keysvc.access.github_signatures import SIGNATURE_HEADER, GitHubPublicKeys
from keysvc.api import github
from keysvc.core import keys
from keysvc.core.errors import InvalidArgument, Unavailable
from keysvc.core.model import Actor, LeakedKey, LeakOutcome, Mode
from keysvc.core.validation import MAX_LEAKED_KEYS
from tests.github_alerts import (
    TOKEN_TYPE,
    URL,
    GitHubSigner,
    alert,
    feedback,
    finding,
    keys_document,
)

PATH = github.PATH


@dataclass
class Call:
    raw_keys: list[str]
    source: str
    actor: Actor


@dataclass
class StandInAdmin:
    """Answers like KeyAdmin.revoke_leaked_keys for the raw keys in `real`."""

    real: dict[str, str] = field(default_factory=dict)  # raw key -> account id
    revoked: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    error: Exception | None = None

    def key(self, account_id: str = "acct_1") -> str:
        raw = keys.generate(Mode.LIVE, keys.new_key_id())
        self.real[raw] = account_id
        return raw

    async def revoke_leaked_keys(
        self, raw_keys: Sequence[str], source: str, actor: Actor
    ) -> list[LeakedKey]:
        self.calls.append(Call(list(raw_keys), source, actor))
        if self.error is not None:
            raise self.error
        if not raw_keys or len(raw_keys) > MAX_LEAKED_KEYS:
            raise InvalidArgument(f"keys: at most {MAX_LEAKED_KEYS} per call")
        results = []
        for raw in raw_keys:
            parsed = keys.parse(raw)
            if parsed is None:
                results.append(LeakedKey("", LeakOutcome.NOT_FOUND))
                continue
            prefix = keys.display_prefix(parsed.mode, parsed.key_id)
            if raw not in self.real:
                results.append(LeakedKey(prefix, LeakOutcome.NOT_FOUND))
                continue
            outcome = LeakOutcome.ALREADY_REVOKED if raw in self.revoked else LeakOutcome.REVOKED
            self.revoked.add(raw)
            results.append(LeakedKey(prefix, outcome, parsed.key_id, self.real[raw]))
        return results

    @property
    def sent(self) -> list[str]:
        return [raw for call in self.calls for raw in call.raw_keys]


@pytest.fixture(scope="module")
def signer() -> GitHubSigner:
    return GitHubSigner.new()


@pytest.fixture
def admin() -> StandInAdmin:
    return StandInAdmin()


@pytest.fixture
def client(signer: GitHubSigner, admin: StandInAdmin) -> Iterator[TestClient]:
    public_keys = GitHubPublicKeys.parse(keys_document(signer).encode())
    with TestClient(github.create_app(admin, public_keys)) as client:
        yield client


def post(client: TestClient, signer: GitHubSigner, body: bytes, **headers: str) -> object:
    return client.post(PATH, content=body, headers={**signer.headers(body), **headers})


class TestLeakedKeys:
    def test_a_real_key_is_revoked_and_labelled_true_positive(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """A signed alert with a real key: revoked through the use case, as GitHub's secret
        scanning from the caller's address, with the URL where it was found as the source;
        the answer is GitHub's feedback format."""
        raw = admin.key()

        response = client.post(
            PATH, content=(body := alert(finding(raw))), headers=signer.headers(body)
        )

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == [feedback(raw, "true_positive")]
        assert admin.revoked == {raw}
        [call] = admin.calls
        assert call.source == URL
        assert call.actor.name == "github-secret-scanning"
        assert call.actor.peer.startswith("ipv4:testclient:")

    def test_each_finding_is_answered_in_order(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """One answer per finding, in the order sent: real keys (revoked now or before) are
        true positives; made-up keys, wrong secrets and other strings are false positives."""
        fresh, old = admin.key(), admin.key()
        admin.revoked.add(old)
        made_up = keys.generate(Mode.TEST, keys.new_key_id())
        wrong_secret = keys.generate(Mode.LIVE, keys.parse(fresh).key_id)  # type: ignore[union-attr]
        tokens = [made_up, fresh, "ghp_not_ours", old, wrong_secret, fresh[:-1] + "x"]
        body = alert(*(finding(token) for token in tokens))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        labels = ["false", "true", "false", "true", "false", "false"]
        assert response.json() == [
            feedback(token, f"{label}_positive")
            for token, label in zip(tokens, labels, strict=True)
        ]

    def test_strings_that_are_no_keysvc_key_are_not_sent_to_the_use_case(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """A token that is not a well-formed keysvc key (wrong prefix, length or checksum)
        cannot be real: labelled false positive without a call."""
        body = alert(finding("ck_live_short"), finding("x" * 58), finding("AKIAIOSFODNN7EXAMPLE"))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert [item["label"] for item in response.json()] == ["false_positive"] * 3
        assert admin.calls == []

    def test_findings_are_revoked_with_the_url_each_was_found_at(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """Keys found at different URLs are revoked in calls of their own, each recording its
        URL; one found with no URL records GitHub's source instead."""
        a, b, c = admin.key(), admin.key(), admin.key()
        body = alert(
            finding(a, url="https://github.com/o/r/blob/1/a.py"),
            finding(b, url="https://gist.github.com/o/2"),
            finding(c, url="", source="issue_comment"),
        )

        client.post(PATH, content=body, headers=signer.headers(body))

        assert {(tuple(call.raw_keys), call.source) for call in admin.calls} == {
            ((a,), "https://github.com/o/r/blob/1/a.py"),
            ((b,), "https://gist.github.com/o/2"),
            ((c,), "GitHub secret scanning (issue_comment)"),
        }

    def test_a_source_the_use_case_would_refuse_is_made_safe(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """Control characters in a URL are replaced and an overlong URL is cut, rather than
        failing the revocation."""
        a, b = admin.key(), admin.key()
        body = alert(
            finding(a, url="https://github.com/o/r\n\x1b[31mred"),
            finding(b, url="https://github.com/" + "x" * 5000),
        )

        client.post(PATH, content=body, headers=signer.headers(body))

        sources = sorted(call.source for call in admin.calls)
        assert sources[0] == "https://github.com/o/r??[31mred"
        assert len(sources[1]) == 2000
        assert admin.revoked == {a, b}

    def test_more_keys_than_one_call_takes_are_sent_in_batches(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """250 real keys at one URL: every one revoked, in calls of at most MAX_LEAKED_KEYS."""
        raws = [admin.key() for _ in range(250)]
        body = alert(*(finding(raw) for raw in raws))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert [item["label"] for item in response.json()] == ["true_positive"] * 250
        assert sorted(len(call.raw_keys) for call in admin.calls) == [50, 100, 100]
        assert sorted(admin.sent) == sorted(raws)

    def test_an_empty_alert_is_answered_with_an_empty_list(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        body = b"[]"
        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert (response.status_code, response.json(), admin.calls) == (200, [], [])

    def test_url_and_source_may_be_missing_or_null(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """GitHub documents that the url may be empty; older alerts carry no source."""
        raw = admin.key()
        body = json.dumps([{"token": raw, "type": TOKEN_TYPE, "url": None}]).encode()

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert response.json() == [feedback(raw, "true_positive")]
        assert admin.calls[0].source == "GitHub secret scanning (no url)"


class TestRefusals:
    """Every bad request gets a 4xx naming the problem, and nothing is revoked."""

    def test_a_forged_signature_is_403(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        raw = admin.key()
        body = alert(finding(raw))
        forger = GitHubSigner.new()

        response = client.post(
            PATH, content=body, headers=forger.headers(body, key_identifier=signer.key_identifier)
        )

        assert response.status_code == 403
        assert "does not verify the body" in response.json()["error"]
        assert admin.calls == []

    def test_a_body_changed_after_signing_is_403(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        raw = admin.key()
        headers = signer.headers(alert(finding(raw)))

        response = client.post(PATH, content=alert(finding(raw, url="https://x")), headers=headers)

        assert response.status_code == 403
        assert admin.calls == []

    def test_an_unknown_key_identifier_is_403(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        body = alert(finding(admin.key()))
        stranger = GitHubSigner.new()

        response = client.post(PATH, content=body, headers=stranger.headers(body))

        assert response.status_code == 403
        assert f"unknown key identifier '{stranger.key_identifier}'" in response.json()["error"]
        assert admin.calls == []

    @pytest.mark.parametrize(
        "missing", ["Github-Public-Key-Identifier", "Github-Public-Key-Signature"]
    )
    def test_an_unsigned_request_is_400(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin, missing: str
    ) -> None:
        body = alert(finding(admin.key()))
        headers = {k: v for k, v in signer.headers(body).items() if k != missing}

        response = client.post(PATH, content=body, headers=headers)

        assert response.status_code == 400
        assert response.json() == {"error": f"{missing}: required header is missing"}
        assert admin.calls == []

    def test_a_signature_that_is_not_base64_is_400(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        body = alert(finding(admin.key()))

        response = client.post(
            PATH, content=body, headers={**signer.headers(body), SIGNATURE_HEADER: "n*t"}
        )

        assert response.status_code == 400
        assert response.json() == {"error": "Github-Public-Key-Signature: not base64"}

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            (b"[{", "body: not JSON (Expecting property name enclosed in double quotes"),
            (b"\xff\xfe[]", "body: not"),
            (b'{"token": "x"}', "body: expected a JSON array of findings, got an object"),
            (b"[1]", "body[0]: expected an object, got a number"),
            (b'[{"type": "t"}]', "body[0].token: required, a string, got null"),
            (b'[{"token": "", "type": "t"}]', "body[0].token: required, got an empty string"),
            (b'[{"token": 5, "type": "t"}]', "body[0].token: required, a string, got a number"),
            (b'[{"token": "x"}]', "body[0].type: required, a string, got null"),
            (b'[{"token": "x", "type": "t", "url": []}]', "body[0].url: a string, got an array"),
            (
                b'[{"token": "x", "type": "t"}, {"token": "y", "type": "t", "source": true}]',
                "body[1].source: a string, got a boolean",
            ),
        ],
    )
    def test_a_signed_body_of_the_wrong_shape_is_400_naming_the_problem(
        self,
        client: TestClient,
        signer: GitHubSigner,
        admin: StandInAdmin,
        body: bytes,
        problem: str,
    ) -> None:
        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert response.status_code == 400
        assert response.json()["error"].startswith(problem)
        assert admin.calls == []

    def test_a_body_over_the_limit_is_413_by_its_content_length(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        body = alert(finding(admin.key(), url="https://github.com/" + "x" * github.MAX_BODY_BYTES))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert response.status_code == 413
        assert response.json()["error"].startswith(f"body: at most {github.MAX_BODY_BYTES} bytes")
        assert admin.calls == []

    def test_a_body_over_the_limit_without_content_length_is_413(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """Sent in chunks, with no length announced: refused once the limit is passed."""
        chunk = b" " * 65536

        def chunks() -> Iterator[bytes]:
            yield b"["
            for _ in range(20):  # 1.25 MiB
                yield chunk
            yield b"]"

        response = client.post(PATH, content=chunks(), headers=signer.headers(b"[]"))

        assert response.status_code == 413
        assert response.json() == {"error": f"body: at most {github.MAX_BODY_BYTES} bytes"}

    def test_more_findings_than_the_limit_is_413(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        body = alert(*(finding("x") for _ in range(github.MAX_FINDINGS + 1)))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert response.status_code == 413
        assert response.json() == {
            "error": f"body: at most {github.MAX_FINDINGS} findings per request,"
            f" got {github.MAX_FINDINGS + 1}"
        }

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    def test_only_post_is_served(self, client: TestClient, method: str) -> None:
        response = client.request(method, PATH)

        assert response.status_code == 405
        assert response.json() == {"error": f"only POST is allowed on {PATH}"}

    @pytest.mark.parametrize("path", ["/", "/github", "/github/secret-scanning/x", "/metrics"])
    def test_other_paths_are_404(self, client: TestClient, path: str) -> None:
        response = client.post(path, content=b"[]")

        assert response.status_code == 404
        assert response.json() == {"error": f"no such endpoint: POST to {PATH}"}

    def test_a_backend_that_cannot_answer_is_503(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        """GitHub is told to come back: nothing is lost, a revoked key counts as real then."""
        admin.error = Unavailable("the database did not answer in time")
        body = alert(finding(admin.key()))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert response.status_code == 503
        assert response.json() == {"error": "the database did not answer in time; retry later"}

    def test_an_unexpected_failure_is_500_without_details(
        self, client: TestClient, signer: GitHubSigner, admin: StandInAdmin
    ) -> None:
        admin.error = RuntimeError("internals")
        body = alert(finding(admin.key()))

        response = client.post(PATH, content=body, headers=signer.headers(body))

        assert (response.status_code, response.json()) == (500, {"error": "internal error"})


class TestNoTokenIsShown:
    def test_neither_the_log_nor_any_answer_holds_a_token(
        self,
        client: TestClient,
        signer: GitHubSigner,
        admin: StandInAdmin,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Revoked keys, false positives and refusals: the log names keys by prefix or
        SHA-256, and no answer repeats a token."""
        raw, made_up = admin.key(), keys.generate(Mode.LIVE, keys.new_key_id())
        tokens = [raw, made_up, "ghp_someone_elses_token"]
        good = alert(*(finding(token) for token in tokens))
        caplog.set_level(logging.DEBUG)

        answers = [
            client.post(PATH, content=good, headers=signer.headers(good)),
            client.post(PATH, content=good, headers=GitHubSigner.new().headers(good)),
            client.post(PATH, content=good + b"x", headers=signer.headers(good + b"x")),
        ]
        admin.error = Unavailable("down")
        answers.append(client.post(PATH, content=good, headers=signer.headers(good)))

        text = caplog.text + "".join(answer.text for answer in answers)
        assert [answer.status_code for answer in answers] == [200, 403, 400, 503]
        for token in tokens:
            assert token not in text
        assert keys.display_prefix(Mode.LIVE, keys.parse(raw).key_id) in caplog.text  # type: ignore[union-attr]
