"""`keysvc serve --metrics-listen`: a real server's Prometheus metrics, scraped over HTTP as
Prometheus scrapes them, moved by real Authorize calls."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Backend
from tests.github_alerts import GitHubSigner, keys_document

from .harness import COMMAND_TIMEOUT, ServerFactory, clean_environ, serve_command, verdict

pytestmark = pytest.mark.slow

METRICS = ("--metrics-listen", "127.0.0.1:0")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample /metrics serves, by name and labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"/metrics has no {name}{labels}"
    return samples[key]


def forget_shared_cache(backend: Backend) -> None:
    """Empties the deployment's Redis namespace, as a Redis restarted without persistence."""
    if backend.redis_url is None:
        return
    client = redis.Redis.from_url(backend.redis_url)
    try:
        keys = list(client.scan_iter(f"{backend.redis_namespace}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def serve_and_fail(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        serve_command(tmp_path / "data", *args),
        env=clean_environ(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


class TestAuthorizeMovesTheCounters:
    def test_a_cold_key_is_read_once_then_decided_from_memory(
        self, server_factory: ServerFactory, backend: Backend, account: str
    ) -> None:
        """On a replica that has never seen the key (restarted, its shared cache emptied), the
        first Authorize misses every cache and reads the key from the database once; the next
        ones are decided from the replica's memory. Each is one decision."""
        first = server_factory.start(*METRICS)
        with first.client() as admin:
            created = admin.create_key(account, "Production server", "live", ["links:read"])
        assert first.stop() == 0
        forget_shared_cache(backend)
        server = server_factory.start(*METRICS, data_dir=first.data_dir)
        assert server.metrics_url.startswith("http://127.0.0.1:")
        before = scrape(server.metrics_url)

        with server.client(admin=False) as public:
            for _ in range(4):
                assert verdict(public.authorize(created.secret, ["links:read"])) == (
                    200,
                    "REASON_ALLOWED",
                )
        after = scrape(server.metrics_url)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("keysvc_cold_lookups_total") == 1
        assert moved("keysvc_cache_lookups_total", level="memory", result="miss") == 1
        assert moved("keysvc_cache_lookups_total", level="memory", result="hit") == 3
        if backend.redis_url is not None:
            assert moved("keysvc_cache_lookups_total", level="redis", result="miss") == 1
            assert moved("keysvc_cache_lookups_total", level="redis", result="hit") == 0
        assert moved("keysvc_authorize_decisions_total", reason="allowed", transport="unary") == 4
        assert moved("keysvc_authorize_duration_seconds_count", transport="unary") == 4
        assert value(after, "keysvc_hashing_queued") == 0
        for name in ("database", "redis"):
            assert value(after, "keysvc_backend_errors_total", backend=name) == 0

    def test_without_metrics_listen_nothing_is_served(self, server_factory: ServerFactory) -> None:
        server = server_factory.start()
        assert server.metrics_url == ""
        assert server.address_path.read_text().split() == [server.target]


class TestListener:
    def test_its_line_comes_after_the_http_listeners(
        self, server_factory: ServerFactory, tmp_path: Path
    ) -> None:
        """The address file keeps its order, gRPC then --http-listen, and adds the metrics'
        URL after them."""
        keys = tmp_path / "github-keys.json"
        keys.write_text(keys_document(GitHubSigner.new()))
        server = server_factory.start(
            *METRICS, "--http-listen", "127.0.0.1:0", "--github-keys-file", str(keys)
        )
        lines = server.address_path.read_text().split()
        assert lines == [server.target, server.http_url, server.metrics_url]
        assert server.http_url.startswith("http://127.0.0.1:")
        assert server.metrics_url.endswith("/metrics")
        assert value(scrape(server.metrics_url), "keysvc_cold_lookups_total") == 0

    def test_with_insecure_it_may_listen_beyond_loopback(
        self, server_factory: ServerFactory
    ) -> None:
        server = server_factory.start("--metrics-listen", "0.0.0.0:0", "--insecure")
        assert server.metrics_url.startswith("http://0.0.0.0:")
        samples = scrape(server.metrics_url.replace("0.0.0.0", "127.0.0.1"))
        assert value(samples, "keysvc_hashing_queued") == 0
        assert "--insecure: serving metrics on 0.0.0.0:0 in clear text" in server.read_log()

    @pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "keysvc.internal:9464"])
    def test_beyond_loopback_without_insecure_is_refused_at_start(
        self, tmp_path: Path, listen: str
    ) -> None:
        """`keysvc serve` exits 1 before opening the database, naming the flag and the way out."""
        result = serve_and_fail(tmp_path, "--metrics-listen", listen)
        assert result.returncode == 1, result.stderr
        assert f"keysvc: refusing to serve --metrics-listen {listen} beyond loopback" in (
            result.stderr
        )
        assert "--insecure" in result.stderr
        assert not (tmp_path / "data").exists()

    def test_a_port_already_taken_stops_the_server(self, tmp_path: Path) -> None:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
            result = serve_and_fail(tmp_path, "--metrics-listen", listen)
        assert result.returncode == 1, result.stderr
        assert f"keysvc: cannot listen on {listen} (--metrics-listen)" in result.stderr
        assert "shutting down" in result.stderr
