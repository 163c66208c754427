"""The key format: what generate() makes and what parse() accepts."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysvc.core import keys
from keysvc.core.model import Mode

from .support import checksum, secret_of, signed


def _key(mode: Mode = Mode.LIVE) -> str:
    return keys.generate(mode, keys.new_key_id())


class TestGenerate:
    @pytest.mark.parametrize("mode", list(Mode))
    def test_matches_the_scanner_regex(self, mode: Mode) -> None:
        """Every generated key is found, whole, by the regex published for secret scanners."""
        raw = _key(mode)
        assert re.fullmatch(keys.SCANNER_REGEX, raw)
        assert re.findall(keys.SCANNER_REGEX, f"token={raw};") == [raw]

    def test_has_the_key_length(self) -> None:
        """A raw key is exactly KEY_LENGTH characters: prefix plus the 50-character body."""
        assert keys.KEY_LENGTH == 8 + 50
        assert all(len(_key(mode)) == keys.KEY_LENGTH for mode in Mode for _ in range(20))

    @pytest.mark.parametrize(("mode", "prefix"), [(Mode.LIVE, "ck_live_"), (Mode.TEST, "ck_test_")])
    def test_starts_with_the_mode_prefix(self, mode: Mode, prefix: str) -> None:
        """Live keys start ck_live_ and test keys ck_test_, as the product page promises."""
        assert _key(mode).startswith(prefix)

    def test_embeds_the_key_id_after_the_prefix(self) -> None:
        """The key id is the first twelve characters of the body."""
        key_id = keys.new_key_id()
        assert keys.generate(Mode.TEST, key_id)[8:20] == key_id

    def test_ends_with_the_crc32_of_everything_before(self) -> None:
        """The last six characters are the base62 CRC32 of the rest, so scanners can check keys."""
        raw = _key()
        assert raw[-keys.CHECKSUM_LENGTH :] == checksum(raw[: -keys.CHECKSUM_LENGTH])

    def test_secrets_are_distinct(self) -> None:
        """A thousand keys for the same key id carry a thousand different secrets."""
        key_id = keys.new_key_id()
        raws = [keys.generate(Mode.LIVE, key_id) for _ in range(1000)]
        assert len({secret_of(raw) for raw in raws}) == 1000

    def test_key_ids_are_distinct(self) -> None:
        """A thousand new key ids are a thousand different ones."""
        assert len({keys.new_key_id() for _ in range(1000)}) == 1000

    def test_secret_carries_at_least_160_bits(self) -> None:
        """The secret alone holds at least 160 random bits."""
        assert keys.SECRET_LENGTH * math.log2(len(keys.ALPHABET)) >= 160

    def test_alphabet_is_base62(self) -> None:
        """Keys use exactly the 62 letters and digits: URL-safe and double-click selectable."""
        assert sorted(keys.ALPHABET) == sorted(set(keys.ALPHABET))
        assert set(keys.ALPHABET) == set(
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        )


class TestDisplayPrefix:
    @pytest.mark.parametrize("mode", list(Mode))
    def test_is_the_mode_prefix_and_first_six_body_characters(self, mode: Mode) -> None:
        """The key list identifies a key by its mode prefix and the first six body characters."""
        raw = _key(mode)
        parsed = keys.parse(raw)
        assert parsed is not None
        assert keys.display_prefix(mode, parsed.key_id) == raw[:14]
        assert keys.display_prefix(mode, parsed.key_id) == keys.MODE_PREFIXES[mode] + raw[8:14]


class TestParse:
    @pytest.mark.parametrize("mode", list(Mode))
    def test_round_trips_mode_and_key_id(self, mode: Mode) -> None:
        """Parsing a generated key gives back its mode, key id and the raw key."""
        key_id = keys.new_key_id()
        raw = keys.generate(mode, key_id)
        parsed = keys.parse(raw)
        assert parsed is not None
        assert (parsed.mode, parsed.key_id, parsed.raw_key) == (mode, key_id, raw)

    def test_rejects_every_single_character_substitution(self) -> None:
        """Changing any one character of a key to any other letter or digit fails the check."""
        raw = _key()
        accepted = [
            (position, char)
            for position in range(len(raw))
            for char in keys.ALPHABET
            if char != raw[position]
            and keys.parse(raw[:position] + char + raw[position + 1 :]) is not None
        ]
        assert accepted == []

    def test_rejects_a_wrong_length(self) -> None:
        """A key one character short or long is not a key, even with a valid checksum."""
        raw = _key()
        unsigned = raw[: -keys.CHECKSUM_LENGTH]
        assert keys.parse(signed(unsigned[:-1])) is None
        assert keys.parse(signed(unsigned + "x")) is None
        assert keys.parse(raw[:-1]) is None
        assert keys.parse(raw + "0") is None

    def test_rejects_an_unknown_prefix(self) -> None:
        """ck_prod_ is not a mode, even with a valid checksum."""
        body = _key()[8 : -keys.CHECKSUM_LENGTH]
        assert keys.parse(signed("ck_prod_" + body)) is None

    @pytest.mark.parametrize("char", ["-", "_", "+", "/", "=", " ", "é", "\x00"])
    def test_rejects_characters_outside_base62(self, char: str) -> None:
        """A body with a character outside base62 is refused, even with a valid checksum."""
        unsigned = _key()[: -keys.CHECKSUM_LENGTH]
        tampered = unsigned[:20] + char + unsigned[21:]
        assert keys.parse(tampered + "000000") is None
        if char.isascii():
            assert keys.parse(signed(tampered)) is None

    def test_rejects_a_live_body_under_the_test_prefix(self) -> None:
        """A live key re-prefixed as ck_test_ fails the checksum: the mode is part of the key."""
        raw = _key(Mode.LIVE)
        assert keys.parse("ck_test_" + raw[8:]) is None

    def test_rejects_a_test_body_under_the_live_prefix(self) -> None:
        """A test key re-prefixed as ck_live_ fails the checksum too."""
        raw = _key(Mode.TEST)
        assert keys.parse("ck_live_" + raw[8:]) is None

    @pytest.mark.parametrize("value", ["", "ck_live_", "Bearer", "ck_live_" + "0" * 50])
    def test_rejects_empty_and_made_up_values(self, value: str) -> None:
        """An empty string, a bare prefix and a made-up body are not keys."""
        assert keys.parse(value) is None

    @given(st.text(max_size=80))
    def test_never_raises(self, value: str) -> None:
        """Whatever text arrives, parse answers a key or None; it never raises."""
        parsed = keys.parse(value)
        assert parsed is None or parsed.raw_key == value

    def test_repr_never_contains_the_raw_key(self) -> None:
        """A parsed key can be logged: its repr shows neither the raw key nor its secret."""
        raw = _key()
        parsed = keys.parse(raw)
        assert parsed is not None
        text = repr(parsed) + str(parsed)
        assert raw not in text
        assert secret_of(raw) not in text
        assert parsed.key_id in text


class TestStripBearer:
    @pytest.mark.parametrize(
        "value",
        [
            "Bearer {key}",
            "bearer {key}",
            "BEARER {key}",
            "  Bearer {key}  ",
            "\tBearer   {key}\n",
            "{key}",
            "  {key} ",
        ],
    )
    def test_finds_the_key_in_a_header_value_or_raw(self, value: str) -> None:
        """The key comes out of a raw key or an Authorization header value, any case or padding."""
        raw = _key()
        assert keys.strip_bearer(value.format(key=raw)) == raw

    @pytest.mark.parametrize("value", ["", "   ", "Bearer ", "  bearer  "])
    def test_a_header_without_a_key_leaves_nothing(self, value: str) -> None:
        """An empty value, or the Bearer scheme followed by nothing but blanks, carries no key."""
        assert keys.strip_bearer(value) == ""
