"""Runs real `keysvc dashboard serve` processes, and Chromium, for the browser tests.

A dashboard binds port 0, logs to a file, writes the `http://HOST:PORT` it serves on to its
address file (`--address-file`), and counts as started once it has and answers its sign-in
page. It talks to a real `keysvc serve` (tests/e2e/harness.py) with that server's admin token,
read from the server's data directory. Its users are made the way an operator makes them,
with `keysvc dashboard users add ... --password-stdin`. Stopping is SIGTERM, and anything but
exit code 0 is a failure, as for keysvc itself.

The browser is Debian's Chromium (/usr/bin/chromium, package `chromium`), driven by
Playwright's sync API: Playwright's own browser download cannot work on these machines, so
`playwright install` is never run. `.ci/run` installs the package when it is missing.
"""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, Playwright, ViewportSize
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.harness import (
    COMMAND_TIMEOUT,
    KEY_PATTERN,
    PYTHON,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ServerProcess,
    clean_environ,
    poll,
)

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the network flags stop it calling Google's hosts, which
# this machine's closed network refuses (many at a time) and which tests have no use for.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Where Chromium shows its own error pages (ERR_CACHE_MISS, say).
CHROME_ERROR_PAGE = "chrome-error://chromewebdata/"
# How long Playwright's auto-waiting and expect() wait for the page, in milliseconds.
TIMEOUT_MS = 15_000

LAPTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

# The API Keys table's columns, in order, as the product page names them.
COLUMNS = ["Name", "Prefix", "Mode", "Scopes", "Last used", "Created", "Expires", "Status"]


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Debian Chromium, with the flags this machine's notes prescribe."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
    )


def dashboard_command(*args: str) -> list[str]:
    return [PYTHON, "-m", "keysvc", "dashboard", *args]


class Dashboard:
    """One running `keysvc dashboard serve`."""

    def __init__(
        self, process: subprocess.Popen[bytes], *, log_path: Path, address_path: Path
    ) -> None:
        self.process = process
        self.log_path = log_path
        self.address_path = address_path
        self.url = ""

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until_ready(self) -> None:
        self.url = poll(self._address, timeout=START_TIMEOUT, what="the dashboard's address file")
        poll(self._answers, timeout=START_TIMEOUT, what="the dashboard's sign-in page")

    def _address(self) -> str | None:
        if self.address_path.exists():
            text = self.address_path.read_text().strip()
            if text:
                assert re.fullmatch(r"http://127\.0\.0\.1:\d+", text), (
                    f"the address file holds {text!r}, not http://127.0.0.1:PORT"
                )
                return text
        if not self.running:
            raise AssertionError(
                f"the dashboard exited with {self.process.returncode} before listening;"
                f" log:\n{self.read_log()}"
            )
        return None

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/signin", timeout=5) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the dashboard did not exit within {timeout}s of SIGTERM; log:\n{self.read_log()}"
            ) from None


class DashboardFactory:
    """Dashboards under `base`, in front of `server`, sharing one users file.

    close() stops those still running and checks that each exited 0.
    """

    def __init__(self, base: Path, server: ServerProcess) -> None:
        self._base = base
        self._server = server
        self.users_file = base / "dashboard-users"
        self._dashboards: list[Dashboard] = []

    def add_user(
        self, name: str, password: str, *, accounts: Sequence[str] = (), all_accounts: bool = False
    ) -> None:
        """`keysvc dashboard users add NAME --account ... --users FILE --password-stdin`."""
        scope = ["--all-accounts"] if all_accounts else [f"--account={a}" for a in accounts]
        result = subprocess.run(
            dashboard_command(
                "users", "add", name, *scope, "--users", str(self.users_file), "--password-stdin"
            ),
            input=password + "\n",
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, (
            f"users add {name} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
        assert password not in result.stdout + result.stderr, "users add printed the password"

    def start(self, *args: str) -> Dashboard:
        """A dashboard answering on a free loopback port, with keysvc's admin token."""
        number = len(self._dashboards) + 1
        log_path = self._base / f"dashboard-{number}.log"
        address_path = self._base / f"dashboard-{number}.address"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                dashboard_command(
                    "serve",
                    "--listen", "127.0.0.1:0",
                    "--users", str(self.users_file),
                    "--target", self._server.target,
                    "--data-dir", str(self._server.data_dir),
                    "--address-file", str(address_path),
                    *args,
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_environ(),
                cwd=self._base,
            )  # fmt: skip
        dashboard = Dashboard(process, log_path=log_path, address_path=address_path)
        self._dashboards.append(dashboard)
        dashboard.wait_until_ready()
        return dashboard

    def close(self) -> None:
        failures = []
        for dashboard in self._dashboards:
            if not dashboard.running:
                continue
            try:
                code = dashboard.stop()
            except AssertionError as err:
                failures.append(str(err))
                continue
            if code != 0:
                failures.append(
                    f"the dashboard exited with {code} on SIGTERM; log:\n{dashboard.read_log()}"
                )
        if failures:
            raise AssertionError("\n\n".join(failures))


# -- the pages, as a user drives them -------------------------------------------------------


def sign_in(page: Page, name: str, password: str) -> None:
    """Signs in on /signin with the labelled fields and the button, as a person does."""
    page.goto("/signin")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def open_keys(page: Page, account: str) -> None:
    page.goto(f"/accounts/{account}/keys")
    page.get_by_role("heading", name="API Keys", level=1).wait_for()


def create_key(
    page: Page,
    account: str,
    name: str,
    *,
    mode: str = "Live",
    scopes: Sequence[str] = ("links:read",),
    expires: str = "",
    allowed_ips: str = "",
) -> str:
    """Creates a key from the account's API Keys page and returns the secret read off the page.

    Goes through the list's "Create key" link, as a user does, not straight to its URL.
    """
    fill_key_form(
        page, account, name, mode=mode, scopes=scopes, expires=expires, allowed_ips=allowed_ips
    )
    page.get_by_role("button", name="Create key").click()
    return shown_secret(page)


def fill_key_form(
    page: Page,
    account: str,
    name: str,
    *,
    mode: str = "Live",
    scopes: Sequence[str] = ("links:read",),
    expires: str = "",
    allowed_ips: str = "",
) -> None:
    """Opens the create form from the API Keys page's "Create key" link and fills it in."""
    open_keys(page, account)
    page.get_by_role("link", name="Create key").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("radio", name=mode, exact=True).check()
    for scope in scopes:
        page.get_by_role("checkbox", name=scope, exact=True).check()
    if expires:
        page.get_by_label("Expires").fill(expires)
    if allowed_ips:
        page.get_by_label("Allowed IPs").fill(allowed_ips)


def go_back(page: Page) -> None:
    """The browser's Back button. Back to a page that answered a form and may not be stored
    (Cache-Control: no-store), Chromium will not send the form again unasked: it shows its
    ERR_CACHE_MISS page instead, which is what a person sees too."""
    try:
        page.go_back()
    except PlaywrightError as err:
        if "ERR_CACHE_MISS" not in err.message:
            raise
        # The error page comes a moment after the error: wait until it is the page.
        page.wait_for_url(CHROME_ERROR_PAGE)


def shown_secret(page: Page) -> str:
    """The raw key in the page's <code id="secret">, checked to be one whole key."""
    secret = page.locator("code#secret").inner_text().strip()
    assert KEY_PATTERN.fullmatch(secret), f"the page shows {secret!r} as the key"
    return secret


def column_index(page: Page, column: str) -> int:
    headers = [text.strip() for text in page.locator("table thead th").all_inner_texts()]
    assert column in headers, f"no {column!r} column among {headers}"
    return headers.index(column)


def rows_named(page: Page, name: str) -> Locator:
    """The API Keys table's rows whose Name cell starts with `name` (a TEST badge may follow)."""
    index = column_index(page, "Name")
    name_cell = page.locator(f"td:nth-child({index + 1}), th:nth-child({index + 1})").filter(
        has_text=re.compile(rf"^\s*{re.escape(name)}(\s|$)")
    )
    return page.locator("table tbody tr").filter(has=name_cell)


def cell(page: Page, row: Locator, column: str) -> Locator:
    """The cell of `row` under the header `column`."""
    return row.locator("td, th").nth(column_index(page, column))
