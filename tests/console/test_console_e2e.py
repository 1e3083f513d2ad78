"""Issue 8's acceptance run, in Debian's Chromium against the real stack: sign up -> create a key -> top up
with the sandbox provider -> a playground chat that streams -> the request in the logs and on the dashboard ->
CSV export -> disable the key -> the playground shows the key refused. Then every page is photographed at
phone (375 px) and desktop (1280 px) widths into tests/console/screenshots/ (git-ignored)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import secrets
import time
from typing import Any

from services.keys import seed as keys_seed
from shared.config import CommonSettings
from tests import procs
from tests.console.browser import ADMIN_EMAIL, ADMIN_PASSWORD, SCREENSHOTS

MODEL = "gpt-4o-mini"
PASSWORD = "a-long-console-password"

# Counts the playground's reply updates as they happen, so the test can tell a stream from one final write.
WATCH_REPLIES = """
() => {
  window.__deltas = 0;
  new MutationObserver((ms) => {
    for (const m of ms) {
      const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
      if (el && el.closest && el.closest('[data-testid=reply] p.streaming')) window.__deltas += 1;
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


async def _nav(page: Any, label: str) -> None:
    """Follow a main-menu link (in-app navigation keeps the tab's memory, like a person clicking)."""
    toggle = page.locator(".nav-toggle")
    if await toggle.is_visible():
        await toggle.click()
    await page.locator("#main-nav").get_by_role("link", name=label, exact=True).click()


async def _until(check: Any, seconds: float = 30, every: float = 0.5) -> Any:
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    return last


async def _shoot(page: Any, name: str, width: int) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)


async def test_sign_up_to_refused_key_in_a_browser(
        common: CommonSettings, stack: dict[str, procs.ServiceProcess], browser: Any) -> None:
    base = stack["keys"].url
    await keys_seed.seed_demo(common, upstream_base_url=stack["mock-upstream"].url)  # catalog + mock channel
    email = f"console-{secrets.token_hex(4)}@example.com"
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Sign up: the onboarding screen shows the base URL, the default key (once) and a first snippet.
    await page.goto(base + "/signup")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Sign up").click()
    # The API's field-level message lands next to the password field.
    await page.locator('[data-error-for="password"]').filter(has_text=re.compile(r"\S")).wait_for()
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.get_by_role("heading", name="Welcome to Faregate").wait_for()
    default_secret = (await page.get_by_test_id("new-secret").inner_text()).strip()
    assert default_secret and await page.get_by_test_id("base-url").inner_text() == f"{base}/v1"
    assert default_secret in await page.locator("pre.code").inner_text()
    await _shoot(page, "onboarding", 1280)

    # Create a key: the secret is shown once, with a warning and a copy button.
    await _nav(page, "API keys")
    await page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog")
    # No label: the API's message shows next to the field.
    await dialog.get_by_role("button", name="Create").click()
    await dialog.locator('[data-error-for="label"]').filter(has_text=re.compile(r"\S")).wait_for()
    await dialog.get_by_label("Label").fill("playground")
    await dialog.get_by_role("button", name="Create").click()
    card = page.get_by_role("region", name="New key")
    await card.wait_for()
    secret = (await card.get_by_test_id("new-secret").inner_text()).strip()
    assert secret.startswith("sk-") and secret != default_secret
    assert "only time it is shown" in await card.inner_text()
    row = page.locator("tr", has_text="playground")
    await row.get_by_text("active").wait_for()
    assert secret not in await row.inner_text()  # the list shows the prefix only

    # Top up $20 with the sandbox provider; the 10% bonus is shown before paying.
    await _nav(page, "Wallet")
    await page.locator('button.preset[data-amount="20000000"]').click()
    preview = await page.get_by_test_id("bonus-preview").inner_text()
    assert "$20.00" in preview and "10%" in preview and "$2.00" in preview, preview
    await page.get_by_role("button", name="Continue to payment").click()
    await page.get_by_role("button", name="Pay now (sandbox)").click()
    await page.get_by_text("Paid.").wait_for()
    await page.get_by_test_id("balance").filter(has_text="$22.00").wait_for()
    await page.locator("table tbody tr", has_text="topup").first.wait_for()
    # Low-balance alert threshold and notification preferences (billing and notifier, through one form).
    await page.get_by_label("Warn me when the balance falls below (USD)").fill("5")
    await page.locator("fieldset", has_text="Send to the webhook").get_by_label("receipt").uncheck()
    await page.get_by_role("button", name="Save alerts").click()
    await page.get_by_text("Alert settings saved.").wait_for()
    await page.locator("dl.facts dd").filter(has_text="$5.00").wait_for()

    # Playground with the new key: the reply streams in, piece by piece.
    await _nav(page, "Playground")
    await page.get_by_label("API key", exact=True).select_option(label=f"playground ({secret[:10]}…)")
    await page.locator(".model-pickers select").first.select_option(MODEL)
    await page.evaluate(WATCH_REPLIES)
    await page.get_by_label("Message").fill("Tell me about trains.")
    await page.get_by_role("button", name="Send").click()
    reply = page.get_by_test_id("reply").last
    await reply.locator(".meta").filter(has_text="tokens").wait_for(timeout=30_000)
    text = await reply.locator("p").first.inner_text()
    assert text.strip() and "refused" not in text
    deltas = await page.evaluate("window.__deltas")
    assert deltas >= 3, f"the reply arrived in {deltas} update(s): not streamed"
    await page.get_by_role("button", name="Copy as code").click()
    code = await page.locator("pre.code").all_inner_texts()
    assert any("curl" in c and f"{base}/v1/chat/completions" in c for c in code)
    assert any("from openai import OpenAI" in c for c in code)
    assert any('import OpenAI from "openai"' in c for c in code)
    assert not any(secret in c for c in code)  # the snippet never embeds the key

    # The request shows up in the logs (usage consumes the event asynchronously).
    await _nav(page, "Logs")

    async def logged() -> bool:
        await page.get_by_role("button", name="Apply").click()
        await page.wait_for_load_state("networkidle")
        return await page.locator("tr[data-request-id]", has_text=MODEL).count() >= 1

    assert await _until(logged), "the playground's request never appeared in the usage logs"
    log_row = page.locator("tr[data-request-id]", has_text=MODEL).first
    request_id = await log_row.get_attribute("data-request-id")
    assert "playground" in await log_row.inner_text()

    # CSV export of the current filter: the same request, metadata only.
    async with page.expect_download() as dl_info:
        await page.get_by_test_id("csv-link").click()
    download = await dl_info.value
    body = (await download.path()).read_text()  # type: ignore[union-attr]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert any(request_id in r.values() for r in rows), body[:500]
    assert "trains" not in body  # no prompt content in the export

    # The dashboard counts it.
    await _nav(page, "Dashboard")

    async def counted() -> bool:
        stat = page.locator(".stat", has_text="Requests today").locator("strong")
        await stat.wait_for()
        if (await stat.inner_text()).strip() not in ("0", ""):
            return True
        await _nav(page, "Models & pricing")
        await _nav(page, "Dashboard")
        return False

    assert await _until(counted), "the dashboard never counted the request"
    assert await page.locator(".share-fig li", has_text=MODEL).count() == 1
    assert await page.locator("svg.chart rect.bar").count() >= 1
    await _shoot(page, "dashboard-after-chat", 1280)
    key_filter = page.get_by_label("Key", exact=True)
    key_id = await key_filter.locator("option", has_text="playground").get_attribute("value")
    await key_filter.select_option(key_id)
    key_stat = page.locator(".stat", has_text='key "playground"').locator("strong")
    await key_stat.filter(has_text=re.compile(r"^[1-9]")).wait_for()
    assert await page.locator(".share-fig li", has_text=MODEL).count() == 1
    # A key without traffic: every number on the page is that key's (none), only the balance is the account's.
    await key_filter.select_option(await key_filter.locator("option", has_text="default").get_attribute("value"))
    unused = page.locator(".stat", has_text='key "default"').locator("strong")
    await unused.filter(has_text=re.compile(r"^0$")).wait_for()
    assert await page.locator(".share-fig li").count() == 0
    assert await page.locator(".share-fig", has_text="No traffic yet.").count() == 1
    assert await page.locator(".stat", has_text="Balance").filter(has_text="whole account").count() == 1

    # Compare two models side by side on one prompt: each column streams its own reply.
    await _nav(page, "Playground")
    await page.get_by_label("API key", exact=True).select_option(label=f"playground ({secret[:10]}…)")
    await page.get_by_role("button", name="Add a model to compare").click()
    assert await page.locator("section.column").count() == 2
    await page.get_by_label("Message").fill("Compare yourselves.")
    await page.get_by_role("button", name="Send").click()
    for column in await page.locator("section.column").all():
        await column.locator("[data-testid=reply] .meta").filter(has_text="tokens").wait_for(timeout=30_000)
    await _shoot(page, "playground-compare", 1280)

    # Disable the key; the playground then shows the gateway refusing it.
    await _nav(page, "API keys")
    row = page.locator("tr", has_text="playground")
    await row.get_by_role("button", name="Disable playground").click()
    await row.get_by_text("disabled").wait_for()
    # Edit a key's quota and model list; delete another after confirming.
    await row.get_by_role("button", name="Edit").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Quota (USD)").fill("5")
    await dialog.get_by_label("Models allowed").fill(f"{MODEL}, gpt-4o")
    await dialog.get_by_role("button", name="Save").click()
    await page.get_by_text('Key "playground" saved.').wait_for()
    await row.filter(has_text="/ $4.99").wait_for()
    default_row = page.locator("tr", has_text="default").filter(has=page.get_by_text("active"))
    await default_row.get_by_role("button", name="Delete default").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete key").click()
    await page.get_by_text('Key "default" deleted.').wait_for()
    assert await page.locator("tr[data-key-id]", has_text="default").filter(has_text="active").count() == 0

    await _nav(page, "Playground")
    await page.get_by_label("API key", exact=True).select_option(label=f"playground ({secret[:10]}…)")
    await page.get_by_label("Message").fill("Still there?")
    await page.get_by_role("button", name="Send").click()
    refused = page.locator("[data-testid=reply].error")
    await refused.wait_for(timeout=15_000)
    message = await refused.inner_text()
    assert "refused" in message and re.search(r"\((401|403)\)", message), message
    # The question shows above its answer (on screen, not only in the DOM: CSS can reorder).
    question = await page.locator(".transcript .msg", has_text="Still there?").bounding_box()
    answer = await refused.bounding_box()
    assert question and answer and question["y"] < answer["y"], (question, answer)
    await _shoot(page, "playground-refused", 1280)
    assert not errors, errors

    # The session ends under the page (cookie gone, as after an expiry): the next call sends the person to log
    # in, then back to the page they were on.
    await ctx.clear_cookies()
    await _nav(page, "Wallet")
    await page.get_by_text("Your session has ended").wait_for()
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Wallet").wait_for()

    # Log out, then a deep link: a page that needs a login sends you back there afterwards.
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_role("heading", name="Log in").wait_for()
    await page.goto(base + "/logs?status=ok")
    await page.get_by_role("heading", name="Log in").wait_for()
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Usage logs").wait_for()
    assert page.url.endswith("/logs?status=ok")

    # A reset link that is not (or no longer) valid says so on the form.
    await page.get_by_role("button", name="Log out").click()
    await page.goto(base + "/reset-password?token=not-a-real-token")
    await page.get_by_label("New password").fill("another-long-password")
    await page.get_by_role("button", name="Set the password").click()
    await page.locator("form .notice.err").wait_for()
    await page.goto(base + "/forgot")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_role("button", name="Send the link").click()
    await page.locator("form .notice.ok").filter(has_text="reset link").wait_for()
    await ctx.close()

    await _screenshots(browser, base, email)


USER_PAGES = ["dashboard", "keys", "wallet", "logs", "playground", "models", "settings", "onboarding"]
GUEST_PAGES = ["login", "signup", "forgot", "models"]
ADMIN_PAGES = ["admin/users", "admin/channels", "admin/models", "admin/groups", "admin/plans", "admin/codes",
               "admin/bonus"]


async def _login(page: Any, base: str, email: str, password: str) -> None:
    await page.goto(base + "/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Dashboard").wait_for()


async def _screenshots(browser: Any, base: str, email: str) -> None:
    """Every page at both widths; each must render its heading without a script error."""
    for width in (375, 1280):
        for who, pages in (("guest", GUEST_PAGES), ("user", USER_PAGES), ("admin", ADMIN_PAGES)):
            ctx = await browser.new_context(viewport={"width": width, "height": 800})
            page = await ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
            if who == "user":
                await _login(page, base, email, PASSWORD)
            elif who == "admin":
                await _login(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
            for name in pages:
                await page.goto(f"{base}/{name}")
                await page.locator("main h1").first.wait_for()
                await page.wait_for_load_state("networkidle")
                failed = await page.locator("main > .notice.err").count()
                assert not failed, f"{name}: {await page.inner_text('main')}"
                await _shoot(page, f"{who}-{name.replace('/', '-')}", width)
            assert not errors, errors
            # Nothing wider than the viewport at phone width (tables turn into cards).
            if width == 375:
                overflow = await page.evaluate("document.documentElement.scrollWidth")
                assert overflow <= width + 1, f"{who}: page is {overflow}px wide at {width}px"
            await ctx.close()


async def test_admin_codes_and_adjustments_reach_a_users_wallet(
        common: CommonSettings, stack: dict[str, procs.ServiceProcess], browser: Any) -> None:
    """An admin makes a redemption code and adjusts a wallet with a reason; the user redeems the code: all
    through the console, each write carrying the CSRF token through the proxy to billing."""
    base = stack["keys"].url
    email = f"redeem-{secrets.token_hex(4)}@example.com"
    user_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    user = await user_ctx.new_page()
    await user.goto(base + "/signup")
    await user.get_by_label("E-mail").fill(email)
    await user.get_by_label("Password").fill(PASSWORD)
    await user.get_by_role("button", name="Sign up").click()
    await user.get_by_role("heading", name="Welcome to Faregate").wait_for()

    admin_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    admin = await admin_ctx.new_page()
    await _login(admin, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    await admin.goto(base + "/admin/codes")
    await admin.get_by_label("How many").fill("1")
    await admin.get_by_label("Credit each (USD)").fill("3")
    await admin.get_by_role("button", name="Generate").click()
    code = (await admin.locator("pre.code").inner_text()).strip()
    assert code and "\n" not in code

    await admin.goto(base + "/admin/users")
    await admin.get_by_label("Search users").fill(email)
    row = admin.locator("tr", has_text=email)
    await row.get_by_role("button", name="Adjust wallet").click()
    await admin.get_by_label("Amount (USD, negative to debit)").fill("1.50")
    # No reason: refused next to the field.
    await admin.get_by_role("button", name="Adjust", exact=True).click()
    await admin.locator('[data-error-for="reason"]').filter(has_text=re.compile(r"\S")).wait_for()
    await admin.get_by_label("Reason (kept in the ledger)").fill("goodwill")
    await admin.get_by_role("button", name="Adjust", exact=True).click()
    await admin.get_by_text("Balance now $1.50").wait_for()

    await user.goto(base + "/wallet")
    await user.get_by_label("Code").fill(code)
    await user.get_by_role("button", name="Redeem").click()
    await user.get_by_text("Your balance is now $4.50").wait_for()
    await user.locator("table tbody tr", has_text="goodwill").wait_for()
    await user.get_by_label("Code").fill(code)
    await user.get_by_role("button", name="Redeem").click()  # a code works once
    await user.locator(".notice.err").wait_for()
    await user_ctx.close()
    await admin_ctx.close()


async def test_admin_sees_channel_rotation_and_tests_a_channel(
        common: CommonSettings, stack: dict[str, procs.ServiceProcess], browser: Any) -> None:
    """The channels page shows the gateway's breaker state per channel, and Test sends one request through the
    channel (keys -> gateway -> mock upstream) and shows the outcome."""
    base = stack["keys"].url
    await keys_seed.seed_demo(common, upstream_base_url=stack["mock-upstream"].url)  # the "mock" channel
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await _login(page, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    row = None
    for _ in range(20):  # the gateway learns the seeded channel from catalog.changed
        await page.goto(base + "/admin/channels")
        row = page.locator("tr", has=page.locator("code", has_text=re.compile(r"^mock$")))
        await row.first.wait_for()
        if await row.locator('.channel-health[data-state="closed"]').count():
            break
        await asyncio.sleep(0.5)
    assert row is not None
    await row.locator('.channel-health[data-state="closed"]').wait_for()
    await row.get_by_role("button", name="Test").click()
    await row.locator(".channel-test-result").filter(has_text=re.compile(r"^OK: 200 in \d+ ms$")).wait_for()
    assert not errors, errors
    await ctx.close()
