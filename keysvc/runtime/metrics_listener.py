"""The listener of --metrics-listen: Prometheus metrics (keysvc.adapters.metrics) on
`/metrics`, over plaintext HTTP, served by prometheus-client's own server on a thread of its
own, for one `keysvc serve` process or for a supervisor summing its workers'.

The series say nothing secret, but they do say how busy keysvc is and how often keys fail: like
the other plaintext listeners, this one stays on loopback unless --insecure allows more.

A supervisor (`keysvc serve --workers N`) runs it this way:

1. `use_multiprocess(directory)` before it starts any worker: a directory of its own (a
   temporary one will do), cleared of an earlier run's files and named in
   $PROMETHEUS_MULTIPROC_DIR, which every worker it starts must inherit. A worker must see
   the variable before it imports prometheus_client: started afresh (`python -m keysvc
   serve ...`) it does; one forked from a process that had imported it refuses to start
   (keysvc.adapters.metrics.multiprocess_directory), since its series would never reach
   the files.
2. The workers run with the same settings, --metrics-listen included: each counts into the
   directory and serves nothing itself (`serve_process` sees the variable).
3. `serve_workers(settings)` in the supervisor, once it may bind: the workers' sum on
   --metrics-listen; its `url` goes on the address file's line, `stop()` at shutdown.
4. `worker_exited(pid)` whenever a worker exits, so that what it had in flight (the
   `keysvc_hashing_queued` gauge) leaves the sum; its counters stay counted.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from keysvc.adapters.metrics import MULTIPROCESS_VARIABLE, PrometheusMetrics, multiprocess_directory
from keysvc.core.errors import StartupError
from keysvc.ports.metrics import Metrics
from keysvc.runtime.config import Settings
from keysvc.runtime.security import is_loopback

log = logging.getLogger(__name__)

PATH = "/metrics"


def check(settings: Settings) -> None:
    """Refuses, before anything starts, a --metrics-listen that is not HOST:PORT, or that
    reaches beyond loopback without --insecure."""
    listen = settings.metrics_listen
    if listen is None:
        return
    _host_and_port(listen)
    if is_loopback(listen):
        return
    if not settings.insecure:
        raise StartupError(
            f"refusing to serve --metrics-listen {listen} beyond loopback: metrics are served"
            " in clear text, without a credential. Give a loopback address such as"
            " 127.0.0.1:9464, or pass --insecure if the network in between is trusted"
        )
    log.warning("--insecure: serving metrics on %s in clear text", listen)


@dataclass
class MetricsServer:
    """A running metrics listener."""

    # http://HOST:PORT/metrics, with the port the system picked for port 0.
    url: str
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        """Stops serving (blocks up to half a second, the server's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(listen: str, registry: Collector) -> MetricsServer:
    """Serves `registry` on `listen` (HOST:PORT; port 0 picks a free one) until stop()."""
    host, port = _host_and_port(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, OverflowError) as err:
        raise StartupError(f"cannot listen on {listen} (--metrics-listen): {err}") from err
    url = f"http://{listen.rpartition(':')[0]}:{server.server_port}{PATH}"
    log.info("metrics on %s", url)
    return MetricsServer(url, server, thread)


def serve_process(settings: Settings, metrics: Metrics) -> MetricsServer | None:
    """What `keysvc serve` runs: its own series on --metrics-listen. None when there is no
    --metrics-listen, or when this process is a worker counting for a supervisor."""
    if settings.metrics_listen is None or not isinstance(metrics, PrometheusMetrics):
        return None
    directory = multiprocess_directory()
    if directory is not None:
        log.info("metrics: counted into %s, served by the supervisor", directory)
        return None
    return serve(settings.metrics_listen, metrics.registry)


def use_multiprocess(directory: Path) -> None:
    """Makes `directory` the one the workers this process starts count into (made if need be;
    the series files an earlier run left there removed, so that counting starts afresh)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for left in directory.glob("*.db"):
        left.unlink()
    os.environ[MULTIPROCESS_VARIABLE] = str(directory)


def serve_workers(settings: Settings) -> MetricsServer | None:
    """What a supervisor runs: the sum of its workers' series on --metrics-listen (None
    without it). Needs use_multiprocess first."""
    if settings.metrics_listen is None:
        return None
    check(settings)
    directory = os.environ.get(MULTIPROCESS_VARIABLE)
    if not directory:
        raise StartupError(
            f"the workers' metrics need ${MULTIPROCESS_VARIABLE}: call use_multiprocess"
        )
    registry = CollectorRegistry()
    # prometheus_client.multiprocess has no annotations.
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return serve(settings.metrics_listen, registry)


def worker_exited(pid: int) -> None:
    """Takes an exited worker's gauges out of the sum."""
    mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _host_and_port(listen: str) -> tuple[str, int]:
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise StartupError(f"--metrics-listen {listen}: expected HOST:PORT") from None
    if not host or not 0 <= port <= 65535:
        raise StartupError(f"--metrics-listen {listen}: expected HOST:PORT")
    return host.strip("[]"), port
