"""Settings from flags and KEYSVC_* variables: what each means, and a clear refusal of what
cannot be meant."""

from __future__ import annotations

import argparse

import pytest

from keysvc.runtime import config


def _settings(argv: list[str], env: dict[str, str] | None = None) -> config.Settings:
    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_options(parser, config.SERVE_OPTIONS)
    return config.settings_from(parser.parse_args(argv), env or {})


class TestLease:
    def test_defaults_to_one_second(self) -> None:
        """Without a flag or a variable the lease is 1 s (docs/revocation.md)."""
        assert _settings([]).lease_seconds == 1.0

    def test_a_flag_beats_the_variable(self) -> None:
        """--lease-seconds wins over $KEYSVC_LEASE_SECONDS, which wins over the default."""
        assert _settings([], {"KEYSVC_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
        flagged = _settings(["--lease-seconds", "0.5"], {"KEYSVC_LEASE_SECONDS": "2.5"})
        assert flagged.lease_seconds == 0.5

    @pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
    def test_a_lease_that_is_not_a_positive_time_is_refused(self, value: str) -> None:
        """Zero, negative or not a number: refused at start, naming the variable and value."""
        with pytest.raises(SystemExit, match=rf"\$KEYSVC_LEASE_SECONDS: .*'{value}'"):
            _settings([], {"KEYSVC_LEASE_SECONDS": value})
        with pytest.raises(argparse.ArgumentError, match="--lease-seconds"):
            _settings(["--lease-seconds", value])


class TestRedisNamespace:
    def test_the_old_names_still_work(self) -> None:
        """--redis-prefix and $KEYSVC_REDIS_PREFIX, the names of an earlier release, still set
        the namespace; the new names win."""
        assert _settings(["--redis-prefix", "old:"]).redis_namespace == "old:"
        assert _settings([], {"KEYSVC_REDIS_PREFIX": "env:"}).redis_namespace == "env:"
        both = _settings([], {"KEYSVC_REDIS_PREFIX": "old:", "KEYSVC_REDIS_NAMESPACE": "new:"})
        assert both.redis_namespace == "new:"
