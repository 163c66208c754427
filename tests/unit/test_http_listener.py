"""The settings of the GitHub secret scanning listener (--http-listen, --github-keys-file): what
they mean, and the refusals at start of what cannot work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from keysvc.core.errors import StartupError
from keysvc.runtime import config, http_listener
from tests.github_alerts import GitHubSigner, keys_document


def _settings(argv: list[str], env: dict[str, str] | None = None) -> config.Settings:
    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_options(parser, config.SERVE_OPTIONS)
    return config.settings_from(parser.parse_args(argv), env or {})


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "github-keys.json"
    path.write_text(keys_document(GitHubSigner.new()))
    return path


class TestSettings:
    def test_off_by_default(self) -> None:
        settings = _settings([])
        assert (settings.http_listen, settings.github_keys_file) == (None, None)
        assert http_listener.configured(settings) is None

    def test_from_flags_or_variables(self, keys_file: Path) -> None:
        flags = _settings(["--http-listen", "127.0.0.1:8443", "--github-keys-file", str(keys_file)])
        env = _settings(
            [], {"KEYSVC_HTTP_LISTEN": "127.0.0.1:8443", "KEYSVC_GITHUB_KEYS_FILE": str(keys_file)}
        )
        assert flags == env
        assert (flags.http_listen, flags.github_keys_file) == ("127.0.0.1:8443", keys_file)

    def test_a_loopback_listener_with_keys_is_configured(self, keys_file: Path) -> None:
        listener = http_listener.configured(
            _settings(["--http-listen", "127.0.0.1:0", "--github-keys-file", str(keys_file)])
        )
        assert listener is not None
        assert listener.public_keys is not None
        assert (listener.listen, listener.tls, len(listener.public_keys.keys)) == (
            "127.0.0.1:0",
            False,
            1,
        )


class TestRefusals:
    def test_a_listener_without_keys_is_refused(self) -> None:
        with pytest.raises(StartupError, match="needs --github-keys-file"):
            http_listener.configured(_settings(["--http-listen", "127.0.0.1:0"]))

    def test_keys_without_a_listener_are_refused(self, keys_file: Path) -> None:
        with pytest.raises(StartupError, match="give --http-listen HOST:PORT too"):
            http_listener.configured(_settings(["--github-keys-file", str(keys_file)]))

    @pytest.mark.parametrize("listen", ["0.0.0.0:8443", "[::]:8443", "keysvc.internal:8443"])
    def test_plaintext_beyond_loopback_is_refused(self, keys_file: Path, listen: str) -> None:
        """As on the gRPC listener: TLS, or --insecure when something in front terminates it."""
        argv = ["--http-listen", listen, "--github-keys-file", str(keys_file)]
        with pytest.raises(StartupError, match=r"without TLS.*--tls-cert.*--insecure"):
            http_listener.configured(_settings(argv))

        insecure = http_listener.configured(_settings([*argv, "--insecure"]))
        assert insecure is not None
        assert not insecure.tls

    def test_with_tls_it_may_listen_beyond_loopback(self, keys_file: Path) -> None:
        argv = ["--http-listen", "0.0.0.0:8443", "--github-keys-file", str(keys_file)]
        tls = ["--tls-cert", "server.pem", "--tls-key", "server-key.pem"]
        listener = http_listener.configured(_settings([*argv, *tls]))
        assert listener is not None
        assert listener.tls

    def test_a_bad_keys_file_is_refused_naming_it(self, tmp_path: Path) -> None:
        path = tmp_path / "github-keys.json"
        path.write_text('{"public_keys": []}')
        argv = ["--http-listen", "127.0.0.1:0", "--github-keys-file", str(path)]

        with pytest.raises(
            StartupError, match=f'--github-keys-file {path}: "public_keys" is empty'
        ):
            http_listener.configured(_settings(argv))
