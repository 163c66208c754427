"""Fixtures for the browser tests: a real keysvc, a real dashboard in front of it with two users
each allowed one account of their own, and a fresh Chromium page for each test."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from keysvc_client import KeyServiceClient
from playwright.sync_api import Browser, Dialog, Page, ViewportSize, expect, sync_playwright

from tests.e2e.harness import ServerFactory, ServerProcess
from tests.services import unavailable

from .harness import CHROMIUM, LAPTOP, TIMEOUT_MS, Dashboard, DashboardFactory, launch_chromium

expect.set_options(timeout=TIMEOUT_MS)


@dataclass(frozen=True)
class User:
    name: str
    password: str
    account: str


@dataclass
class Site:
    """A dashboard of the test's own; `user` may see `user.account` only, `other` the other's."""

    dashboard: Dashboard
    user: User
    other: User
    factory: DashboardFactory

    @property
    def url(self) -> str:
        return self.dashboard.url


@dataclass
class Tab:
    """A page in a browser context of its own (its own cookies), with what it saw happen."""

    page: Page
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def keysvc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One keysvc on the embedded default for a module's tests; each test has its own accounts."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc"))
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture
def admin(keysvc: ServerProcess) -> Iterator[KeyServiceClient]:
    """keysvc's admin client, to check what the pages did (and set up what they show)."""
    with keysvc.client() as client:
        yield client


@pytest.fixture
def public(keysvc: ServerProcess) -> Iterator[KeyServiceClient]:
    """A client without any token, as an API server calls Authorize."""
    with keysvc.client(admin=False) as client:
        yield client


def new_account() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def ada_account() -> str:
    """ada's account: a new one, unless a test names it (a screenshot's "acct_123")."""
    return new_account()


@pytest.fixture
def site(tmp_path: Path, keysvc: ServerProcess, ada_account: str) -> Iterator[Site]:
    """A dashboard of the test's own with two users made by the CLI: ada, who may see one
    account, and grace, who may see another."""
    factory = DashboardFactory(tmp_path, keysvc)
    ada = User("ada", secrets.token_urlsafe(12), ada_account)
    grace = User("grace", secrets.token_urlsafe(12), new_account())
    for user in (ada, grace):
        factory.add_user(user.name, user.password, accounts=[user.account])
    try:
        yield Site(factory.start(), ada, grace, factory)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium for this module's tests (each opens its own context). Not for
    the whole session: Playwright's sync API keeps an event loop running in the main thread
    while it is open, and every later test calling asyncio.run() would fail."""
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not installed at {CHROMIUM} (Debian's package `chromium`)")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_tab(browser: Browser, site: Site, viewport: ViewportSize) -> Iterator[Tab]:
    """A new browser context (no cookies yet) of `viewport`'s size on the site, and its page;
    the dialogs the page opens are dismissed and recorded."""
    context = browser.new_context(base_url=site.url, viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    tab = Tab(page)

    def record(dialog: Dialog) -> None:
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", record)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def tab(browser: Browser, site: Site) -> Iterator[Tab]:
    """A new browser context at a laptop's size (1280x800), on the test's dashboard."""
    with open_tab(browser, site, LAPTOP) as tab:
        yield tab


@pytest.fixture
def page(tab: Tab) -> Page:
    return tab.page
