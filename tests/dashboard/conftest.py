"""Fixtures for the dashboard's tests: a real keysvc, and the dashboard application wired to it
through keysvc_client, driven by Starlette's TestClient as a browser would drive it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
from keysvc_client import Connection, KeyServiceClient
from starlette.testclient import TestClient

from keysvc.dashboard.app import create_app
from keysvc.dashboard.client import Keysvc
from keysvc.dashboard.sessions import Sessions
from keysvc.dashboard.users import User, UsersFile, hash_password, save
from tests.e2e.harness import ServerFactory, ServerProcess

PASSWORD = "correct horse battery staple"
SESSION_KEY = b"0123456789abcdef0123456789abcdef"

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_ONCE = re.compile(r'name="once" value="([^"]*)"')
_SECRET = re.compile(r'<code id="secret">([^<]*)</code>')
_FIELD_ERROR = re.compile(r'<p class="field-error" id="([a-z_]+)-error">([^<]*)</p>')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no csrf_token field"
    return match.group(1)


def once_of(html: str) -> str:
    match = _ONCE.search(html)
    assert match, "the page has no once field"
    return match.group(1)


def secret_of(html: str) -> str | None:
    match = _SECRET.search(html)
    return match.group(1) if match else None


def field_errors(html: str) -> dict[str, str]:
    """The messages shown beside the form's fields, by field."""
    return {field: message for field, message in _FIELD_ERROR.findall(html)}


def new_account() -> str:
    return f"acct_{uuid.uuid4().hex[:12]}"


@dataclass
class Site:
    """A dashboard of the test's own: ada may open `ada_account`, grace `grace_account`, ops
    every account."""

    keysvc_server: ServerProcess
    users_file: Path
    users: UsersFile
    keysvc: Keysvc
    sessions: Sessions
    ada_account: str
    grace_account: str

    def browser(self) -> TestClient:
        app = create_app(self.keysvc, self.users, self.sessions)
        return TestClient(app, follow_redirects=False)

    def signed_in(self, name: str = "ada", password: str = PASSWORD) -> TestClient:
        browser = self.browser()
        response = sign_in(browser, name, password)
        assert response.status_code == 303, response.text
        return browser


def sign_in(browser: TestClient, name: str, password: str) -> httpx.Response:
    form = browser.get("/signin")
    return browser.post(
        "/signin", data={"name": name, "password": password, "csrf_token": csrf_of(form.text)}
    )


@pytest.fixture(scope="module")
def keysvc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One keysvc on the embedded default for a module's tests; each test has its own
    accounts."""
    factory = ServerFactory(tmp_path_factory.mktemp("keysvc"))
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def admin(keysvc_server: ServerProcess) -> Iterator[KeyServiceClient]:
    with keysvc_server.client() as client:
        yield client


@pytest.fixture
def site(tmp_path: Path, keysvc_server: ServerProcess, password_hash: str) -> Iterator[Site]:
    ada_account, grace_account = new_account(), new_account()
    users_file = tmp_path / "users.toml"
    save(
        users_file,
        {
            "ada": User("ada", password_hash, (ada_account,)),
            "grace": User("grace", password_hash, (grace_account,)),
            "ops": User("ops", password_hash, all_accounts=True),
        },
    )
    keysvc = Keysvc(Connection(keysvc_server.target, token=keysvc_server.admin_token))
    try:
        yield Site(
            keysvc_server=keysvc_server,
            users_file=users_file,
            users=UsersFile(users_file),
            keysvc=keysvc,
            sessions=Sessions(SESSION_KEY, secure=False),
            ada_account=ada_account,
            grace_account=grace_account,
        )
    finally:
        keysvc.close()
