"""The read-only console in a real headless browser: Debian's Chromium driven by Playwright (executable path
set, no browser download), against a real `aegress serve` holding evidence from real calls.

An operator logs in with an operator token and sees the counters, the call path, pending reviews and verified
evidence with the very receipts the calls carried; a screenshot is checked for layout sanity; an actor token is
refused (form and bearer), as are wrong, revoked and cross-site credentials; every answer carries the CSP and
framing headers, and the browser loads nothing from anywhere else.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from itertools import combinations
from typing import Any

import pytest

from tests.e2e.console_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    GATEWAY_ENV,
    make_calls,
    overlap,
    read_png,
    seed,
    status_json,
    wait_for_checkpoints,
)
from tests.procs import aegress, aegress_json, run_gateway


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("console") / "home"
    tokens = seed(home)
    with run_gateway(home, env=GATEWAY_ENV) as gw:
        gw.tokens = tokens
        calls = make_calls(gw, tokens[("acme", "alice")])
        wait_for_checkpoints(home)
        aegress(home, "audit", "verify")
        operator = aegress_json(home, "operator", "token", "issue", "--label", "browser-test")
        yield gw, calls, operator


@pytest.fixture(scope="module")
def browser(served) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """After `served`: its calls run their own asyncio loop, which Playwright's sync API must not be inside."""
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run scripts/install-test-deps.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


class Visit:
    """A fresh browser context (its own cookies) that notes every request and console message."""

    def __init__(self, browser: Any, base: str, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.base = base
        self.requests: list[str] = []
        self.console: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.console.append(m.text))

    def login(self, token: str) -> Any:
        self.page.goto(self.base + "/console/")
        assert self.page.url == self.base + "/console/login"  # no credential: to the login form
        self.page.fill("#token", token)
        with self.page.expect_navigation():
            self.page.click("#login-button")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Any, served) -> Iterator[Visit]:  # type: ignore[no-untyped-def]
    v = Visit(browser, served[0].base)
    yield v
    v.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """One GET, redirects not followed."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def _num(page: Any, ident: str) -> int:
    return int(page.inner_text(f"#{ident} b").replace(",", ""))


def test_an_operator_logs_in_and_sees_the_gateway(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, calls, operator = served
    status = status_json(gw.home)
    page = visit.login(operator["token"])
    assert page.url == gw.base + "/console/"
    (cookie,) = visit.context.cookies()
    assert cookie["name"] == "__Host-aegress-console" and cookie["httpOnly"] and cookie["secure"]
    assert cookie["sameSite"] == "Strict" and operator["token"] not in cookie["value"]
    assert "operator browser-test" in page.inner_text("header.top")
    # the counters are gateway.status's: the same as `aegress status`
    assert _num(page, "execution-allowed") == 3 and _num(page, "execution-blocked") == 2
    assert _num(page, "gate-allowed") == 3 and _num(page, "gate-held") == 1
    assert _num(page, "gate-blocked") == 2 and _num(page, "gate-denied") == 0
    assert _num(page, "evidence-sealed-records") >= status["evidence"]["records"]
    assert _num(page, "clients-active-15-min") == 1
    assert "bearer" in page.inner_text("#card-binding")
    assert status["deploy"]["path"] in page.inner_text("#card-deploy")
    assert "verified" in page.inner_text("#card-evidence")
    assert "ready" in page.inner_text("#gateway-state") and gw.url in page.inner_text("#gateway-state")
    # actor -> tenant -> policy -> tool -> evidence, for the newest call (the held one)
    steps = page.locator("#flow li").all_inner_texts()
    assert [s.split("\n")[0].upper() for s in steps] == ["ACTOR", "TENANT", "POLICY", "TOOL", "EVIDENCE"]
    assert "alice" in steps[0] and "acme" in steps[1] and "slow-needs-review" in steps[2] and "tools__slow" in steps[3]
    review_id = status["reviews"]["items"][0]["id"]
    assert review_id in calls.held
    pending = page.inner_text("#pending-reviews")
    assert review_id in pending and "tools__slow" in pending and "slow calls need an operator" in pending
    assert "ok" in page.inner_text("#upstreams-table")
    # offline: nothing but the gateway itself, and no CSP violation (no inline style or script anywhere)
    assert all(url.startswith(gw.base) or url.startswith("data:") for url in visit.requests), visit.requests
    assert not [m for m in visit.console if "Content Security Policy" in m], visit.console


def test_the_gateway_page_lays_out_cleanly(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, _, operator = served
    page = visit.login(operator["token"])
    width = 1280
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider than the window
    top = page.locator("header.top").bounding_box()
    assert top is not None and top["y"] == 0 and top["width"] == width and top["height"] >= 30
    cards = [page.locator(f"#{c}").bounding_box() for c in
             ("card-execution", "card-gate", "card-binding", "card-evidence", "card-clients", "card-deploy")]
    for box in cards:
        assert box is not None and box["width"] >= 200 and box["height"] >= 80
        assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] > top["height"]
    assert all(overlap(a, b) == 0 for a, b in combinations(cards, 2))
    steps = [page.locator("#flow li").nth(i).bounding_box() for i in range(5)]
    assert all(s is not None and s["width"] > 100 for s in steps)
    assert [s["x"] for s in steps] == sorted(s["x"] for s in steps)  # left to right, in path order
    assert all(overlap(a, b) == 0 for a, b in combinations(steps, 2))
    shot = page.screenshot(full_page=True)
    w, h, rows = read_png(shot)
    assert w == width and h >= 900
    colours = {px for row in rows[::10] for px in row[::10]}
    assert len(colours) >= 12  # not blank: text, badges, cards
    header_px, body_px = rows[5][5], rows[int(top["height"]) + 20][width - 5]
    assert sum(header_px) < 200 and sum(body_px) > 650  # the stylesheet applied: dark bar over a light page
    # a phone's width: everything stacks, the page never scrolls sideways (wide tables scroll in their own box)
    phone = Visit(visit.page.context.browser, gw.base, width=390)
    try:
        small = phone.login(operator["token"])
        assert small.evaluate("document.documentElement.scrollWidth") <= 390
        boxes = [small.locator(f"#{c}").bounding_box() for c in ("card-execution", "card-gate", "card-binding")]
        assert all(b is not None and b["x"] + b["width"] <= 390 for b in boxes)
        assert all(overlap(a, b) == 0 for a, b in combinations(boxes, 2))
    finally:
        phone.close()


def test_evidence_shows_the_receipts_calls_carried_verified(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, calls, operator = served
    page = visit.login(operator["token"])
    page.goto(gw.base + "/console/evidence?tenant=acme")
    table = page.locator("#evidence-table")
    assert "Last full verification" in page.inner_text("main") and "every log verified" in page.inner_text("main")
    for receipt in calls.receipts:  # what each allowed call's response carried in _meta.aegress
        row = table.locator("tr", has_text=receipt["leaf_hash"])
        assert row.count() == 1
        text = row.inner_text()
        assert f"#{receipt['seq']}" in text and receipt["origin"] in text and "verified" in text
        assert "included in checkpoint" in text


def test_tools_clients_reviews_and_deploy_pages(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, _, operator = served
    page = visit.login(operator["token"])
    page.goto(gw.base + "/console/tools?tenant=acme")
    rows = {r.split("\t")[0]: r for r in page.locator("#tools-table-acme tbody tr").all_inner_texts()}
    assert "allow" in rows["tools__echo"] and "basics" in rows["tools__echo"]
    assert "review" in rows["tools__slow"] and "slow-needs-review" in rows["tools__slow"]
    assert "block" in rows["tools__fail"] and "hidden" in rows["tools__fail"]
    assert "v1" in page.inner_text("#tools-acme")
    page.goto(gw.base + "/console/clients?tenant=acme")
    snippet = page.inner_text("#snippet-claude-code")
    assert gw.url in snippet and "--tenant acme --actor alice" in snippet
    assert "aeg_" not in page.content() and gw.tokens[("acme", "alice")] not in page.content()
    page.goto(gw.base + "/console/reviews")
    assert "tools__slow" in page.inner_text("#pending-table")
    page.goto(gw.base + "/console/deploy")
    assert page.locator("#deploy-table tbody tr").count() == 5
    in_use = status_json(gw.home)["deploy"]["path"]
    assert in_use in page.inner_text("#deploy-in-use")
    assert in_use == "direct" or "in use" in page.locator("#deploy-table tr", has_text=in_use).first.inner_text()
    page.goto(gw.base + "/console/tools?tenant=nobody")
    assert "No tenant 'nobody'" in page.inner_text("main")


def test_an_actor_token_is_refused(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = served
    actor_token = gw.tokens[("acme", "alice")]
    page = visit.page
    page.goto(gw.base + "/console/login")
    page.fill("#token", actor_token)
    with page.expect_navigation() as nav:
        page.click("#login-button")
    assert nav.value.status == 403
    assert "actor token" in page.inner_text("#login-error") and visit.context.cookies() == []
    page.goto(gw.base + "/console/")
    assert page.url == gw.base + "/console/login"  # still not in
    status, headers, body = _get(gw.base + "/console/", Authorization=f"Bearer {actor_token}")
    assert status == 403 and "actor token" in body and "aegress operator token issue" in body
    status, headers, body = _get(gw.base + "/console/", Authorization="Bearer aegop_" + "x" * 40)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and "invalid or revoked" in body


def test_a_revoked_operator_token_ends_its_session(browser: Any, served) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = served
    second = aegress_json(gw.home, "operator", "token", "issue", "--label", "short-lived")
    v = Visit(browser, gw.base)
    try:
        page = v.login(second["token"])
        assert page.url == gw.base + "/console/"
        aegress(gw.home, "operator", "token", "revoke", second["id"], "--yes")
        response = page.goto(gw.base + "/console/tools")
        assert response is not None and response.status == 401
        assert "session ended" in page.inner_text("main") and v.context.cookies() == []
        again = aegress(gw.home, "operator", "token", "revoke", second["id"], "--yes")
        assert "already revoked" in again.stdout
    finally:
        v.close()


def test_logout_clears_the_session(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, _, operator = served
    page = visit.login(operator["token"])
    with page.expect_navigation():
        page.click("header.top button")
    assert page.url == gw.base + "/console/login" and visit.context.cookies() == []
    page.goto(gw.base + "/console/evidence")
    assert page.url == gw.base + "/console/login"


def test_headers_framing_and_cross_site_posts(visit: Visit, served) -> None:  # type: ignore[no-untyped-def]
    gw, _, operator = served
    bearer = {"Authorization": f"Bearer {operator['token']}"}
    for path, want in (("/console/", 200), ("/console/evidence", 200), ("/console/login", 200),
                       ("/console/console.css", 200), ("/console/nope", 404)):
        status, headers, _ = _get(gw.base + path, **bearer)
        assert status == want, path
        csp = headers["content-security-policy"]
        for part in ("default-src 'none'", "style-src 'self'", "img-src 'self' data:", "form-action 'self'",
                     "frame-ancestors 'none'"):
            assert part in csp, (path, csp)
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        if path != "/console/console.css":
            assert headers["cache-control"] == "no-store", path
    status, headers, _ = _get(gw.base + "/console/")
    assert status == 303 and headers["location"] == "/console/login" and "x-frame-options" in headers
    # a page of another origin cannot frame the console
    page = visit.page
    page.set_content(f'<iframe id="f" src="{gw.base}/console/login"></iframe>')
    page.wait_for_timeout(1500)
    framed = [f for f in page.frames if f != page.main_frame]
    assert framed and all(f.url.startswith("chrome-error://") for f in framed), [f.url for f in framed]
    assert any("frame-ancestors 'none'" in m for m in visit.console), visit.console
    # a login form posted from another site, and a Host the gateway does not serve
    request = urllib.request.Request(gw.base + "/console/login", data=f"token={operator['token']}".encode(),
                                     headers={"Origin": "http://evil.example",
                                              "Content-Type": "application/x-www-form-urlencoded"})
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("a cross-site login was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403 and exc.headers.get("set-cookie") is None
    status, _, _ = _get(gw.base + "/console/", Host="evil.example", **bearer)
    assert status == 421
