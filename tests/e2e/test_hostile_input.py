"""Hostile input to Authorize against a real server: any api_key string gets a decision, never
an RPC error; near misses of a real key get the decision the key format implies; guesses
at a key's secret are throttled and logged once; and nothing of it leaves an error or a key
in the server's log."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from keysvc_client import keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

from .harness import (
    BASE62,
    KEY_PATTERN,
    ServerFactory,
    ServerProcess,
    rpc_error,
    verdict,
    with_checksum,
)

pytestmark = pytest.mark.slow

pb = keysvc_pb2
TIMEOUT = 10
ACCOUNT = "acct_hostile"
# The server's default limit on a request (--max-message-bytes), in bytes.
MESSAGE_LIMIT = 64 * 1024
# The longest api_key that fits: its field's tag and length take 4 bytes of the limit.
LARGEST_KEY_BYTES = MESSAGE_LIMIT - 4
CATALOGUE = (
    "links:read",
    "links:write",
    "sessions:read",
    "sessions:write",
    "webhooks:read",
    "webhooks:write",
    "events:read",
    "customers:read",
    "customers:write",
)
MALFORMED = (401, "REASON_MALFORMED")
MISSING = (401, "REASON_MISSING")
NOT_FOUND = (401, "REASON_NOT_FOUND")
ALLOWED = (200, "REASON_ALLOWED")

# Fixed examples, no database of failures, no deadline: a network call per example.
PROPERTIES = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _huge(pattern: str, size: int) -> str:
    """`pattern` repeated to at most `size` UTF-8 bytes, cut on a character boundary."""
    repeated = pattern * (size // len(pattern.encode()) + 1)
    return repeated.encode()[:size].decode("utf-8", "ignore")


def _holds_a_key(value: str) -> bool:
    """Whether a well-formed key (valid checksum) hides in `value`: never, in practice."""
    return any(with_checksum(key[:-6]) == key for key in KEY_PATTERN.findall(value))


def _sends_no_key(value: str) -> bool:
    """Nothing but whitespace, or the word Bearer with nothing after it: README's MISSING."""
    words = value.split(maxsplit=1)
    return not words or (len(words) == 1 and words[0].lower() == "bearer")


def _base62(length: int) -> st.SearchStrategy[str]:
    return st.text(BASE62, min_size=length, max_size=length)


# What a hostile client may put in an Authorization header, passed on by an API server.
ANY_TEXT = st.one_of(
    st.text(),
    # Control and format characters, odd spaces, combining marks, private use, emoji.
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Co", "So", "Cn"])),
    # Bytes that are not UTF-8, as a server that decoded them as Latin-1 passes them on.
    st.binary().map(lambda raw: raw.decode("latin-1")),
    st.builds(
        str.__add__,
        st.sampled_from(["Bearer ", "bearer", "BEARER\t", "Bearer  Bearer ", "Basic ", " "]),
        st.text(),
    ),
    # Key-shaped: a prefix and a body of about the right length and alphabet.
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["ck_live_", "ck_test_", "ck_prod_", "CK_LIVE_", "ck_live", "sk_live_"]),
        st.text(BASE62 + "_-+/= é\x00\u200b", min_size=44, max_size=56),
        st.sampled_from(["", " ", "\n", "=", "\u0301"]),
    ),
    # Up to just under the message limit.
    st.builds(
        _huge,
        st.one_of(st.text(min_size=1, max_size=16), st.sampled_from(["ck_live_", "\x00", "é"])),
        st.integers(1_000, LARGEST_KEY_BYTES),
    ),
)


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[keysvc_pb2_grpc.KeyServiceStub]:
    """The generated stub, shared by a module's examples: the requests go out unaltered."""
    with server.channel() as channel:
        yield server.stub(channel)


@pytest.fixture(scope="module")
def real(server: ServerProcess) -> str:
    """A live key the near misses are made from."""
    with server.client() as admin:
        return admin.create_key(ACCOUNT, "Production server", "live", ["links:read"]).secret


def _authorize(
    stub: keysvc_pb2_grpc.KeyServiceStub, api_key: str, scopes: tuple[str, ...] = ()
) -> pb.AuthorizeResponse:
    request = pb.AuthorizeRequest(api_key=api_key, required_scopes=scopes)
    response: pb.AuthorizeResponse = stub.Authorize(request, timeout=TIMEOUT)
    return response


class TestAnyString:
    @PROPERTIES
    @given(value=ANY_TEXT, scopes=st.lists(st.sampled_from(CATALOGUE), max_size=3))
    @example(value="x" * LARGEST_KEY_BYTES, scopes=[])
    @example(value="Bearer " + "\u00e9" * ((LARGEST_KEY_BYTES - 7) // 2), scopes=[])
    @example(value="\x00" * LARGEST_KEY_BYTES, scopes=[])
    @example(value="", scopes=["links:read"])
    @example(value=" Bearer\t ", scopes=[])
    def test_is_a_401_decision_never_an_rpc_error(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, value: str, scopes: list[str]
    ) -> None:
        """Any string up to the message limit is answered 401: MISSING when it carries no key,
        MALFORMED otherwise, and names no key."""
        assume(not _holds_a_key(value))
        request = pb.AuthorizeRequest(api_key=value, required_scopes=scopes)
        assume(request.ByteSize() <= MESSAGE_LIMIT)

        decision: pb.AuthorizeResponse = stub.Authorize(request, timeout=TIMEOUT)

        assert verdict(decision) == (MISSING if _sends_no_key(value) else MALFORMED)
        assert (decision.allowed, decision.key_id, decision.account_id) == (False, "", "")


class TestNearMisses:
    """Keys made from a real one. The checksum covers everything before it, the mode prefix
    included: a change it does not cover is MALFORMED; one with the checksum recomputed is a
    well-formed key nobody was given, NOT_FOUND."""

    @PROPERTIES
    @given(checksum=_base62(6))
    def test_a_wrong_checksum_is_malformed(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, real: str, checksum: str
    ) -> None:
        """The real key with any other checksum is MALFORMED."""
        assume(checksum != real[-6:])

        assert verdict(_authorize(stub, real[:-6] + checksum)) == MALFORMED

    @PROPERTIES
    @given(position=st.integers(0, 57), replacement=st.sampled_from(BASE62 + "_"))
    def test_one_character_changed_is_malformed(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, real: str, position: int, replacement: str
    ) -> None:
        """A typo anywhere in the key, prefix to checksum, is caught by the checksum."""
        assume(real[position] != replacement)

        typo = real[:position] + replacement + real[position + 1 :]

        assert verdict(_authorize(stub, typo)) == MALFORMED

    @PROPERTIES
    @given(
        mode=st.sampled_from(["ck_live_", "ck_test_"]),
        key_id=_base62(12),
        secret=_base62(32),
        bearer=st.booleans(),
    )
    def test_an_unknown_key_id_is_not_found(
        self,
        stub: keysvc_pb2_grpc.KeyServiceStub,
        real: str,
        mode: str,
        key_id: str,
        secret: str,
        bearer: bool,
    ) -> None:
        """A key with a valid checksum and a key id that was never issued is NOT_FOUND."""
        assume(key_id != real[8:20])
        forged = with_checksum(mode + key_id + secret)

        decision = _authorize(stub, f"Bearer {forged}" if bearer else forged)

        assert verdict(decision) == NOT_FOUND
        assert (decision.key_id, decision.account_id) == ("", "")

    @PROPERTIES
    @given(secret=_base62(32), bearer=st.booleans())
    def test_the_right_key_id_with_a_wrong_secret_is_not_found(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, real: str, secret: str, bearer: bool
    ) -> None:
        """The real key id with any other secret, checksum recomputed, is NOT_FOUND."""
        assume(secret != real[20:52])
        forged = with_checksum(real[:20] + secret)

        decision = _authorize(stub, f"Bearer {forged}" if bearer else forged)

        assert verdict(decision) == NOT_FOUND
        assert (decision.key_id, decision.account_id) == ("", "")

    @PROPERTIES
    @given(secret=st.one_of(st.none(), _base62(32)))
    def test_the_other_mode_re_signed_is_not_found(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, real: str, secret: str | None
    ) -> None:
        """The live key's id as a test key, with its own secret or another and the checksum
        recomputed, is NOT_FOUND: a key is one mode only."""
        forged = with_checksum("ck_test_" + real[8:20] + (secret or real[20:52]))

        assert verdict(_authorize(stub, forged)) == NOT_FOUND

    def test_the_other_mode_prefix_alone_is_malformed(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, real: str
    ) -> None:
        """Swapping the prefix without recomputing the checksum fails it: MALFORMED."""
        assert verdict(_authorize(stub, "ck_test_" + real[8:])) == MALFORMED

    def test_the_real_key_still_works(
        self, stub: keysvc_pb2_grpc.KeyServiceStub, real: str
    ) -> None:
        """The near misses above leave the key they were made from alone."""
        assert verdict(_authorize(stub, real, ("links:read",))) == ALLOWED


class TestCallerMistakes:
    @settings(PROPERTIES, max_examples=15)
    @given(size=st.integers(MESSAGE_LIMIT, 4 * MESSAGE_LIMIT), pattern=st.text(min_size=1))
    @example(size=LARGEST_KEY_BYTES + 1, pattern="x")
    def test_an_oversized_request_is_resource_exhausted(
        self,
        server: ServerProcess,
        stub: keysvc_pb2_grpc.KeyServiceStub,
        size: int,
        pattern: str,
    ) -> None:
        """A request over the message limit is RESOURCE_EXHAUSTED, and the server stays
        healthy and answering."""
        request = pb.AuthorizeRequest(api_key=_huge(pattern, size))
        assume(request.ByteSize() > MESSAGE_LIMIT)

        err = rpc_error(lambda: stub.Authorize(request, timeout=TIMEOUT))

        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.health() == health_pb2.HealthCheckResponse.SERVING
        assert verdict(_authorize(stub, "garbage")) == MALFORMED

    @PROPERTIES
    @given(
        unknown=st.text(max_size=80),
        known=st.lists(st.sampled_from(CATALOGUE), max_size=3),
        api_key=st.one_of(st.none(), ANY_TEXT),
    )
    def test_an_unknown_required_scope_is_invalid_argument(
        self,
        stub: keysvc_pb2_grpc.KeyServiceStub,
        real: str,
        unknown: str,
        known: list[str],
        api_key: str | None,
    ) -> None:
        """Requiring a scope outside the catalogue is the calling server's own bug:
        INVALID_ARGUMENT naming required_scopes, whatever the key (None: the real one)."""
        assume(unknown not in CATALOGUE)
        request = pb.AuthorizeRequest(
            api_key=real if api_key is None else api_key, required_scopes=[*known, unknown]
        )
        assume(request.ByteSize() <= MESSAGE_LIMIT)

        err = rpc_error(lambda: stub.Authorize(request, timeout=TIMEOUT))

        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith("required_scopes:")


class TestBruteForce:
    def test_guesses_at_a_cold_key_are_throttled_and_logged_once(
        self, server_factory: ServerFactory
    ) -> None:
        """Forty guesses at the secret of an uncached key are all NOT_FOUND, log one warning
        naming the key id (and no secret), and leave the real key working."""
        # A cache that lets keys go after half a second: the guesses meet a cold key.
        server = server_factory.start("--cache-ttl-seconds", "0.5")
        with server.client() as admin, server.client(admin=False) as public:
            created = admin.create_key(ACCOUNT, "Production server", "live", ["links:read"])
            real = created.secret
            # Seen right by this server, so it is never refused for guesses at its key id.
            assert verdict(public.authorize(real)) == ALLOWED
            time.sleep(1)
            guesses = [
                with_checksum(real[:20] + "".join(secrets.choice(BASE62) for _ in range(32)))
                for _ in range(40)
            ]

            decisions = {verdict(public.authorize(guess)) for guess in guesses}
            after = verdict(public.authorize(real))

        assert decisions == {NOT_FOUND}
        assert after == ALLOWED
        log = server.read_log()
        warnings = [line for line in log.splitlines() if "wrong secrets" in line]
        assert len(warnings) == 1, log
        assert re.search(
            rf" WARNING keysvc\.usecases\.authorize: key id {created.key.id}: 10 wrong secrets"
            r" in the last 60s; refusing further unverified secrets until"
            r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$",
            warnings[0],
        ), warnings[0]
        for key in [real, *guesses]:
            assert key[20:52] not in log
        assert "Traceback" not in log and not re.search(r"\bERROR\b", log)


class TestServerLog:
    def test_holds_no_error_and_no_key(self, server: ServerProcess, real: str) -> None:
        """Hostile input of each kind above leaves no error, no traceback and no key in the
        server's log (nor does whatever the rest of the module sent before it)."""
        typo = "a" if real[30] != "a" else "b"
        near_misses = [
            (real[:-6] + ("000000" if real[-6:] != "000000" else "111111"), MALFORMED),
            (real[:30] + typo + real[31:], MALFORMED),
            (with_checksum("ck_test_" + real[8:52]), NOT_FOUND),
            (
                with_checksum(real[:8] + "".join(secrets.choice(BASE62) for _ in range(44))),
                NOT_FOUND,
            ),
            (
                with_checksum(real[:20] + "".join(secrets.choice(BASE62) for _ in range(32))),
                NOT_FOUND,
            ),
        ]
        hostile = [
            ("", MISSING),
            (" Bearer\t ", MISSING),
            ("Bearer Bearer " + real, MALFORMED),
            (f"{real} {real}", MALFORMED),
            ("\x00" * LARGEST_KEY_BYTES, MALFORMED),
            (bytes(range(256)).decode("latin-1"), MALFORMED),
            ("Bearer " + "\u00e9\u200b\U0001f511" * 1000, MALFORMED),
            (real.upper(), MALFORMED),
        ]
        with server.channel() as channel:
            stub = server.stub(channel)
            decisions = [verdict(_authorize(stub, value)) for value, _ in near_misses + hostile]
            oversized = rpc_error(
                lambda: stub.Authorize(pb.AuthorizeRequest(api_key=real * 2000), timeout=TIMEOUT)
            )
            unknown_scope = rpc_error(lambda: _authorize(stub, real, ("links:admin",)))
            after = verdict(_authorize(stub, real, ("links:read",)))

        assert decisions == [expected for _, expected in near_misses + hostile]
        assert oversized.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert unknown_scope.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert after == ALLOWED
        log = server.read_log()
        assert not [line for line in log.splitlines() if re.search(r"\bERROR\b", line)], log
        assert "Traceback" not in log
        assert KEY_PATTERN.findall(log) == []
        for key in [real, *(value for value, _ in near_misses)]:
            assert key[20:52] not in log
