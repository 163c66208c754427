"""What the dashboard refuses: forms without their CSRF token, other accounts' pages and keys,
markup in names; the headers on every response; and the page when keysvc does not answer."""

from __future__ import annotations

import pytest
from keysvc_client import Connection, KeyServiceClient, keysvc_pb2

from keysvc.dashboard.client import Keysvc
from keysvc.dashboard.web import CONTENT_SECURITY_POLICY
from tests.e2e.harness import verdict

from .conftest import Site, csrf_of, once_of

pytestmark = pytest.mark.slow

pb = keysvc_pb2
REFUSED = "This form has expired or was not sent by this dashboard"
MARKUP = "<script>alert(1)</script>"


class TestCsrf:
    @pytest.mark.parametrize("token", [None, "", "forged"], ids=["missing", "empty", "forged"])
    def test_a_create_form_without_its_token_is_refused(
        self, site: Site, admin: KeyServiceClient, token: str | None
    ) -> None:
        """403 with the words, and no key made."""
        browser = site.signed_in()
        page = browser.get(f"/accounts/{site.ada_account}/keys/new").text
        form = {"once": once_of(page), "name": "Forged", "mode": "live", "scopes": "links:read"}
        if token is not None:
            form["csrf_token"] = token
        response = browser.post(f"/accounts/{site.ada_account}/keys/new", data=form)
        assert response.status_code == 403
        assert REFUSED in response.text
        assert list(admin.list_keys(site.ada_account).keys) == []

    def test_another_sessions_token_is_refused(self, site: Site, admin: KeyServiceClient) -> None:
        """A token is bound to its session: grace's does not pass for ada, and a revoke posted
        with it revokes nothing."""
        created = admin.create_key(site.ada_account, "Kept", "live", ["links:read"])
        graces_token = csrf_of(site.signed_in("grace").get("/").text)
        browser = site.signed_in("ada")
        response = browser.post(
            f"/accounts/{site.ada_account}/keys/{created.key.id}/revoke",
            data={"csrf_token": graces_token, "reason": "forged"},
        )
        assert response.status_code == 403
        assert verdict(admin.authorize(created.secret)) == (200, "REASON_ALLOWED")

    def test_sign_in_and_sign_out_need_their_token(self, site: Site) -> None:
        """Nobody can sign a browser in (or out) from another site."""
        browser = site.browser()
        browser.get("/signin")
        response = browser.post("/signin", data={"name": "ada", "password": "x" * 10})
        assert response.status_code == 403 and REFUSED in response.text
        signed_in = site.signed_in()
        assert signed_in.post("/signout", data={}).status_code == 403
        assert signed_in.get("/").status_code == 200

    def test_the_session_gets_a_new_token_at_sign_in(self, site: Site) -> None:
        """The token of the sign-in form does not outlive it."""
        browser = site.browser()
        before = csrf_of(browser.get("/signin").text)
        browser.post(
            "/signin",
            data={"name": "ada", "password": "correct horse battery staple", "csrf_token": before},
        )
        after = csrf_of(browser.get("/").text)
        assert after != before
        assert browser.post("/signout", data={"csrf_token": before}).status_code == 403


class TestAccountIsolation:
    @pytest.mark.parametrize(
        "path",
        [
            "/accounts/{account}/keys",
            "/accounts/{account}/keys/new",
            "/accounts/{account}/audit",
            "/accounts/{account}/keys/{key}/revoke",
            "/accounts/{account}/keys/{key}/roll",
            "/accounts/{account}/keys/{key}/edit",
        ],
    )
    def test_another_accounts_pages_are_not_found(
        self, site: Site, admin: KeyServiceClient, path: str
    ) -> None:
        """ada opening grace's account by URL gets the same 404 as for a key that does not
        exist, and none of grace's data."""
        theirs = admin.create_key(site.grace_account, "Grace's key", "live", ["links:read"])
        browser = site.signed_in("ada")
        response = browser.get(path.format(account=site.grace_account, key=theirs.key.id))
        missing = browser.get(f"/accounts/{site.ada_account}/keys/AAAAAAAAAAAA/revoke")
        assert response.status_code == missing.status_code == 404
        assert response.text == missing.text
        assert "Grace" not in response.text

    @pytest.mark.parametrize("action", ["new", "revoke", "roll", "edit"])
    def test_posting_to_another_account_changes_nothing(
        self, site: Site, admin: KeyServiceClient, action: str
    ) -> None:
        """ada's valid forms posted to grace's account, or to grace's key under ada's account,
        answer 404 and change nothing."""
        theirs = admin.create_key(site.grace_account, "Grace's key", "live", ["links:read"])
        browser = site.signed_in("ada")
        page = browser.get(f"/accounts/{site.ada_account}/keys/new").text
        form = {
            "csrf_token": csrf_of(page), "once": once_of(page), "name": "Intruder",
            "mode": "live", "scopes": "links:read", "grace": "0", "reason": "mine now",
        }  # fmt: skip
        if action == "new":
            targets = [f"/accounts/{site.grace_account}/keys/new"]
        else:
            targets = [
                f"/accounts/{site.grace_account}/keys/{theirs.key.id}/{action}",
                f"/accounts/{site.ada_account}/keys/{theirs.key.id}/{action}",
            ]
        for target in targets:
            assert browser.post(target, data=form).status_code == 404, target
        assert [k.name for k in admin.list_keys(site.grace_account).keys] == ["Grace's key"]
        assert verdict(admin.authorize(theirs.secret)) == (200, "REASON_ALLOWED")
        assert list(admin.list_keys(site.ada_account).keys) == []

    def test_a_user_with_every_account_opens_any(self, site: Site) -> None:
        """ops (all accounts) gets the Account field and Open button, which lead to the keys."""
        browser = site.signed_in("ops")
        home = browser.get("/").text
        assert '<label for="account">Account</label>' in home
        assert ">Open</button>" in home
        response = browser.get("/accounts", params={"account": site.grace_account})
        assert response.status_code == 303
        assert response.headers["location"] == f"/accounts/{site.grace_account}/keys"
        assert browser.get(response.headers["location"]).status_code == 200
        assert browser.get("/accounts", params={"account": "../etc"}).status_code == 400


class TestHostileInput:
    def test_markup_in_a_name_is_text(self, site: Site, admin: KeyServiceClient) -> None:
        """A key named <script>…</script> is escaped on the list, the confirmation and the
        shown-once page."""
        browser = site.signed_in()
        page = browser.get(f"/accounts/{site.ada_account}/keys/new").text
        shown = browser.post(
            f"/accounts/{site.ada_account}/keys/new",
            data={"csrf_token": csrf_of(page), "once": once_of(page), "name": MARKUP,
                  "mode": "test", "scopes": "links:read"},
        )  # fmt: skip
        key = admin.list_keys(site.ada_account).keys[0]
        pages = [
            shown.text,
            browser.get(f"/accounts/{site.ada_account}/keys").text,
            browser.get(f"/accounts/{site.ada_account}/keys/{key.id}/revoke").text,
        ]
        for text in pages:
            assert MARKUP not in text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text

    @pytest.mark.parametrize(
        "path", ["/signin", "/", "/accounts/{account}/keys", "/nowhere", "/static/dashboard.css"]
    )
    def test_every_response_carries_the_security_headers(self, site: Site, path: str) -> None:
        """Pages, the 404 and static files all carry the CSP and the other security headers."""
        browser = site.signed_in()
        response = browser.get(path.format(account=site.ada_account))
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"

    def test_pages_hold_no_inline_script_or_style(self, site: Site) -> None:
        """No <style>, style= or inline script, which the CSP would block."""
        browser = site.signed_in()
        for path in (
            "/signin",
            f"/accounts/{site.ada_account}/keys",
            f"/accounts/{site.ada_account}/keys/new",
        ):
            text = browser.get(path).text
            assert "<style" not in text and " style=" not in text
            assert "<script>" not in text and " on" + "click=" not in text

    def test_an_unknown_page_is_the_dashboards_404(self, site: Site) -> None:
        """A path that is no page gets the dashboard's own 404 page."""
        response = site.signed_in().get("/nowhere")
        assert response.status_code == 404
        assert "There is no such page, account or key here." in response.text


class TestKeysvcDown:
    def test_an_unreachable_keysvc_is_a_503_page(self, site: Site) -> None:
        """Nothing listening at keysvc's address: the page says so (503), with no traceback."""
        site.keysvc = Keysvc(Connection("127.0.0.1:1", token="some-admin-token"), timeout=2)
        try:
            browser = site.signed_in()
            for path in ("/accounts/{a}/keys", "/accounts/{a}/keys/new", "/accounts/{a}/audit"):
                response = browser.get(path.format(a=site.ada_account))
                assert response.status_code == 503
                assert "keysvc is not answering; try again in a moment" in response.text
                assert "Traceback" not in response.text
        finally:
            site.keysvc.close()

    def test_a_refused_credential_is_said_without_details(self, site: Site) -> None:
        """keysvc refusing the dashboard's own token: 502, and the token is not on the page."""
        site.keysvc = Keysvc(
            Connection(site.keysvc_server.target, token="not-the-admin-token"), timeout=5
        )
        try:
            response = site.signed_in().get(f"/accounts/{site.ada_account}/keys")
            assert response.status_code == 502
            assert "not-the-admin-token" not in response.text
        finally:
            site.keysvc.close()
