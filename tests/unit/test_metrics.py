"""Prometheus metrics: the series PrometheusMetrics keeps, what the workers, the near cache and
keysvc as built report into them, and the /metrics listener, alone and summing workers."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.adapters.cache.near import NearKeyCache
from keysvc.adapters.metrics import MULTIPROCESS_VARIABLE, PrometheusMetrics, multiprocess_directory
from keysvc.adapters.workers import ThreadWorkers
from keysvc.core.errors import StartupError, Unavailable
from keysvc.core.model import Actor, KeyGrant, Mode
from keysvc.ports.metrics import NO_METRICS
from keysvc.runtime import build, config, metrics_listener

from .conftest import SETTINGS
from .support import CountingVerifier, async_test, within_deadline

ADMIN = Actor("admin", "ipv4:127.0.0.1:50000")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def _decisions(registry: CollectorRegistry, reason: str, transport: str = "unary") -> float:
    return _value(registry, "keysvc_authorize_decisions_total", reason=reason, transport=transport)


def _lookups(registry: CollectorRegistry, level: str, result: str) -> float:
    return _value(registry, "keysvc_cache_lookups_total", level=level, result=result)


def _settings(argv: list[str], env: dict[str, str] | None = None) -> config.Settings:
    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_options(parser, config.SERVE_OPTIONS)
    return config.settings_from(parser.parse_args(argv), env or {})


def _grant(key_id: str = "a1B2c3D4e5F6") -> KeyGrant:
    return KeyGrant(
        key_id=key_id,
        account_id="acct_1",
        mode=Mode.LIVE,
        scopes=frozenset({"links:read"}),
        revoked=False,
        seq=1,
        digest=hashlib.sha256(key_id.encode()).digest(),
    )


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics serves, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class TestSeries:
    def test_every_series_starts_at_zero(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """Each reason, level, channel and backend is there from the first scrape, at 0, so
        that rates and alerts see it before it first moves."""
        for reason in ("allowed", "revoked", "not_found", "unavailable"):
            for transport in ("unary", "session"):
                assert _decisions(registry, reason, transport) == 0
        for level in ("memory", "redis"):
            for result in ("hit", "miss"):
                assert _lookups(registry, level, result) == 0
        for channel in ("replicas", "sessions"):
            assert _value(registry, "keysvc_pushes_sent_total", channel=channel) == 0
            assert _value(registry, "keysvc_pushes_received_total", channel=channel) == 0
        for backend in ("database", "redis"):
            assert _value(registry, "keysvc_backend_errors_total", backend=backend) == 0
        assert _value(registry, "keysvc_cold_lookups_total") == 0
        assert _value(registry, "keysvc_hashing_queued") == 0
        assert _value(registry, "keysvc_revocation_wait_seconds_count") == 0

    def test_a_decision_counts_by_reason_and_transport_and_times_authorize(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        metrics.decision("allowed", 0.00002, transport="unary")
        metrics.decision("allowed", 0.3, transport="unary")
        metrics.decision("revoked", 0.00001, transport="session")
        assert _decisions(registry, "allowed") == 2
        assert _decisions(registry, "revoked", "session") == 1
        assert _decisions(registry, "revoked") == 0
        name = "keysvc_authorize_duration_seconds"
        assert _value(registry, f"{name}_count", transport="unary") == 2
        assert _value(registry, f"{name}_sum", transport="unary") == pytest.approx(0.30002)
        assert _value(registry, f"{name}_bucket", transport="unary", le="2.5e-05") == 1
        assert _value(registry, f"{name}_bucket", transport="unary", le="0.25") == 1
        assert _value(registry, f"{name}_bucket", transport="unary", le="0.5") == 2
        assert _value(registry, f"{name}_bucket", transport="session", le="1e-05") == 1

    def test_the_latency_buckets_span_10_microseconds_to_1_second(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        bounds = [
            float(sample.labels["le"])
            for family in registry.collect()
            if family.name == "keysvc_authorize_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_bucket") and sample.labels["transport"] == "unary"
        ]
        assert (bounds[0], bounds[-2], bounds[-1]) == (0.00001, 1.0, float("inf"))

    @pytest.mark.parametrize("reason", ["REVOKED", "REASON_REVOKED", "revoked"])
    def test_a_reason_by_name_value_or_protobuf_name_is_one_series(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry, reason: str
    ) -> None:
        metrics.decision(reason, 0.001, transport="unary")
        metrics.decision(reason, 0.001, transport="unary")
        assert _decisions(registry, "revoked") == 2

    def test_label_values_first_seen_later_are_counted(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        metrics.decision("rate_limited", 0.001, transport="stream")
        metrics.decision("rate_limited", 0.001, transport="stream")
        assert _decisions(registry, "rate_limited", "stream") == 2
        assert _value(registry, "keysvc_authorize_duration_seconds_count", transport="stream") == 2

    def test_cache_lookups_count_by_level_and_result(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        metrics.cache_lookup("memory", hit=True)
        metrics.cache_lookup("memory", hit=False)
        metrics.cache_lookup("memory", hit=False)
        metrics.cache_lookup("redis", hit=True)
        assert _lookups(registry, "memory", "hit") == 1
        assert _lookups(registry, "memory", "miss") == 2
        assert _lookups(registry, "redis", "hit") == 1
        assert _lookups(registry, "redis", "miss") == 0

    def test_the_rest(self, metrics: PrometheusMetrics, registry: CollectorRegistry) -> None:
        """Cold look-ups, argon2 in flight, RevokeKey's wait, pushes and backend errors."""
        metrics.cold_lookup()
        metrics.hashing_queued(1)
        metrics.hashing_queued(1)
        metrics.hashing_queued(-1)
        metrics.revocation_wait(1.02)
        metrics.push_sent("replicas")
        metrics.push_sent("sessions", 3)
        metrics.push_received("replicas", 2)
        metrics.backend_error("redis")
        assert _value(registry, "keysvc_cold_lookups_total") == 1
        assert _value(registry, "keysvc_hashing_queued") == 1
        assert _value(registry, "keysvc_revocation_wait_seconds_bucket", le="1.0") == 0
        assert _value(registry, "keysvc_revocation_wait_seconds_bucket", le="1.5") == 1
        assert _value(registry, "keysvc_pushes_sent_total", channel="replicas") == 1
        assert _value(registry, "keysvc_pushes_sent_total", channel="sessions") == 3
        assert _value(registry, "keysvc_pushes_received_total", channel="replicas") == 2
        assert _value(registry, "keysvc_backend_errors_total", backend="redis") == 1
        assert _value(registry, "keysvc_backend_errors_total", backend="database") == 0


class TestWorkers:
    @pytest.fixture
    def workers(self, metrics: PrometheusMetrics) -> Iterator[ThreadWorkers]:
        workers = ThreadWorkers(db_timeout_seconds=0.2, hashing_threads=1, metrics=metrics)
        yield workers
        workers.close()

    @async_test
    async def test_each_read_of_a_key_is_a_cold_lookup(
        self, workers: ThreadWorkers, registry: CollectorRegistry
    ) -> None:
        assert await workers.lookup(lambda: "key") == "key"
        await workers.db(lambda: None)
        assert _value(registry, "keysvc_cold_lookups_total") == 1

    @async_test
    async def test_a_database_call_that_fails_or_times_out_is_a_backend_error(
        self, workers: ThreadWorkers, registry: CollectorRegistry
    ) -> None:
        def fails() -> None:
            raise Unavailable("database unavailable")

        release = threading.Event()
        with pytest.raises(Unavailable):
            await workers.db(fails)
        with pytest.raises(Unavailable, match="in time"):
            await workers.lookup(release.wait, 5)
        release.set()
        # Other errors are the caller's, not the database's.
        with pytest.raises(ZeroDivisionError):
            await workers.db(lambda: 1 // 0)
        assert _value(registry, "keysvc_backend_errors_total", backend="database") == 2

    @async_test
    async def test_argon2_jobs_count_while_queued_or_running(
        self, workers: ThreadWorkers, registry: CollectorRegistry
    ) -> None:
        """With one thread, one job runs and the next waits: both count until each is done."""
        started, release = threading.Event(), threading.Event()

        def job() -> str:
            started.set()
            release.wait(5)
            return "hashed"

        first = asyncio.ensure_future(workers.hashing(job))
        second = asyncio.ensure_future(workers.hashing(job))
        await asyncio.to_thread(started.wait, 5)
        assert _value(registry, "keysvc_hashing_queued") == 2
        release.set()
        assert await within_deadline(asyncio.gather(first, second)) == ["hashed", "hashed"]
        assert _value(registry, "keysvc_hashing_queued") == 0

    @async_test
    async def test_a_job_whose_caller_gave_up_counts_until_the_pool_is_done_with_it(
        self, workers: ThreadWorkers, registry: CollectorRegistry
    ) -> None:
        started, release = threading.Event(), threading.Event()

        def job() -> None:
            started.set()
            release.wait(5)

        waiting = asyncio.ensure_future(workers.hashing(job))
        await asyncio.to_thread(started.wait, 5)
        waiting.cancel()
        await asyncio.sleep(0)
        assert _value(registry, "keysvc_hashing_queued") == 1
        release.set()
        for _ in range(500):
            if _value(registry, "keysvc_hashing_queued") == 0:
                break
            await asyncio.sleep(0.01)
        assert _value(registry, "keysvc_hashing_queued") == 0


class _DownCache:
    """A shared cache that cannot answer."""

    async def get(self, key_id: str) -> KeyGrant | None:
        raise Unavailable("redis unavailable")

    async def put(self, grant: KeyGrant) -> None:
        raise Unavailable("redis unavailable")

    async def close(self) -> None:
        pass


class TestNearCache:
    @async_test
    async def test_lookups_count_at_each_level_they_reach(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """A miss in memory goes on to the shared cache; a hit there fills memory, so the
        next look-up stops at memory."""
        shared = MemoryKeyCache()
        await shared.put(_grant())
        cache = NearKeyCache(MemoryKeyCache(), shared, metrics=metrics)
        assert await cache.get("a1B2c3D4e5F6") == _grant()
        assert await cache.get("a1B2c3D4e5F6") == _grant()
        assert await cache.get("zzzzzzzzzzzz") is None
        assert (_lookups(registry, "memory", "hit"), _lookups(registry, "memory", "miss")) == (1, 2)
        assert (_lookups(registry, "redis", "hit"), _lookups(registry, "redis", "miss")) == (1, 1)

    @async_test
    async def test_without_a_shared_cache_memory_is_the_only_level(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        cache = NearKeyCache(MemoryKeyCache(), None, metrics=metrics)
        assert await cache.get("a1B2c3D4e5F6") is None
        await cache.put(_grant())
        assert await cache.get("a1B2c3D4e5F6") == _grant()
        assert (_lookups(registry, "memory", "hit"), _lookups(registry, "memory", "miss")) == (1, 1)
        assert _lookups(registry, "redis", "miss") == 0

    @async_test
    async def test_a_shared_cache_that_cannot_answer_is_a_backend_error_not_a_miss(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        cache = NearKeyCache(MemoryKeyCache(), _DownCache(), metrics=metrics)
        with pytest.raises(Unavailable):
            await cache.get("a1B2c3D4e5F6")
        with pytest.raises(Unavailable):
            await cache.put(_grant())
        assert _value(registry, "keysvc_backend_errors_total", backend="redis") == 2
        assert _lookups(registry, "redis", "miss") == 0
        # The write still reached this replica's memory.
        assert await cache.get("a1B2c3D4e5F6") == _grant()


class TestBuilt:
    def test_nothing_is_counted_without_metrics_listen(self) -> None:
        assert build.open_metrics(_settings([])) is NO_METRICS
        assert isinstance(
            build.open_metrics(_settings(["--metrics-listen", "127.0.0.1:0"])), PrometheusMetrics
        )

    @async_test
    async def test_authorize_reports_a_cold_lookup_then_memory_hits(
        self, engine: Engine, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """keysvc as built hands its metrics to the workers and the cache: on a replica that
        has not seen the key, its first Authorize reads it from the database once (and runs
        argon2 once), later ones stop in the replica's memory."""
        seams = build.Seams(verifier=CountingVerifier())
        async with build.built(SETTINGS, engine=engine, seams=seams) as creator:
            created = await creator.admin.create_key(
                "acct_1", "Production server", Mode.LIVE, ["links:read"], ADMIN
            )
            async with build.built(
                SETTINGS, engine=engine, seams=seams, metrics=metrics
            ) as replica:
                assert replica.metrics is metrics
                for _ in range(3):
                    assert (await replica.authorizer.authorize(created.raw_key)).allowed
        assert _value(registry, "keysvc_cold_lookups_total") == 1
        assert _lookups(registry, "memory", "miss") == 1
        assert _lookups(registry, "memory", "hit") == 2
        # The first Authorize's argon2 is done.
        assert _value(registry, "keysvc_hashing_queued") == 0


class TestListener:
    def test_the_setting_from_a_flag_or_a_variable(self) -> None:
        flags = _settings(["--metrics-listen", "127.0.0.1:9464"])
        env = _settings([], {"KEYSVC_METRICS_LISTEN": "127.0.0.1:9464"})
        assert flags == env
        assert flags.metrics_listen == "127.0.0.1:9464"
        assert _settings([]).metrics_listen is None

    @pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:0"])
    def test_loopback_is_allowed(self, listen: str) -> None:
        metrics_listener.check(_settings(["--metrics-listen", listen]))

    @pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "keysvc.internal:9464"])
    def test_beyond_loopback_needs_insecure(self, listen: str) -> None:
        with pytest.raises(StartupError, match=r"beyond loopback.*--insecure"):
            metrics_listener.check(_settings(["--metrics-listen", listen]))
        metrics_listener.check(_settings(["--metrics-listen", listen, "--insecure"]))

    @pytest.mark.parametrize("listen", ["9464", "127.0.0.1:", "127.0.0.1:http", ":9464"])
    def test_not_host_and_port_is_refused(self, listen: str) -> None:
        with pytest.raises(StartupError, match="expected HOST:PORT"):
            metrics_listener.check(_settings(["--metrics-listen", listen]))

    def test_serves_a_process_series_on_port_0(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        metrics.decision("allowed", 0.0001, transport="unary")
        served = metrics_listener.serve_process(
            _settings(["--metrics-listen", "127.0.0.1:0"]), metrics
        )
        assert served is not None
        try:
            assert served.url.startswith("http://127.0.0.1:")
            assert not served.url.startswith("http://127.0.0.1:0/")
            assert served.url.endswith("/metrics")
            samples = _scrape(served.url)
        finally:
            served.stop()
        key = (
            "keysvc_authorize_decisions_total",
            (("reason", "allowed"), ("transport", "unary")),
        )
        assert samples[key] == 1

    def test_a_port_taken_is_a_startup_error(self, metrics: PrometheusMetrics) -> None:
        first = metrics_listener.serve("127.0.0.1:0", metrics.registry)
        try:
            port = first.url.rsplit(":", 1)[1].split("/")[0]
            with pytest.raises(
                StartupError, match=r"cannot listen on 127\.0\.0\.1:.*--metrics-listen"
            ):
                metrics_listener.serve(f"127.0.0.1:{port}", metrics.registry)
        finally:
            first.stop()

    def test_nothing_is_served_without_prometheus_metrics(self) -> None:
        settings = _settings(["--metrics-listen", "127.0.0.1:0"])
        assert metrics_listener.serve_process(settings, NO_METRICS) is None


# A worker: counts one decision, one look-up and one argon2 job it never finishes, in the
# directory its environment names, and exits (or refuses to start, with its message).
_WORKER = """
import sys
from prometheus_client import CollectorRegistry
from keysvc.adapters.metrics import PrometheusMetrics, multiprocess_directory
from keysvc.core.errors import StartupError
try:
    multiprocess_directory()
except StartupError as err:
    sys.exit(f"refused: {err}")
metrics = PrometheusMetrics(CollectorRegistry())
metrics.decision("allowed", 0.001, transport="unary")
metrics.cache_lookup("memory", hit=True)
metrics.hashing_queued(1)
"""


def _run_worker(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, MULTIPROCESS_VARIABLE: str(directory)}
    return subprocess.run(
        [sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the test sets $PROMETHEUS_MULTIPROC_DIR to is undone after it."""
    monkeypatch.setenv(MULTIPROCESS_VARIABLE, "")
    monkeypatch.delenv(MULTIPROCESS_VARIABLE)


@pytest.mark.usefixtures("environ")
class TestMultiprocess:
    def test_a_supervisor_serves_the_sum_of_its_workers(self, tmp_path: Path) -> None:
        """Counters add up across workers; a worker's gauge leaves the sum once it is
        reported gone, its counters stay."""
        directory = tmp_path / "metrics"
        metrics_listener.use_multiprocess(directory)
        assert os.environ[MULTIPROCESS_VARIABLE] == str(directory)
        workers = [_run_worker(directory) for _ in range(2)]
        assert [worker.returncode for worker in workers] == [0, 0], workers
        served = metrics_listener.serve_workers(_settings(["--metrics-listen", "127.0.0.1:0"]))
        assert served is not None
        try:
            before = _scrape(served.url)
            pid = next(int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("gauge_livesum_*"))
            metrics_listener.worker_exited(pid)
            after = _scrape(served.url)
        finally:
            served.stop()
        decisions = (
            "keysvc_authorize_decisions_total",
            (("reason", "allowed"), ("transport", "unary")),
        )
        memory_hits = ("keysvc_cache_lookups_total", (("level", "memory"), ("result", "hit")))
        queued = ("keysvc_hashing_queued", ())
        assert (before[decisions], before[memory_hits], before[queued]) == (2, 2, 2)
        assert (after[decisions], after[memory_hits], after[queued]) == (2, 2, 1)

    def test_use_multiprocess_clears_what_an_earlier_run_counted(self, tmp_path: Path) -> None:
        directory = tmp_path / "metrics"
        directory.mkdir()
        (directory / "counter_123.db").write_bytes(b"left by an earlier run")
        (directory / "notes.txt").write_text("not ours")
        metrics_listener.use_multiprocess(directory)
        assert [path.name for path in directory.iterdir()] == ["notes.txt"]

    def test_a_worker_without_its_directory_refuses_to_start(self, tmp_path: Path) -> None:
        worker = _run_worker(tmp_path / "missing")
        assert worker.returncode == 1
        assert "refused:" in worker.stderr and "not a directory" in worker.stderr

    def test_the_variable_set_after_prometheus_client_was_imported_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """This process imported prometheus_client without the variable: its series live in
        its memory, where no supervisor would see them."""
        monkeypatch.setenv(MULTIPROCESS_VARIABLE, str(tmp_path))
        with pytest.raises(StartupError, match="set after prometheus_client was imported"):
            multiprocess_directory()

    def test_serve_workers_needs_the_directory(self) -> None:
        with pytest.raises(StartupError, match="use_multiprocess"):
            metrics_listener.serve_workers(_settings(["--metrics-listen", "127.0.0.1:0"]))
        assert metrics_listener.serve_workers(_settings([])) is None
