"""Signing in and out: the users file's names and passwords, the session cookie, the
throttle, and what a signed-out browser may see."""

from __future__ import annotations

import pytest

from keysvc.dashboard.sessions import COOKIE_NAME, Sessions
from keysvc.dashboard.users import User, hash_password, load, save

from .conftest import PASSWORD, SESSION_KEY, Site, csrf_of, sign_in

pytestmark = pytest.mark.slow

WRONG = "Wrong name or password"


class TestSignIn:
    def test_the_right_password_opens_the_users_accounts(self, site: Site) -> None:
        """Name and password of the users file: 303 to /, which links the user's own account
        and no other."""
        browser = site.browser()
        response = sign_in(browser, "ada", PASSWORD)
        assert response.status_code == 303
        assert response.headers["location"] == "/"

        home = browser.get("/")
        assert home.status_code == 200
        assert f'href="/accounts/{site.ada_account}/keys"' in home.text
        assert site.grace_account not in home.text
        assert "Sign out" in home.text

    @pytest.mark.parametrize(
        ("name", "password"),
        [("ada", PASSWORD + "x"), ("mallory", PASSWORD), ("", ""), ("ada", "")],
        ids=["wrong-password", "unknown-name", "empty", "no-password"],
    )
    def test_a_wrong_name_or_password_is_refused_alike(
        self, site: Site, name: str, password: str
    ) -> None:
        """The form again, with one message whichever was wrong, the name kept, no session."""
        browser = site.browser()
        response = sign_in(browser, name, password)
        assert response.status_code == 401
        text = response.text
        assert WRONG in text
        assert f'value="{name}"' in text
        assert browser.get("/").headers["location"] == "/signin"

    def test_repeated_failures_for_a_name_are_throttled(self, site: Site) -> None:
        """After 10 wrong passwords within a minute, even the right one is refused unchecked
        (429); another name is not affected."""
        browser = site.browser()
        for _ in range(10):
            assert sign_in(browser, "ada", "wrong password").status_code == 401
        throttled = sign_in(browser, "ada", PASSWORD)
        assert throttled.status_code == 429
        assert "Too many failed sign-ins" in throttled.text
        assert sign_in(site.browser(), "grace", PASSWORD).status_code == 303

    def test_the_session_cookie_is_httponly_and_strict(self, site: Site) -> None:
        """HttpOnly, SameSite=Strict, 12 hours; not Secure over plain HTTP."""
        browser = site.browser()
        response = sign_in(browser, "ada", PASSWORD)
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Max-Age=43" in cookie  # 43200 seconds, less the time it took
        assert "Secure" not in cookie

    def test_the_session_cookie_is_secure_under_tls(self, site: Site) -> None:
        """A dashboard serving HTTPS marks its cookies Secure."""
        site.sessions = Sessions(SESSION_KEY, secure=True)
        browser = site.browser()
        response = browser.get("/signin")
        assert "Secure" in response.headers["set-cookie"]

    def test_a_session_ends_after_twelve_hours(self, site: Site) -> None:
        """However busy, a session is over 12 hours after sign-in."""
        now = [1_000_000.0]
        site.sessions = Sessions(SESSION_KEY, secure=False, clock=lambda: now[0])
        browser = site.signed_in()
        assert browser.get("/").status_code == 200
        now[0] += 12 * 3600 - 1
        assert browser.get("/").status_code == 200
        now[0] += 2
        assert browser.get("/").headers["location"] == "/signin"


class TestSignedOut:
    @pytest.mark.parametrize(
        "path",
        [
            "/",
            "/accounts/{account}/keys",
            "/accounts/{account}/keys/new",
            "/accounts/{account}/audit",
        ],
    )
    def test_pages_redirect_to_sign_in(self, site: Site, path: str) -> None:
        """Signed out, every page is a 303 to /signin."""
        response = site.browser().get(path.format(account=site.ada_account))
        assert response.status_code == 303
        assert response.headers["location"] == "/signin"

    def test_the_sign_in_page_and_static_files_are_open(self, site: Site) -> None:
        """The labelled sign-in form and the static files need no session."""
        browser = site.browser()
        page = browser.get("/signin")
        assert page.status_code == 200
        assert '<label for="name">Name</label>' in page.text
        assert '<label for="password">Password</label>' in page.text
        assert ">Sign in</button>" in page.text
        assert browser.get("/static/dashboard.css").status_code == 200
        assert browser.get("/static/copy.js").status_code == 200

    def test_a_forged_cookie_is_no_session(self, site: Site) -> None:
        """A cookie without the session key's signature signs nobody in."""
        browser = site.browser()
        browser.cookies.set(COOKIE_NAME, '["ada","x",1e12,""].forged.signature')
        assert browser.get("/").headers["location"] == "/signin"


class TestSignOut:
    def test_sign_out_ends_the_session(self, site: Site) -> None:
        """The Sign out button (a form with the CSRF token) clears the cookie and goes to
        /signin; the pages then ask for a sign-in again."""
        browser = site.signed_in()
        home = browser.get("/")
        response = browser.post("/signout", data={"csrf_token": csrf_of(home.text)})
        assert response.status_code == 303
        assert response.headers["location"] == "/signin"
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert browser.get("/").headers["location"] == "/signin"

    def test_a_copy_of_the_cookie_is_refused_after_sign_out(self, site: Site) -> None:
        """Whoever kept a copy of the session cookie (a stolen one, say) is signed out too."""
        browser = site.signed_in()
        home = browser.get("/")
        copy = site.browser()
        copy.cookies.set(COOKIE_NAME, browser.cookies[COOKIE_NAME])
        assert copy.get("/").status_code == 200
        browser.post("/signout", data={"csrf_token": csrf_of(home.text)})
        assert copy.get("/").headers["location"] == "/signin"

    def test_a_removed_user_is_signed_out_at_once(self, site: Site) -> None:
        """`users remove` ends the user's sessions at their next request, without a restart."""
        browser = site.signed_in()
        assert browser.get("/").status_code == 200
        users = load(site.users_file)
        del users["ada"]
        save(site.users_file, users)
        assert browser.get("/").headers["location"] == "/signin"

    def test_a_new_password_ends_the_old_sessions(self, site: Site) -> None:
        """A new password in the users file ends the sessions begun with the old one."""
        browser = site.signed_in()
        users = load(site.users_file)
        users["ada"] = User("ada", hash_password("another password"), users["ada"].accounts)
        save(site.users_file, users)
        assert browser.get("/").headers["location"] == "/signin"
        assert sign_in(site.browser(), "ada", "another password").status_code == 303
