"""An API server's checking loop, as a process of its own for fault tests: a keysvc_client
Guard (near cache on, as by default) checking one key over and over.

    python -m tests.backends.guard_checker TARGET API_KEY

Prints one line per check, `<time.monotonic() when check was called> <status>`, flushed, until
killed. CLOCK_MONOTONIC is the machine's, so the test compares these times with its own.
"""

from __future__ import annotations

import sys
import time

from keysvc_client import Guard


def main() -> None:
    target, api_key = sys.argv[1], sys.argv[2]
    with Guard(target, timeout=1.0) as guard:
        while True:
            sent = time.monotonic()
            verdict = guard.check(f"Bearer {api_key}", ["links:read"])
            print(f"{sent:.6f} {verdict.status}", flush=True)
            time.sleep(0.002)


if __name__ == "__main__":
    main()
