"""Checks on what admin callers send: each limit, and the message that names it."""

from __future__ import annotations

import pytest

from keysvc.core import validation
from keysvc.core.errors import InvalidArgument


class TestAccountId:
    @pytest.mark.parametrize("value", ["acct_1", "A", "9", "org.eu-west:42_x", "a" * 64])
    def test_accepts_letters_digits_and_separators(self, value: str) -> None:
        """1 to 64 letters, digits and _-.: starting with a letter or digit pass unchanged."""
        assert validation.account_id(value) == value

    def test_requires_a_value(self) -> None:
        """An empty account id is refused as missing."""
        with pytest.raises(InvalidArgument, match=r"^account_id: required$"):
            validation.account_id("")

    def test_refuses_more_than_64_characters(self) -> None:
        """65 characters is one too many, and the message gives the limit."""
        with pytest.raises(InvalidArgument, match=r"^account_id: must be 1 to 64 "):
            validation.account_id("a" * 65)

    @pytest.mark.parametrize(
        "value",
        ["_acct", "-acct", ".acct", "acct 1", "acct/1", "acct\n", "acct\x00", "ac€t", " acct"],
    )
    def test_refuses_other_characters(self, value: str) -> None:
        """Spaces, slashes, control characters, non-ASCII and a leading separator are refused."""
        with pytest.raises(InvalidArgument) as caught:
            validation.account_id(value)
        assert str(caught.value) == (
            "account_id: must be 1 to 64 letters, digits, '_', '-', '.' or ':',"
            " starting with a letter or digit"
        )


class TestName:
    def test_strips_surrounding_blanks(self) -> None:
        """A name is kept without the blanks around it."""
        assert validation.name("  Production server \t") == "Production server"

    @pytest.mark.parametrize(
        "value", ["WooCommerce plugin", "Café \u2013 caisse", "Webhooks 🚀", "x"]
    )
    def test_accepts_printable_unicode(self, value: str) -> None:
        """Any printable text is a name, accents, dashes and emoji included."""
        assert validation.name(value) == value

    @pytest.mark.parametrize("value", ["", "   ", "\t\n"])
    def test_requires_a_value(self, value: str) -> None:
        """An empty or blank name is refused as missing, with an example of a good one."""
        with pytest.raises(InvalidArgument, match=r"^name: required, e\.g\. 'Production server'$"):
            validation.name(value)

    def test_accepts_exactly_100_characters(self) -> None:
        """100 characters is the longest name, counted after stripping blanks."""
        assert validation.name("n" * 100) == "n" * 100
        assert validation.name("  " + "n" * 100 + "  ") == "n" * 100

    def test_refuses_more_than_100_characters(self) -> None:
        """101 characters is refused, and the message gives the limit and the length."""
        with pytest.raises(InvalidArgument, match=r"^name: at most 100 characters, got 101$"):
            validation.name("n" * 101)

    @pytest.mark.parametrize(
        "char", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\u200b", "\u202e", "\ufeff", "\ue000"]
    )
    def test_refuses_control_and_invisible_characters(self, char: str) -> None:
        """Control, format (zero-width, bidi override) and private-use characters are refused."""
        with pytest.raises(
            InvalidArgument, match=r"^name: must not contain control or invisible characters$"
        ):
            validation.name(f"Production{char}server")


class TestKeyId:
    def test_accepts_twelve_letters_and_digits(self) -> None:
        """A key id is twelve base62 characters."""
        assert validation.key_id("a1B2c3D4e5F6") == "a1B2c3D4e5F6"

    def test_requires_a_value(self) -> None:
        """An empty id is refused as missing."""
        with pytest.raises(InvalidArgument, match=r"^id: required$"):
            validation.key_id("")

    @pytest.mark.parametrize(
        "value", ["a1B2c3D4e5F", "a1B2c3D4e5F6a", "a1B2c3D4e5F_", "ck_live_a1B2", "a1B2c3D4e5F\n"]
    )
    def test_refuses_anything_else(self, value: str) -> None:
        """Eleven or thirteen characters, or a non-base62 one, is not a key id."""
        with pytest.raises(
            InvalidArgument, match=r"^id: not a key id \(expected 12 letters and digits\)$"
        ):
            validation.key_id(value)


class TestPageSize:
    def test_zero_means_the_default(self) -> None:
        """A page size of 0 (unset in protobuf) means 50."""
        assert validation.page_size(0) == 50

    @pytest.mark.parametrize("value", [1, 50, 499, 500])
    def test_accepts_one_to_500(self, value: int) -> None:
        """Any page size from 1 to 500 is used as given."""
        assert validation.page_size(value) == value

    def test_refuses_negative(self) -> None:
        """A negative page size is refused, and the message gives it back."""
        with pytest.raises(InvalidArgument, match=r"^page_size: must not be negative, got -1$"):
            validation.page_size(-1)

    def test_refuses_more_than_500(self) -> None:
        """501 is over the maximum, and the message gives the maximum and the value."""
        with pytest.raises(InvalidArgument, match=r"^page_size: at most 500, got 501$"):
            validation.page_size(501)
