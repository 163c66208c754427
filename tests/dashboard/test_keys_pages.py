"""An account's pages: the API Keys list, creating a key (shown once), revoking, rolling,
editing, and the audit trail, each checked against keysvc itself."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2
from starlette.testclient import TestClient

from keysvc.dashboard import pages
from tests.e2e.harness import KEY_PATTERN, verdict

from .conftest import Site, csrf_of, field_errors, once_of, secret_of

pytestmark = pytest.mark.slow

pb = keysvc_pb2
NOT_AGAIN = "This key will not be shown again"
COLUMNS = ["Name", "Prefix", "Mode", "Scopes", "Last used", "Created", "Expires", "Status"]


def create_form(browser: TestClient, account: str, **fields: str | list[str]) -> dict[str, object]:
    """The create form as the page hands it out, filled in with `fields`."""
    page = browser.get(f"/accounts/{account}/keys/new")
    assert page.status_code == 200, page.text
    return {
        "csrf_token": csrf_of(page.text),
        "once": once_of(page.text),
        "name": "",
        "mode": "test",
        "expires": "",
        "allowed_ips": "",
        **fields,
    }


def create(browser: TestClient, account: str, **fields: str | list[str]) -> str:
    response = browser.post(
        f"/accounts/{account}/keys/new", data=create_form(browser, account, **fields)
    )
    assert response.status_code == 200, response.text
    secret = secret_of(response.text)
    assert secret is not None and KEY_PATTERN.fullmatch(secret), response.text
    return secret


def key_id(secret: str) -> str:
    return secret[8:20]


def headers_of(page: str) -> list[str]:
    thead = re.search(r"<thead>(.*?)</thead>", page, re.S)
    assert thead
    return re.findall(r"<th[^>]*>([^<]*)</th>", thead.group(1))


class TestCreate:
    def test_the_form_offers_every_scope_unticked_and_not_live(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """One checkbox per scope of ListScopes, labelled with its name, its description beside
        it, none ticked; Live and Test radios with Live not chosen; expiry said to be UTC."""
        browser = site.signed_in()
        page = browser.get(f"/accounts/{site.ada_account}/keys/new").text
        for scope in admin.list_scopes():
            checkbox = rf'<input type="checkbox" id="([^"]+)" name="scopes" value="{scope.name}"'
            assert re.search(rf'{checkbox}[^>]*>\s*<label for="\1">{scope.name}</label>', page)
            assert html.escape(scope.description) in page
        assert " checked" not in page.split('name="scopes"', 1)[1]
        assert re.search(r'value="live">\s*<label for="mode-live">Live</label>', page)
        assert re.search(r'value="test" checked>\s*<label for="mode-test">Test</label>', page)
        assert '<input type="date" id="expires"' in page
        assert "UTC" in page
        assert '<label for="allowed_ips">Allowed IPs</label>' in page

    def test_the_key_is_shown_once_uncached_and_works(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """200 with the key in <code id="secret">, the Copy button and the warning, marked
        no-store; keysvc allows the key for its scopes; it is in no header and no cookie."""
        browser = site.signed_in()
        form = create_form(
            browser, site.ada_account, name="Production server", mode="live",
            scopes=["links:read", "sessions:write"],
        )  # fmt: skip
        response = browser.post(f"/accounts/{site.ada_account}/keys/new", data=form)

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        secret = secret_of(response.text)
        assert secret is not None and secret.startswith("ck_live_")
        assert NOT_AGAIN in response.text
        assert (
            '<button type="button" class="copy" data-copy="secret">Copy</button>' in response.text
        )
        assert '<script src="/static/copy.js" defer></script>' in response.text
        assert secret not in str(response.headers)
        assert verdict(admin.authorize(secret, ["links:read", "sessions:write"])) == (
            200,
            "REASON_ALLOWED",
        )
        key = admin.get_key(site.ada_account, key_id(secret))
        assert (key.name, key.mode, list(key.scopes)) == (
            "Production server",
            pb.MODE_LIVE,
            ["links:read", "sessions:write"],
        )

    def test_reloading_shows_the_empty_form_and_posting_again_makes_nothing(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """GET of the same URL is the empty form; the same form posted again (a reload, a
        double click) makes no second key and shows no key."""
        browser = site.signed_in()
        form = create_form(browser, site.ada_account, name="Once", scopes=["links:read"])
        secret = secret_of(browser.post(f"/accounts/{site.ada_account}/keys/new", data=form).text)
        assert secret

        again = browser.get(f"/accounts/{site.ada_account}/keys/new")
        assert secret not in again.text
        assert 'id="secret"' not in again.text
        assert 'id="name" name="name" value=""' in again.text

        repost = browser.post(f"/accounts/{site.ada_account}/keys/new", data=form)
        assert repost.status_code == 303
        assert "ck_" not in repost.text + str(repost.headers)
        back = browser.get(repost.headers["location"])
        assert "already sent" in back.text
        assert 'id="name" name="name" value=""' in back.text
        assert secret not in back.text
        assert [k.id for k in admin.list_keys(site.ada_account).keys] == [key_id(secret)]

    def test_the_list_shows_the_key_and_never_its_secret(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """The API Keys page: the product page's columns in order, the key newest first with
        its prefix, a TEST badge on test keys only, and no secret anywhere."""
        browser = site.signed_in()
        live = create(
            browser, site.ada_account, name="Live one", mode="live", scopes=["links:read"]
        )
        test = create(
            browser, site.ada_account, name="Test one", mode="test", scopes=["links:read"]
        )
        page = browser.get(f"/accounts/{site.ada_account}/keys")

        assert page.status_code == 200
        assert "<title>API Keys</title>" in page.text
        assert "<h1>API Keys</h1>" in page.text
        assert headers_of(page.text) == COLUMNS
        assert live not in page.text and test not in page.text
        rows = re.findall(
            r'<tr class="key ([a-z]+) ([a-z]+)-key" data-key-id="([^"]+)">', page.text
        )
        assert rows == [("active", "test", key_id(test)), ("active", "live", key_id(live))]
        assert page.text.count('class="badge test-mode">TEST</span>') == 1
        for name in ("Live one", "Test one"):
            for action in ("Revoke", "Roll", "Edit"):
                assert f'aria-label="{action} {name}"' in page.text
        assert ">Create key</a>" in page.text
        assert ">Audit trail</a>" in page.text

    def test_filters_and_the_test_data_banner(self, site: Site) -> None:
        """Mode and Status filters (GET mode=, status=) narrow the list; filtering test mode
        shows the Test data banner."""
        browser = site.signed_in()
        live = create(browser, site.ada_account, name="Live", mode="live", scopes=["links:read"])
        test = create(browser, site.ada_account, name="Test", mode="test", scopes=["links:read"])
        keys = f"/accounts/{site.ada_account}/keys"

        page = browser.get(keys).text
        assert '<label for="filter-mode">Mode</label>' in page
        assert '<label for="filter-status">Status</label>' in page
        assert ">Filter</button>" in page
        assert "Test data" not in page
        only_test = browser.get(keys, params={"mode": "test"}).text
        assert key_id(test) in only_test and key_id(live) not in only_test
        assert "<strong>Test data</strong>" in only_test
        revoked = browser.get(keys, params={"status": "revoked"}).text
        assert key_id(test) not in revoked and "No keys match these filters." in revoked

    def test_paging_follows_keysvcs_page_token(
        self, site: Site, admin: KeyServiceClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With more keys than a page holds, "Next page" carries the page token and shows the
        rest, keeping the filters."""
        monkeypatch.setattr(pages, "PAGE_SIZE", 2)
        ids = [
            admin.create_key(site.ada_account, f"key {n}", "test", ["links:read"]).key.id
            for n in range(3)
        ]
        browser = site.signed_in()
        first = browser.get(f"/accounts/{site.ada_account}/keys", params={"mode": "test"}).text
        link = re.search(r'<a href="\?([^"]+)" rel="next">Next page</a>', first)
        assert link, first
        query = html.unescape(link.group(1))
        assert "mode=test" in query and "page_token=" in query
        second = browser.get(f"/accounts/{site.ada_account}/keys?{query}").text
        assert [i for i in reversed(ids) if i in first] == list(reversed(ids))[:2]
        assert [i for i in ids if i in second] == [ids[0]]
        assert "Next page" not in second


class TestValidation:
    @pytest.mark.parametrize(
        ("fields", "field", "words"),
        [
            ({"name": "", "scopes": ["links:read"]}, "name", "name: required"),
            ({"name": "No scope"}, "scopes", "at least one scope"),
            ({"name": "Odd", "scopes": ["links:admin"]}, "scopes", "unknown scope"),
            (
                {
                    "name": "Bad IP",
                    "scopes": ["links:read"],
                    "allowed_ips": "10.0.0.0/8\n10.0.0.300",
                },
                "allowed_ips",
                "10.0.0.300",
            ),
            (
                {"name": "Past", "scopes": ["links:read"], "expires": "2020-01-01"},
                "expires",
                "in the future",
            ),
            ({"name": "Garbled", "scopes": ["links:read"], "expires": "soon"}, "expires", "a date"),
            ({"name": "No mode", "scopes": ["links:read"], "mode": ""}, "mode", "Live or Test"),
        ],
        ids=[
            "no-name",
            "no-scope",
            "unknown-scope",
            "bad-ip",
            "past-expiry",
            "bad-date",
            "no-mode",
        ],
    )
    def test_bad_input_is_answered_on_the_form(
        self,
        site: Site,
        admin: KeyServiceClient,
        fields: dict[str, str | list[str]],
        field: str,
        words: str,
    ) -> None:
        """The form again (400) with keysvc's message beside the field, what was typed kept,
        no key shown and none made."""
        browser = site.signed_in()
        form = create_form(browser, site.ada_account, **fields)
        response = browser.post(f"/accounts/{site.ada_account}/keys/new", data=form)

        assert response.status_code == 400
        errors = field_errors(response.text)
        assert list(errors) == [field], errors
        assert words in html.unescape(errors[field])
        assert f'value="{html.escape(str(fields["name"]))}"' in response.text
        if "allowed_ips" in fields:
            assert html.escape(str(fields["allowed_ips"])) in response.text
        assert secret_of(response.text) is None
        assert list(admin.list_keys(site.ada_account).keys) == []

        # Corrected, the same form makes its key.
        form.update(name="Fixed", mode="test", scopes=["links:read"], allowed_ips="", expires="")
        fixed = browser.post(f"/accounts/{site.ada_account}/keys/new", data=form)
        assert fixed.status_code == 200 and secret_of(fixed.text)

    def test_an_expiry_date_is_midnight_utc(self, site: Site, admin: KeyServiceClient) -> None:
        """An Expires date makes the key expire at 00:00 UTC that day."""
        browser = site.signed_in()
        day = (datetime.now(UTC) + timedelta(days=30)).date()
        secret = create(
            browser, site.ada_account, name="Dated", scopes=["links:read"], expires=day.isoformat()
        )
        key = admin.get_key(site.ada_account, key_id(secret))
        assert key.expire_time.ToDatetime(tzinfo=UTC) == datetime(
            day.year, day.month, day.day, tzinfo=UTC
        )


class TestChanges:
    def test_revoke_confirms_then_revokes_with_the_reason(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """The confirmation names the key; Revoke key (with a reason) is 303 to the list, where
        the row shows Revoked, its time and the reason; keysvc refuses the key; the audit trail
        names ada via the dashboard's caller."""
        browser = site.signed_in()
        secret = create(browser, site.ada_account, name="Leaky", mode="live", scopes=["links:read"])
        key = admin.get_key(site.ada_account, key_id(secret))
        url = f"/accounts/{site.ada_account}/keys/{key.id}/revoke"

        confirm = browser.get(url)
        assert confirm.status_code == 200
        assert "<strong>Leaky</strong>" in confirm.text and key.prefix in confirm.text
        assert '<label for="reason">Reason</label>' in confirm.text
        assert ">Revoke key</button>" in confirm.text
        response = browser.post(
            url, data={"csrf_token": csrf_of(confirm.text), "reason": "compromised"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == f"/accounts/{site.ada_account}/keys"

        assert verdict(admin.authorize(secret)) == (401, "REASON_REVOKED")
        revoked = admin.get_key(site.ada_account, key.id)
        assert revoked.revocation_reason == "compromised"
        stamp = revoked.revoked_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        page = browser.get(response.headers["location"]).text
        status = re.search(r'<td data-label="Status" class="status">(.*?)</td>', page, re.S)
        assert status
        text = re.sub(r"<[^>]+>", "", status.group(1))
        assert re.search(
            rf"Revoked\s+{re.escape(stamp)}\s+\((just now|\d+ seconds? ago)\)\s+— compromised", text
        ), text
        assert 'aria-label="Revoke Leaky"' not in page
        [event, _] = list(admin.iter_audit_events(site.ada_account))
        assert (event.action, event.actor, event.reason) == (
            pb.AUDIT_ACTION_KEY_REVOKED,
            "ada via admin-token",
            "compromised",
        )
        # A revoked key has no revoke, roll or edit page any more.
        assert browser.get(url).status_code == 409

    def test_roll_shows_the_new_key_once_and_both_stay_listed(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """Grace period select (24 hours by default); Roll key answers 200 no-store with the new
        key; both keys work and both are listed."""
        browser = site.signed_in()
        old = create(browser, site.ada_account, name="Rolling", mode="live", scopes=["links:read"])
        url = f"/accounts/{site.ada_account}/keys/{key_id(old)}/roll"
        form = browser.get(url).text
        assert '<label for="grace">Grace period</label>' in form
        options = re.findall(r'<option value="(\d+)"( selected)?>([^<]+)</option>', form)
        assert options == [
            ("0", "", "None — revoke now"),
            ("3600", "", "1 hour"),
            ("86400", " selected", "24 hours"),
            ("604800", "", "7 days"),
        ]
        response = browser.post(
            url, data={"csrf_token": csrf_of(form), "once": once_of(form), "grace": "3600"}
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        new = secret_of(response.text)
        assert new and new != old and NOT_AGAIN in response.text
        for secret in (old, new):
            assert verdict(admin.authorize(secret)) == (200, "REASON_ALLOWED")
        listed = browser.get(f"/accounts/{site.ada_account}/keys").text
        assert key_id(old) in listed and key_id(new) in listed
        # The same form again (a reload): no second roll, no key, back to the list.
        again = browser.post(
            url, data={"csrf_token": csrf_of(form), "once": once_of(form), "grace": "3600"}
        )
        assert again.status_code == 303
        assert "already sent" in browser.get(again.headers["location"]).text
        assert len(admin.list_keys(site.ada_account).keys) == 2
        actors = {event.actor for event in admin.iter_audit_events(site.ada_account)}
        assert actors == {"ada via admin-token"}

    def test_roll_with_no_grace_revokes_the_old_key(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """None — revoke now: the old key is refused as revoked, the new one works."""
        browser = site.signed_in()
        old = create(browser, site.ada_account, name="Now", scopes=["links:read"])
        url = f"/accounts/{site.ada_account}/keys/{key_id(old)}/roll"
        form = browser.get(url).text
        response = browser.post(
            url, data={"csrf_token": csrf_of(form), "once": once_of(form), "grace": "0"}
        )
        new = secret_of(response.text)
        assert new
        assert verdict(admin.authorize(old)) == (401, "REASON_REVOKED")
        assert verdict(admin.authorize(new)) == (200, "REASON_ALLOWED")

    def test_edit_changes_name_scopes_and_addresses(
        self, site: Site, admin: KeyServiceClient
    ) -> None:
        """The edit form holds the key as it is; Save updates it through UpdateKey and goes back
        to the list; a bad address is answered on the form."""
        browser = site.signed_in()
        secret = create(
            browser, site.ada_account, name="Old name", scopes=["links:read", "links:write"]
        )
        url = f"/accounts/{site.ada_account}/keys/{key_id(secret)}/edit"
        form = browser.get(url).text
        assert 'value="Old name"' in form
        assert len(re.findall(r'name="scopes" value="links:(read|write)"[^>]* checked>', form)) == 2
        assert ">Save</button>" in form

        bad = browser.post(
            url,
            data={
                "csrf_token": csrf_of(form),
                "name": "New name",
                "scopes": ["links:read"],
                "allowed_ips": "nope",
            },
        )
        assert bad.status_code == 400
        assert "nope" in html.unescape(field_errors(bad.text)["allowed_ips"])
        assert admin.get_key(site.ada_account, key_id(secret)).name == "Old name"

        response = browser.post(
            url,
            data={
                "csrf_token": csrf_of(form),
                "name": "New name",
                "scopes": ["links:read"],
                "allowed_ips": "203.0.113.0/24\n",
            },
        )
        assert response.status_code == 303
        key = admin.get_key(site.ada_account, key_id(secret))
        assert (key.name, list(key.scopes), list(key.allowed_ips)) == (
            "New name",
            ["links:read"],
            ["203.0.113.0/24"],
        )
        [updated, _] = list(admin.iter_audit_events(site.ada_account))
        assert (updated.action, updated.actor) == (
            pb.AUDIT_ACTION_KEY_UPDATED,
            "ada via admin-token",
        )

    def test_the_audit_trail_page(self, site: Site) -> None:
        """Audit trail: Time, Action, Key, Actor, Reason/Changes, newest first."""
        browser = site.signed_in()
        secret = create(browser, site.ada_account, name="Audited", scopes=["links:read"])
        url = f"/accounts/{site.ada_account}/keys/{key_id(secret)}/revoke"
        browser.post(url, data={"csrf_token": csrf_of(browser.get(url).text), "reason": "unused"})

        page = browser.get(f"/accounts/{site.ada_account}/audit").text
        assert "<h1>Audit trail</h1>" in page
        assert headers_of(page) == ["Time", "Action", "Key", "Actor", "Reason/Changes"]
        actions = re.findall(r'<td data-label="Action">([^<]+)</td>', page)
        assert actions == ["Revoked", "Created"]
        assert page.count('<span class="actor">ada via admin-token</span>') == 2
        assert '<span class="reason">unused</span>' in page
        assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', page)
