"""`keysvc serve --workers N`: a supervising process and N worker processes, each a full keysvc
replica, all listening on the same ports (SO_REUSEPORT), among which the kernel spreads
connections.

A worker is `keysvc serve` itself, run again with an internal flag (`--worker-of`) and its
settings in the environment, so that nothing is ever forked from a process running gRPC or an
event loop. Workers coordinate as separate replicas do, through the database's change log
(docs/revocation.md); the supervisor holds no keysvc state. What it does:

- before any worker starts, what runs once: the checks of the settings, the admin token
  generated, the database migrated, and every listener's port chosen and held;
- starts the workers, and writes the address file once every one of them serves;
- forwards SIGTERM and SIGINT to every worker and waits for all of them;
- restarts a worker that dies (after a short, growing delay), while the others keep serving;
- stops the others and fails when a worker cannot start at all (bad settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from keysvc.core.errors import StartupError
from keysvc.runtime import build, config, http_listener, metrics_listener, security, server
from keysvc.runtime.config import Settings

log = logging.getLogger(__name__)

# A restarted worker waits this long, doubled on each death in a row, up to the most.
_RESTART_DELAY_SECONDS = 0.5
_RESTART_DELAY_MAX_SECONDS = 30.0
# A worker that served this long before it died starts the doubling afresh.
_STABLE_SECONDS = 60.0
# Beyond the shutdown grace, what a worker's last steps may take (its last-used flush, with
# the database's timeout) before the supervisor kills it.
_STOP_MARGIN_SECONDS = 15.0
_RESERVE_ATTEMPTS = 10
_PR_SET_PDEATHSIG = 1


def supervise(settings: Settings, *, address_file: Path | None = None) -> int:
    """Runs settings.workers workers until SIGTERM or SIGINT; returns the exit code (0 when
    every worker stopped gracefully). A StartupError means no worker serves."""
    if sys.platform != "linux":
        raise StartupError(
            "--workers needs Linux: the kernel spreading one port's connections among"
            " processes (SO_REUSEPORT), and workers dying with their supervisor"
        )
    metrics = _MetricsHook(settings)
    # Each worker checks these again as it starts; checked here first, a bad setting is one
    # clear error before any worker starts.
    security.server_credentials(settings)
    security.check_health_listen(settings)
    http_listener.configured(settings)
    # What must run once: the admin token generated (when the settings call for one), the
    # schema migrated. The workers then read the token and find the schema up to date.
    security.gate(settings)
    build.open_database(settings).dispose()
    with _held_ports(settings) as workers_settings:
        metrics.before_workers()
        supervisor = _Supervisor(workers_settings, metrics)
        code = asyncio.run(supervisor.run(address_file))
    if supervisor.failed is not None:
        raise StartupError(supervisor.failed)
    return code


def run_worker(settings: Settings, *, supervisor_pid: int) -> None:
    """`keysvc serve` as one of a supervisor's workers: serves `settings` (the supervisor's,
    its ports fixed) until SIGTERM, and tells the supervisor when it serves."""
    _die_with(supervisor_pid)
    # The supervisor reads this worker's standard output for one line: the addresses it serves
    # on, once it does. Anything else printed goes to standard error, with the log.
    status = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def report(lines: list[str]) -> None:
        status.write(json.dumps(lines) + "\n")
        status.close()

    asyncio.run(server.serve(settings, on_serving=report))


def _die_with(supervisor_pid: int) -> None:
    """Has the kernel send this process SIGTERM, the signal the supervisor would forward, when
    the supervisor exits however it exits (SIGKILL included)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise StartupError(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    # The supervisor may have gone before the prctl took effect.
    if os.getppid() != supervisor_pid:
        raise StartupError(f"worker: its supervisor (pid {supervisor_pid}) is gone")


# -- the ports --------------------------------------------------------------------------------


@contextlib.contextmanager
def _held_ports(settings: Settings) -> Iterator[Settings]:
    """The settings every worker gets: each listener's port chosen (port 0: a free one, the
    same for all workers) and held by the supervisor until it exits.

    The supervisor holds a port with a socket bound with SO_REUSEPORT on which it never calls
    listen(): the workers' listening sockets join it on the port, and the kernel hands new
    connections to listening sockets only, so it takes none (with no worker listening beside
    it, a connection is refused, not queued; tests/e2e/test_workers.py fails if it listens).
    It makes port 0 one port for every worker, and keeps the port while workers restart. It is
    a reservation, not a lock: while no worker listens, a program binding with SO_REUSEADDR
    (or the same user's, with SO_REUSEPORT) could still take the port.
    """
    with contextlib.ExitStack() as held:
        listen = held.enter_context(_held("--listen", settings.listen))
        http_listen = health_listen = None
        if settings.http_listen is not None:
            http_listen = held.enter_context(_held("--http-listen", settings.http_listen))
        if settings.health_listen is not None:
            health_listen = held.enter_context(_held("--health-listen", settings.health_listen))
        yield replace(settings, listen=listen, http_listen=http_listen, health_listen=health_listen)


@contextlib.contextmanager
def _held(flag: str, listen: str) -> Iterator[str]:
    """`listen` (HOST:PORT) with its port chosen and held on every address HOST names (gRPC
    binds them all: localhost is 127.0.0.1 and ::1)."""
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
        addresses = {
            (family, str(address[0]))
            for family, _, _, _, address in socket.getaddrinfo(
                host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        }
    except (ValueError, OSError) as err:
        raise StartupError(f"cannot listen on {listen} ({flag}): {err}") from err
    for _ in range(_RESERVE_ATTEMPTS):
        sockets: list[socket.socket] = []
        chosen = port
        try:
            for family, address in sorted(addresses):
                sockets.append(_hold(family, address, chosen))
                chosen = sockets[-1].getsockname()[1]
        except OSError as err:
            for sock in sockets:
                sock.close()
            if port == 0 and err.errno == errno.EADDRINUSE:
                continue  # the port picked on one address is taken on another: pick again
            raise StartupError(f"cannot listen on {listen} ({flag}): {err.strerror}") from err
        try:
            yield f"{host}:{chosen}"
        finally:
            for sock in sockets:
                sock.close()
        return
    raise StartupError(f"cannot listen on {listen} ({flag}): no port free on every address")


def _hold(family: int, address: str, port: int) -> socket.socket:
    # First without SO_REUSEPORT, which fails when anything listens there already: a second
    # supervisor's workers, or a single keysvc, never silently share the port with this one's.
    # SO_REUSEADDR as every keysvc listener, so that a restart binds despite old connections.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


# -- the workers ------------------------------------------------------------------------------


def _worker_command(number: int) -> list[str]:
    # The flags keysvc.cli declares for workers.
    return [
        sys.executable,
        "-m",
        "keysvc",
        "serve",
        "--worker-of",
        str(os.getpid()),
        "--worker-number",
        str(number),
    ]


def worker_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with every setting of `keysvc serve` in its KEYSVC_* variable, as `settings`
    has it: a worker reads exactly the supervisor's settings the way `keysvc serve` reads any,
    with no secret (a Redis URL's password) on a command line."""
    env = dict(environ)
    for option in config.SERVE_OPTIONS:
        for name in (option.env, option.old_env):
            if name:
                env.pop(name, None)
        if option.dest.startswith("argon2_"):
            value = getattr(settings.argon2, option.dest.removeprefix("argon2_"))
        else:
            value = getattr(settings, option.dest)
        if value is None:
            continue
        if isinstance(value, bool):
            env[option.env] = "true" if value else "false"
        elif isinstance(value, (tuple, list)):
            # Lists are read back from their variables as comma-separated values.
            env[option.env] = ",".join(str(item) for item in value)
        else:
            env[option.env] = str(value)
    env.pop("KEYSVC_ADMIN_TOKEN", None)
    if settings.admin_token:
        env["KEYSVC_ADMIN_TOKEN"] = settings.admin_token
    return env


def _described(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


@dataclass
class _Worker:
    """One of the N places: the process filling it now, started again when it dies."""

    number: int
    process: asyncio.subprocess.Process | None = None
    # What it serves on, as the address file has it; set once it first serves.
    lines: list[str] | None = None
    # How it ended once the supervisor stopped it: its exit code.
    stop_code: int | None = None

    def __post_init__(self) -> None:
        self.serving = asyncio.Event()

    def signal(self, sig: signal.Signals) -> None:
        # os.kill rather than Process.send_signal, whose poll() may reap the process before
        # asyncio's child watcher does.
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)


class _Supervisor:
    def __init__(self, settings: Settings, metrics: _MetricsHook) -> None:
        self._settings = settings
        self._metrics = metrics
        self._environment = worker_environment(settings, os.environ)
        self._workers = [_Worker(number) for number in range(1, settings.workers + 1)]
        self._stopping = asyncio.Event()
        # Every worker has served: from then on a worker that cannot start is retried.
        self._started = False
        # Why keysvc could not start (a worker could not), for the command's error.
        self.failed: str | None = None

    async def run(self, address_file: Path | None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        log.info(
            "starting %d workers on %s%s%s",
            len(self._workers),
            self._settings.listen,
            f", HTTP on {self._settings.http_listen}" if self._settings.http_listen else "",
            f", health on {self._settings.health_listen}" if self._settings.health_listen else "",
        )
        keeping = [
            asyncio.create_task(self._keep(worker), name=f"worker-{worker.number}")
            for worker in self._workers
        ]
        all_serving = asyncio.create_task(self._all_serving())
        stopped = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([*keeping, all_serving, stopped], return_when=asyncio.FIRST_COMPLETED)
        if all_serving.done() and not self._stopping.is_set():
            self._started = True
            lines = self._serving_lines()
            lines += self._metrics.serving()
            if address_file is not None:
                server.write_address_file(address_file, lines)
            log.info("keysvc listening on %s with %d workers", lines[0], len(self._workers))
            await stopped
        all_serving.cancel()
        if not self._stopping.is_set():
            self._stop(None)
        code = await self._stopped(keeping)
        stopped.cancel()
        self._metrics.stop()
        log.info("keysvc stopped")
        return 1 if self.failed is not None else code

    async def _all_serving(self) -> None:
        for worker in self._workers:
            await worker.serving.wait()

    def _serving_lines(self) -> list[str]:
        first = self._workers[0].lines
        assert first is not None
        for worker in self._workers[1:]:
            if worker.lines != first:
                log.error(
                    "worker %d serves on %s, worker 1 on %s", worker.number, worker.lines, first
                )
        return list(first)

    def _stop(self, sig: signal.Signals | None) -> None:
        """Stops every worker as SIGTERM stops a single `keysvc serve` (SIGINT too: a worker
        treats both alike, and SIGTERM also ends one still starting without a traceback)."""
        if sig is not None:
            log.info("%s: stopping the workers", sig.name)
        self._stopping.set()
        for worker in self._workers:
            worker.signal(signal.SIGTERM)

    async def _stopped(self, keeping: list[asyncio.Task[None]]) -> int:
        """Waits for every worker to exit, killing those still running after the grace."""
        limit = self._settings.shutdown_grace_seconds + _STOP_MARGIN_SECONDS
        await asyncio.wait(keeping, timeout=limit)
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                log.error("worker %d did not stop within %.0fs: killing it", worker.number, limit)
                worker.signal(signal.SIGKILL)
        await asyncio.gather(*keeping)
        code = 0
        for worker in self._workers:
            # A worker stopped before it could handle the signal (still starting) ends by it.
            if worker.stop_code not in (None, 0, -signal.SIGTERM):
                log.error("worker %d stopped with %s", worker.number, _described(worker.stop_code))
                code = 1
        return code

    async def _keep(self, worker: _Worker) -> None:
        """Runs `worker` until the supervisor stops, starting it again whenever it dies."""
        loop = asyncio.get_running_loop()
        deaths = 0
        while not self._stopping.is_set():
            started = loop.time()
            worker.process = None
            try:
                served, code = await self._run(worker)
                ended = _described(code)
            except OSError as err:  # no process at all (out of memory, of process ids)
                served, code, ended = False, None, f"cannot run it: {err}"
            if self._stopping.is_set():
                worker.stop_code = code
                return
            if not served and not self._started:
                # It never served and keysvc has not yet: its settings cannot work (it said why
                # on standard error), and trying again would say the same.
                told = "" if code is None else "; its error is above"
                self.failed = f"worker {worker.number} could not start ({ended}){told}"
                self._stop(None)
                return
            deaths = 1 if loop.time() - started >= _STABLE_SECONDS else deaths + 1
            delay = min(_RESTART_DELAY_SECONDS * 2 ** (deaths - 1), _RESTART_DELAY_MAX_SECONDS)
            log.warning(
                "worker %d%s %s (%s); starting it again in %.1fs",
                worker.number,
                f" (pid {worker.process.pid})" if worker.process is not None else "",
                "exited" if served else "could not start",
                ended,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run(self, worker: _Worker) -> tuple[bool, int]:
        """One process of `worker`, from its start to its exit: whether it served, and its exit
        code."""
        process = await asyncio.create_subprocess_exec(
            *_worker_command(worker.number),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env=self._environment,
            # Out of the terminal's process group: a Ctrl-C reaches the supervisor alone, which
            # stops the workers in order.
            start_new_session=True,
        )
        worker.process = process
        log.info("worker %d started (pid %d)", worker.number, process.pid)
        if self._stopping.is_set():
            worker.signal(signal.SIGTERM)
        assert process.stdout is not None
        status = await process.stdout.readline()
        if status:
            worker.lines = json.loads(status)
            worker.serving.set()
            log.info("worker %d (pid %d) serving", worker.number, process.pid)
        await process.communicate()
        assert process.returncode is not None
        self._metrics.worker_exited(process.pid)
        return bool(status), process.returncode


# -- metrics ----------------------------------------------------------------------------------


class _MetricsHook:
    """The supervisor's --metrics-listen: its workers count into files of a directory of their
    own, and the supervisor serves their sum (keysvc.runtime.metrics_listener describes it)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._directory: Path | None = None
        self._server: metrics_listener.MetricsServer | None = None
        if settings.metrics_listen is not None:
            # Before any worker starts: a listen address that can never work is one clear error.
            metrics_listener.check(settings)

    def before_workers(self) -> None:
        if self._settings.metrics_listen is None:
            return
        # A fresh directory per run, named in the environment every worker inherits.
        self._directory = Path(tempfile.mkdtemp(prefix="keysvc-metrics-"))
        metrics_listener.use_multiprocess(self._directory)
        # Bound now, so that a port already taken stops keysvc before any worker starts.
        self._server = metrics_listener.serve_workers(self._settings)

    def serving(self) -> list[str]:
        """The address file's line for the workers' sum."""
        return [] if self._server is None else [self._server.url]

    def worker_exited(self, pid: int) -> None:
        if self._directory is not None:
            metrics_listener.worker_exited(pid)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
