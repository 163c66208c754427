"""Child processes of the benchmark: started, waited on, and never outliving it.

Every child runs in a session of its own, so a Ctrl-C reaches only the benchmark,
which then stops its children in order; each child also asks the kernel for a
SIGTERM should the benchmark die without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Literal, TypeVar

T = TypeVar("T")

PYTHON = sys.executable
_PARENT = "BENCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT = 15.0
# How long a child may take to be ready (keysvc: serving; a load generator: connected).
START_TIMEOUT = 60.0


def die_with_parent() -> None:
    """In a child: be sent SIGTERM when the benchmark process exits, however it exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.environ.get(_PARENT)
    # The benchmark may have gone between our fork and the prctl.
    if parent is not None and os.getppid() != int(parent):
        sys.exit("bench: parent process gone")


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a supervisor's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def memory_kib(pid: int) -> dict[str, int]:
    """The resident memory of `pid` now (VmRSS) and at its peak (VmHWM), in KiB."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


class Child:
    """One child process; `stop` is SIGTERM, then SIGKILL after a grace period."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        environ = {**(os.environ if env is None else env), _PARENT: str(os.getpid())}
        log: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            log = log_path.open("ab")
        # When it was started (time.monotonic()), for how long it takes to serve.
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                env=environ,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if not isinstance(log, int):
                log.close()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def read_log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of `pattern` in the child's log; fails if the child exits first."""
        return self._wait_for(lambda: pattern.search(self.read_log()), timeout)

    def wait_for_file(self, path: Path, timeout: float) -> str:
        """The stripped contents of `path` once the child has written it; fails if the child
        exits first."""
        return self._wait_for(lambda: path.exists() and path.read_text().strip(), timeout)

    def _wait_for(self, check: Callable[[], T | Literal[False] | None], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not ready after {timeout}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT, *, exiting_within: float = 0.0) -> int:
        """Stops the child and returns its exit code; `exiting_within` lets it end by itself."""
        if exiting_within > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(exiting_within)
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return code


if __name__ == "__main__":
    # `python -m bench.processes ARGS...` is `keysvc ARGS...` that dies with the benchmark;
    # `python -m bench.processes exec PROGRAM ARGS...` is PROGRAM that does (redis-server): the
    # parent-death signal survives exec().
    die_with_parent()
    if sys.argv[1:2] == ["exec"]:
        os.execvp(sys.argv[2], sys.argv[2:])
    from keysvc.cli import main

    sys.exit(main(sys.argv[1:]))
