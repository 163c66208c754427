"""The Guard in the API server's process: across fork(), in its Prometheus registry or without
one, and what a hot check costs next to a unary Authorize."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys

import pytest
from keysvc_client import Guard
from prometheus_client import REGISTRY

from tests.e2e.harness import ServerProcess

from .conftest import TIMEOUT, Keys

pytestmark = pytest.mark.slow


def run_script(script: str, *args: str) -> str:
    """`script` run by a Python of its own (fork() from pytest's would copy its threads'
    half-held locks); its standard output. Ends it, and any child, if it hangs."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("the script hung") from None
    assert process.returncode == 0, err
    return out


FORKED = """
import json, os, sys, time
from keysvc_client import Guard

target, hot, parent_key, *child_keys = sys.argv[1:]
guard = Guard(target, timeout=5.0)
assert guard.check(hot).allowed  # over the parent's stream, and held


def until(condition):
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def checks(first, then):
    seen = {"hot": [guard.check(hot).allowed for _ in range(20)]}
    seen["first"] = guard.check(first).allowed
    # The stream the first miss opened (or its reconnection) carries the next one.
    until(lambda: guard.stats().sessions_up == 1)
    fallbacks = guard.stats().fallbacks
    seen["then"] = [guard.check(key).allowed for key in then]
    seen["then_fallbacks"] = guard.stats().fallbacks - fallbacks
    stats = guard.stats()
    seen["misses"] = stats.misses
    return seen


read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    os.write(write, json.dumps(checks(child_keys[0], child_keys[1:])).encode())
    os._exit(0)
os.close(write)
seen = {"parent": checks(parent_key, [parent_key])}
with os.fdopen(read) as pipe:
    seen["child"] = json.loads(pipe.read() or "null")
os.waitpid(child, 0)
print(json.dumps(seen))
"""


class TestFork:
    def test_parent_and_child_each_go_on_with_a_stream_of_their_own(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        """A Guard used before fork(): the child answers the key the parent held from the
        cache it inherited, and asks about others over a stream of its own; the parent goes
        on as before."""
        hot, parent, *children = [f"Bearer {keys.new().secret}" for _ in range(5)]
        seen = json.loads(run_script(FORKED, server.target, hot, parent, *children))
        for side in ("parent", "child"):
            assert all(seen[side]["hot"]), side
            assert seen[side]["first"] and all(seen[side]["then"]), side
            assert seen[side]["then_fallbacks"] == 0, side
        assert seen["child"]["misses"] == 1 + 3  # the parent's one miss, and its own three


class TestPrometheus:
    def test_every_guard_is_counted_in_the_default_registry(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        header = f"Bearer {keys.new().secret}"

        def sample(name: str) -> float:
            value = REGISTRY.get_sample_value(name)
            assert value is not None, name
            return value

        with Guard(server.target, timeout=TIMEOUT) as guard:
            guard.check(header)
            hits = sample("keysvc_guard_hits_total")
            misses = sample("keysvc_guard_misses_total")
            for _ in range(3):
                guard.check(header)
            assert sample("keysvc_guard_hits_total") == hits + 3
            assert sample("keysvc_guard_misses_total") == misses
            assert sample("keysvc_guard_entries") >= 1
            assert sample("keysvc_guard_sessions_up") >= 1
            for name in ("renewals", "pushes", "connects", "fallbacks", "unavailable"):
                sample(f"keysvc_guard_{name}_total")

    def test_a_collected_guard_leaves_its_counts_in_the_totals(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        header = f"Bearer {keys.new().secret}"
        guard = Guard(server.target, timeout=TIMEOUT)
        for _ in range(3):
            guard.check(header)
        hits = REGISTRY.get_sample_value("keysvc_guard_hits_total")
        guard.close()
        del guard
        gc.collect()
        assert REGISTRY.get_sample_value("keysvc_guard_hits_total") == hits

    def test_without_prometheus_client_the_guard_works_and_counts(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        header = f"Bearer {keys.new().secret}"
        script = (
            "import sys; sys.modules['prometheus_client'] = None\n"
            "from keysvc_client import Guard\n"
            "guard = Guard(sys.argv[1], timeout=5.0)\n"
            "print(guard.check(sys.argv[2]).status, guard.check(sys.argv[2]).status,"
            " guard.stats().hits, 'prometheus_client' in sys.modules"
            " and sys.modules['prometheus_client'] is not None)\n"
        )
        assert run_script(script, server.target, header).split() == ["200", "200", "1", "False"]
