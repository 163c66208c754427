"""The dashboard in a real browser: the product page's flow (sign in, create a key and read it
once, use it, revoke it, roll it) and what the pages must refuse, clicked through in headless
Chromium against real keysvc and `keysvc dashboard serve` processes.

Each test signs in as a user of its own dashboard (conftest.py) and drives the pages by their
labels, as a person does; keysvc's own clients check what the pages did.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2
from playwright.sync_api import Browser, Locator, Page, Response, expect

from tests.e2e.harness import poll, verdict, when

from .conftest import Site, Tab, open_tab
from .harness import (
    COLUMNS,
    PHONE,
    TIMEOUT_MS,
    cell,
    create_key,
    fill_key_form,
    go_back,
    open_keys,
    rows_named,
    shown_secret,
    sign_in,
)

pytestmark = pytest.mark.slow

pb = keysvc_pb2
NOT_SENT_BY_US = "This form has expired or was not sent by this dashboard"
NOT_SHOWN_AGAIN = "This key will not be shown again"
WRONG_PASSWORD = "Wrong name or password"

# The screenshots go to docs/ when asked (KEYSVC_UPDATE_SCREENSHOTS=1), to the test's own
# directory otherwise: the pages show the time, so each run's pictures differ.
DOCS = Path(__file__).resolve().parents[2] / "docs"
UPDATE_SCREENSHOTS = os.environ.get("KEYSVC_UPDATE_SCREENSHOTS") == "1"
SCREENSHOT_LIMIT = 200_000

# A time as the pages print it, in UTC.
SHOWN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


def signed_in(page: Page, site: Site) -> None:
    sign_in(page, site.user.name, site.user.password)
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def key_id_of(secret: str) -> str:
    return secret[8:20]


def shows_time(text: str, moment: datetime) -> bool:
    """Whether `text` shows `moment` as the pages print times (2026-12-02 03:14:15Z)."""
    shown = [
        datetime.strptime(found, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC)
        for found in SHOWN_TIME.findall(text)
    ]
    return any(timedelta(0) <= moment - stamp < timedelta(seconds=1) for stamp in shown)


def document_responses(page: Page) -> list[Response]:
    """Every page (document) response the tab receives from now on, redirects included."""
    seen: list[Response] = []
    page.on("response", lambda r: seen.append(r) if r.request.resource_type == "document" else None)
    return seen


def post_form_without(
    page: Page, form: Locator, *, drop: str = "csrf_token", action: str | None = None
) -> dict[str, Any]:
    """Posts `form` as filled in, less its field `drop`, from the page itself (same origin, the
    page's cookies), to its own action or to `action`; the answer as {status, text}."""
    result: dict[str, Any] = form.evaluate(
        """async (form, [drop, action]) => {
            const data = new URLSearchParams(new FormData(form));
            data.delete(drop);
            const answer = await fetch(action || form.action, {
                method: "POST", body: data, credentials: "same-origin", redirect: "manual",
            });
            return {status: answer.status, text: await answer.text()};
        }""",
        [drop, action],
    )
    return result


def form_of(button: Locator) -> Locator:
    return button.locator("xpath=ancestor::form")


class TestSignIn:
    def test_a_user_signs_in_and_sees_only_their_accounts(self, page: Page, site: Site) -> None:
        """The right name and password open the list of the user's accounts, each a link to its
        API Keys page; another user's account is not listed. The session is one cookie, out of
        scripts' reach (HttpOnly) and never sent by other sites (SameSite=Strict)."""
        signed_in(page, site)
        page.goto("/")
        expect(page.get_by_role("link", name=site.user.account)).to_be_visible()
        expect(page.get_by_text(site.other.account)).to_have_count(0)
        page.get_by_role("link", name=site.user.account).click()
        expect(page.get_by_role("heading", name="API Keys", level=1)).to_be_visible()
        assert page.url.endswith(f"/accounts/{site.user.account}/keys")

        cookies = page.context.cookies()
        assert len(cookies) == 1, cookies
        assert (cookies[0]["httpOnly"], cookies[0]["sameSite"]) == (True, "Strict"), cookies

    @pytest.mark.parametrize("who", ["wrong password", "unknown name"])
    def test_a_wrong_password_is_refused(self, page: Page, site: Site, who: str) -> None:
        """A wrong password, or a name nobody has, is refused with the same words (which of the
        two was wrong is not told), and opens nothing."""
        name = site.user.name if who == "wrong password" else "mallory"
        password = site.user.password + "x" if who == "wrong password" else site.user.password
        sign_in(page, name, password)
        expect(page.get_by_text(WRONG_PASSWORD)).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_have_count(0)

        page.goto(f"/accounts/{site.user.account}/keys")
        expect(page.get_by_role("heading", name="API Keys")).to_have_count(0)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    def test_signing_in_by_keyboard_alone(self, page: Page, site: Site) -> None:
        """Name, Tab, password, Enter: the form is usable without a mouse."""
        page.goto("/signin")
        page.get_by_label("Name").focus()
        page.keyboard.type(site.user.name)
        page.keyboard.press("Tab")
        expect(page.get_by_label("Password")).to_be_focused()
        page.keyboard.type(site.user.password)
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    def test_signing_out_closes_the_pages(self, page: Page, site: Site) -> None:
        """After "Sign out", the account's keys ask for a sign-in again."""
        signed_in(page, site)
        open_keys(page, site.user.account)
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        page.goto(f"/accounts/{site.user.account}/keys")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        expect(page.get_by_role("heading", name="API Keys")).to_have_count(0)


class TestCreate:
    def test_a_live_key_with_two_scopes_is_shown_once_and_works(
        self, page: Page, site: Site, admin: KeyServiceClient, public: KeyServiceClient
    ) -> None:
        """Name, Live, two scopes ticked (nothing is ticked before): the page shows the live key
        with a Copy button and the warning; keysvc allows it for those scopes and no other, and
        the list shows it under its name, live and active."""
        account = site.user.account
        signed_in(page, site)
        open_keys(page, account)
        page.get_by_role("link", name="Create key").click()
        checkboxes = page.get_by_role("checkbox")
        expect(checkboxes.first).to_be_visible()
        assert checkboxes.count() >= len(admin.list_scopes())
        for index in range(checkboxes.count()):
            expect(checkboxes.nth(index)).not_to_be_checked()

        secret = create_key(
            page, account, "Production server", scopes=["links:read", "sessions:write"]
        )
        assert secret.startswith("ck_live_")
        expect(page.get_by_text(NOT_SHOWN_AGAIN)).to_be_visible()
        expect(page.get_by_role("button", name="Copy")).to_be_visible()

        assert verdict(public.authorize(secret, ["links:read", "sessions:write"])) == (
            200,
            "REASON_ALLOWED",
        )
        assert verdict(public.authorize(secret, ["links:write"])) == (
            403,
            "REASON_INSUFFICIENT_SCOPE",
        )
        key = admin.get_key(account, key_id_of(secret))
        assert (key.name, key.mode, sorted(key.scopes)) == (
            "Production server",
            pb.MODE_LIVE,
            ["links:read", "sessions:write"],
        )

        open_keys(page, account)
        row = rows_named(page, "Production server")
        expect(row).to_have_count(1)
        expect(cell(page, row, "Prefix")).to_have_text(key.prefix)
        expect(cell(page, row, "Mode")).to_have_text(re.compile(r"^\s*Live\s*$", re.IGNORECASE))
        expect(cell(page, row, "Scopes")).to_contain_text("links:read")
        expect(cell(page, row, "Scopes")).to_contain_text("sessions:write")
        expect(cell(page, row, "Status")).to_contain_text("Active")
        expect(row.get_by_text("TEST", exact=True)).to_have_count(0)
        expect(page.get_by_text(secret)).to_have_count(0)

    def test_the_copy_button_copies_the_key(self, page: Page, site: Site) -> None:
        """The Copy button puts the raw key on the clipboard."""
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
        signed_in(page, site)
        secret = create_key(page, site.user.account, "Copied")
        page.get_by_role("button", name="Copy").click()
        # The button copies asynchronously: the clipboard must come to hold the key.
        poll(
            lambda: page.evaluate("navigator.clipboard.readText()") == secret,
            timeout=TIMEOUT_MS / 1000,
            what="the key on the clipboard",
        )

    def test_reloading_never_shows_the_key_again(
        self, page: Page, site: Site, admin: KeyServiceClient
    ) -> None:
        """Reloading the page that showed the key, or coming back to it, shows the key no more
        and makes no other key."""
        account = site.user.account
        signed_in(page, site)
        secret = create_key(page, account, "Shown once")
        page.reload()
        assert secret not in page.content()
        expect(page.locator("code#secret")).to_have_count(0)

        open_keys(page, account)
        go_back(page)
        assert secret not in page.content()
        keys = admin.list_keys(account).keys
        assert [key.id for key in keys] == [key_id_of(secret)]

    def test_the_key_page_is_never_cached(self, page: Page, site: Site) -> None:
        """The page that shows the key, and any redirect on the way to it, says
        Cache-Control: no-store."""
        signed_in(page, site)
        fill_key_form(page, site.user.account, "Not cached")
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Create key").click()
        secret = shown_secret(page)
        response = navigation.value
        assert response is not None
        assert secret in response.text()
        chain = [response.request]
        while (earlier := chain[-1].redirected_from) is not None:
            chain.append(earlier)
        for request in chain:
            answer = request.response()
            assert answer is not None
            cache_control = answer.headers.get("cache-control", "")
            assert "no-store" in cache_control, (request.method, request.url, cache_control)

    def test_the_key_is_in_no_url_history_or_log(self, page: Page, site: Site) -> None:
        """Neither the address bar, nor any request the browser made (URL or Referer), nor
        the browser's history, nor the dashboard's log holds the key."""
        requests: list[tuple[str, str]] = []
        page.on("request", lambda r: requests.append((r.url, r.headers.get("referer", ""))))
        signed_in(page, site)
        secret = create_key(page, site.user.account, "Kept out of URLs")
        open_keys(page, site.user.account)
        go_back(page)
        assert secret not in page.content()
        page.go_forward()

        assert secret not in page.url
        assert requests
        for url, referer in requests:
            assert secret not in url
            assert secret not in referer
        history = page.context.new_cdp_session(page).send("Page.getNavigationHistory")
        urls = [entry["url"] for entry in history["entries"]]
        assert len(urls) >= 3
        assert not [url for url in urls if secret in url]
        assert secret not in site.dashboard.read_log()

    def test_bad_input_is_answered_on_the_form(
        self, page: Page, site: Site, admin: KeyServiceClient
    ) -> None:
        """An address range that is not one is answered on the form: the field is marked
        invalid and described by what is wrong with it; what was typed is kept; no key is
        made."""
        signed_in(page, site)
        fill_key_form(page, site.user.account, "Bad ranges", allowed_ips="10.0.0.300/8")
        page.get_by_role("button", name="Create key").click()

        addresses = page.get_by_label("Allowed IPs")
        expect(addresses).to_have_attribute("aria-invalid", "true")
        expect(addresses).to_have_accessible_description(re.compile(r"10\.0\.0\.300"))
        expect(addresses).to_have_value("10.0.0.300/8")
        expect(page.get_by_label("Name", exact=True)).to_have_value("Bad ranges")
        expect(page.locator("code#secret")).to_have_count(0)
        assert list(admin.list_keys(site.user.account).keys) == []


class TestRevoke:
    def test_a_key_revoked_on_the_page_is_refused_and_stays_listed(
        self, page: Page, site: Site, admin: KeyServiceClient, public: KeyServiceClient
    ) -> None:
        """Revoke, confirmed with a reason: keysvc answers 401 REVOKED for the key from then
        on; the row stays, showing Revoked and its time; the audit trail, in keysvc and on the
        Audit trail page, names the dashboard user as the one who did it, with the reason."""
        account = site.user.account
        signed_in(page, site)
        secret = create_key(page, account, "Leaked server", scopes=["links:read"])
        assert verdict(public.authorize(secret, ["links:read"])) == (200, "REASON_ALLOWED")

        open_keys(page, account)
        page.get_by_role("link", name="Revoke Leaked server", exact=True).click()
        expect(page.get_by_role("button", name="Revoke key")).to_be_visible()
        expect(page.locator("main")).to_contain_text("Leaked server")
        page.get_by_label("Reason").fill("compromised")
        page.get_by_role("button", name="Revoke key").click()

        expect(page.get_by_role("heading", name="API Keys", level=1)).to_be_visible()
        assert verdict(public.authorize(secret, ["links:read"])) == (401, "REASON_REVOKED")
        key = admin.get_key(account, key_id_of(secret))
        assert (key.status, key.revocation_reason) == (pb.KEY_STATUS_REVOKED, "compromised")
        revoked_at = when(key, "revoked_at")
        assert revoked_at is not None

        row = rows_named(page, "Leaked server")
        expect(row).to_have_count(1)
        status = cell(page, row, "Status")
        expect(status).to_contain_text("Revoked")
        assert shows_time(status.inner_text(), revoked_at), (status.inner_text(), revoked_at)
        expect(row.get_by_role("link", name="Revoke Leaked server")).to_have_count(0)

        revocations = [
            event
            for event in admin.iter_audit_events(account)
            if event.action == pb.AUDIT_ACTION_KEY_REVOKED and event.key_id == key.id
        ]
        assert len(revocations) == 1
        assert revocations[0].actor.startswith(f"{site.user.name} via "), revocations[0].actor
        assert revocations[0].reason == "compromised"

        open_keys(page, account)
        page.get_by_role("link", name="Audit trail").click()
        newest = page.locator("table tbody tr").first
        expect(cell(page, newest, "Action")).to_have_text("Revoked")
        expect(cell(page, newest, "Key")).to_contain_text(key.id)
        expect(cell(page, newest, "Actor")).to_contain_text(f"{site.user.name} via ")
        expect(newest).to_contain_text("compromised")


class TestRoll:
    def test_rolling_with_a_grace_period_lists_both_keys(
        self, page: Page, site: Site, admin: KeyServiceClient, public: KeyServiceClient
    ) -> None:
        """Roll with "1 hour": the page shows the new key once; both are listed under the name
        and both work until the hour is up."""
        account = site.user.account
        signed_in(page, site)
        old = create_key(page, account, "Rolled server", scopes=["links:read"])

        open_keys(page, account)
        page.get_by_role("link", name="Roll Rolled server", exact=True).click()
        page.get_by_label("Grace period").select_option(label="1 hour")
        page.get_by_role("button", name="Roll key").click()
        new = shown_secret(page)
        expect(page.get_by_text(NOT_SHOWN_AGAIN)).to_be_visible()
        assert new != old

        for secret in (old, new):
            assert verdict(public.authorize(secret, ["links:read"])) == (200, "REASON_ALLOWED")
        ended = when(admin.get_key(account, key_id_of(old)), "expire_time")
        assert ended is not None
        assert timedelta(minutes=59) < ended - datetime.now(UTC) <= timedelta(hours=1)

        open_keys(page, account)
        rows = rows_named(page, "Rolled server")
        expect(rows).to_have_count(2)
        expect(page.locator("table tbody")).to_contain_text(key_id_of(new)[:6])
        expect(page.locator("table tbody")).to_contain_text(key_id_of(old)[:6])

    def test_rolling_with_no_grace_revokes_the_old_key_at_once(
        self, page: Page, site: Site, public: KeyServiceClient
    ) -> None:
        """Roll with "None — revoke now": the old key is refused as revoked, the new one works."""
        account = site.user.account
        signed_in(page, site)
        old = create_key(page, account, "Rolled at once", scopes=["links:read"])
        open_keys(page, account)
        page.get_by_role("link", name="Roll Rolled at once", exact=True).click()
        page.get_by_label("Grace period").select_option(label="None — revoke now")
        page.get_by_role("button", name="Roll key").click()
        new = shown_secret(page)

        assert verdict(public.authorize(old, ["links:read"])) == (401, "REASON_REVOKED")
        assert verdict(public.authorize(new, ["links:read"])) == (200, "REASON_ALLOWED")


class TestHostileInput:
    MARKUP = "<script>alert(1)</script>"

    def test_markup_in_a_name_is_shown_as_text(
        self, tab: Tab, site: Site, admin: KeyServiceClient
    ) -> None:
        """A key named <script>alert(1)</script> is shown as those characters wherever it
        appears (the key page, the list, the revoke page), and no script runs."""
        page = tab.page
        account = site.user.account
        signed_in(page, site)
        create_key(page, account, self.MARKUP)
        expect(page.locator("main")).to_contain_text(self.MARKUP)
        open_keys(page, account)

        row = rows_named(page, self.MARKUP)
        expect(row).to_have_count(1)
        expect(cell(page, row, "Name")).to_contain_text(self.MARKUP)
        assert page.locator("main script, table script").count() == 0
        page.get_by_role("link", name=f"Revoke {self.MARKUP}", exact=True).click()
        expect(page.get_by_role("button", name="Revoke key")).to_be_visible()
        expect(page.locator("main")).to_contain_text(self.MARKUP)
        open_keys(page, account)
        page.get_by_role("link", name="Audit trail").click()
        page.wait_for_load_state()
        assert [key.name for key in admin.list_keys(account).keys] == [self.MARKUP]
        assert tab.dialogs == []

    def test_every_page_carries_a_content_security_policy(self, page: Page, site: Site) -> None:
        """The sign-in page and the keys page forbid scripts from anywhere but the dashboard,
        and inline scripts."""
        responses = document_responses(page)
        signed_in(page, site)
        open_keys(page, site.user.account)
        assert responses
        for response in responses:
            policy = response.headers.get("content-security-policy", "")
            scripts = policy_directive(policy, "script-src") or policy_directive(
                policy, "default-src"
            )
            assert scripts is not None, (response.url, policy)
            assert "'unsafe-inline'" not in scripts, (response.url, policy)
            assert "*" not in scripts.split(), (response.url, policy)

    def test_a_form_without_its_csrf_token_is_refused(
        self, page: Page, site: Site, admin: KeyServiceClient, public: KeyServiceClient
    ) -> None:
        """The create form and the revoke form, posted from the page as filled in but without
        their csrf_token, or with a made-up one, are refused with 403 and change nothing."""
        account = site.user.account
        existing = admin.create_key(account, "Kept", "live", ["links:read"])
        signed_in(page, site)

        fill_key_form(page, account, "Forged")
        create_form = form_of(page.get_by_role("button", name="Create key"))
        expect(create_form.locator("input[type=hidden][name=csrf_token]")).to_have_count(1)
        answer = post_form_without(page, create_form)
        assert answer["status"] == 403
        assert NOT_SENT_BY_US in answer["text"]
        create_form.locator("input[name=csrf_token]").evaluate("e => { e.value = 'forged' }")
        answer = post_form_without(page, create_form, drop="none")
        assert answer["status"] == 403
        assert NOT_SENT_BY_US in answer["text"]

        open_keys(page, account)
        page.get_by_role("link", name="Revoke Kept", exact=True).click()
        page.get_by_label("Reason").fill("forged")
        answer = post_form_without(page, form_of(page.get_by_role("button", name="Revoke key")))
        assert answer["status"] == 403
        assert NOT_SENT_BY_US in answer["text"]

        assert [key.name for key in admin.list_keys(account).keys] == ["Kept"]
        assert verdict(public.authorize(existing.secret)) == (200, "REASON_ALLOWED")

    def test_another_accounts_pages_are_not_found(
        self, page: Page, site: Site, admin: KeyServiceClient, public: KeyServiceClient
    ) -> None:
        """Signed in as ada, grace's account is neither listed nor reachable by editing a URL:
        its keys page, its create form and its key's revoke page answer 404, and posting ada's
        own filled-in revoke form to grace's key revokes nothing."""
        theirs = admin.create_key(site.other.account, "Grace's server", "live", ["links:read"])
        signed_in(page, site)
        create_key(page, site.user.account, "Ada's server")
        open_keys(page, site.user.account)
        page.get_by_role("link", name="Revoke Ada's server", exact=True).click()
        page.wait_for_url("**/revoke")
        mine = page.url
        own_key = re.search(r"/keys/([^/]+)/", mine)
        assert own_key, mine
        forged = mine.replace(site.user.account, site.other.account).replace(
            own_key.group(1), theirs.key.id
        )

        for path in [
            f"/accounts/{site.other.account}/keys",
            f"/accounts/{site.other.account}/keys/new",
            forged,
        ]:
            response = page.goto(path)
            assert response is not None
            assert response.status == 404, (path, response.status)
            expect(page.get_by_text("Grace's server")).to_have_count(0)

        page.goto(mine)
        page.get_by_label("Reason").fill("not yours")
        answer = post_form_without(
            page, form_of(page.get_by_role("button", name="Revoke key")), drop="", action=forged
        )
        assert answer["status"] == 404
        assert admin.get_key(site.other.account, theirs.key.id).status == pb.KEY_STATUS_ACTIVE
        assert verdict(public.authorize(theirs.secret)) == (200, "REASON_ALLOWED")


def policy_directive(policy: str, name: str) -> str | None:
    for part in policy.split(";"):
        words = part.split()
        if words and words[0] == name:
            return " ".join(words[1:])
    return None


class TestLayout:
    def screenshot(self, page: Page, name: str, tmp_path: Path) -> Path:
        path = (DOCS if UPDATE_SCREENSHOTS else tmp_path) / name
        page.screenshot(path=str(path), full_page=False)
        assert 0 < path.stat().st_size < SCREENSHOT_LIMIT, (path, path.stat().st_size)
        return path

    # Readable account ids for the pictures; no other test uses them.
    @pytest.mark.parametrize("ada_account", ["acct_123"])
    def test_the_keys_list(
        self,
        page: Page,
        site: Site,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        tmp_path: Path,
    ) -> None:
        """The API Keys page at a laptop's width: the product page's columns in order, newest
        first, test keys badged TEST and live ones not, when a key was last used, a revoked key
        with its status; saved as docs/dashboard-keys.png."""
        account = site.user.account
        old = admin.create_key(account, "Old CI runner", "live", ["links:read"])
        admin.revoke_key(account, old.key.id, reason="unused")
        admin.create_key(account, "Staging server", "test", ["links:read", "links:write"])
        admin.create_key(
            account,
            "Reporting job",
            "live",
            ["events:read"],
            expire_time=datetime.now(UTC) + timedelta(days=90),
        )
        production = admin.create_key(
            account, "Production server", "live", ["links:read", "sessions:write"]
        )
        assert verdict(public.authorize(production.secret, ["links:read"]))[0] == 200
        used = poll(
            lambda: when(admin.get_key(account, production.key.id), "last_used_at"),
            timeout=TIMEOUT_MS / 1000,
            what="keysvc to record the key's use",
        )
        signed_in(page, site)
        open_keys(page, account)

        headers = [h.strip() for h in page.locator("table thead th").all_inner_texts()]
        assert [h for h in headers if h in COLUMNS] == COLUMNS, headers
        names = [
            cell(page, page.locator("table tbody tr").nth(i), "Name").inner_text()
            for i in range(page.locator("table tbody tr").count())
        ]
        assert [n.replace("TEST", "").strip() for n in names] == [
            "Production server",
            "Reporting job",
            "Staging server",
            "Old CI runner",
        ]
        expect(rows_named(page, "Staging server").get_by_text("TEST", exact=True)).to_be_visible()
        for live in ("Production server", "Reporting job", "Old CI runner"):
            expect(rows_named(page, live).get_by_text("TEST", exact=True)).to_have_count(0)
        expect(cell(page, rows_named(page, "Old CI runner"), "Status")).to_contain_text("Revoked")
        last_used = cell(page, rows_named(page, "Production server"), "Last used").inner_text()
        assert shows_time(last_used, used), (last_used, used)
        expect(cell(page, rows_named(page, "Staging server"), "Last used")).to_have_text("Never")
        self.screenshot(page, "dashboard-keys.png", tmp_path)

    @pytest.mark.parametrize("ada_account", ["acct_456"])
    def test_the_one_time_key_view(self, page: Page, site: Site, tmp_path: Path) -> None:
        """The page showing a new key: the key, Copy and the warning; saved, the key masked, as
        docs/dashboard-secret.png."""
        signed_in(page, site)
        secret = create_key(
            page, site.user.account, "Production server", scopes=["links:read", "sessions:write"]
        )
        expect(page.get_by_text(NOT_SHOWN_AGAIN)).to_be_visible()
        page.locator("code#secret").evaluate(
            "(code, shown) => { code.textContent = shown }",
            secret[:14] + "•" * (len(secret) - 14),
        )
        assert secret not in page.content()
        self.screenshot(page, "dashboard-secret.png", tmp_path)

    def test_nothing_overflows_a_phones_width(
        self, browser: Browser, site: Site, admin: KeyServiceClient
    ) -> None:
        """At 390 pixels wide, the sign-in page, the keys list (with long names and many
        scopes), the create form and the key page are no wider than the screen."""
        account = site.user.account
        admin.create_key(
            account,
            "A rather long key name for the nightly reconciliation job",
            "test",
            ["links:read", "links:write", "sessions:read", "sessions:write", "customers:read"],
        )
        with open_tab(browser, site, PHONE) as tab:
            page = tab.page
            widths = {}
            page.goto("/signin")
            widths["sign-in"] = page_width(page)
            signed_in(page, site)
            open_keys(page, account)
            widths["keys"] = page_width(page)
            page.get_by_role("link", name="Create key").click()
            page.get_by_label("Name", exact=True).wait_for()
            widths["create"] = page_width(page)
            create_key(page, account, "Phone")
            widths["key"] = page_width(page)
            assert {page: w for page, w in widths.items() if w > PHONE["width"] + 1} == {}


def page_width(page: Page) -> int:
    width: int = page.evaluate("document.documentElement.scrollWidth")
    return width
