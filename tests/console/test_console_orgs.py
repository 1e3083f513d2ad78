"""Issue 11's console part, in Debian's Chromium against the real stack: an owner creates an organisation and an
invitation link, a second person opens the link and accepts, the owner sets that member's monthly allowance and
sees it in the members list and the audit log. The org pages are photographed at 375 and 1280 px."""

from __future__ import annotations

import re
import secrets
from typing import Any

from shared.config import CommonSettings
from tests import procs
from tests.console.browser import SCREENSHOTS

PASSWORD = "a-long-console-password"


async def _sign_up(browser: Any, base: str, email: str) -> tuple[Any, Any, list[str]]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base + "/signup")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.get_by_role("heading", name="Welcome to Faregate").wait_for()
    return ctx, page, errors


async def _shoot_both(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (375, 1280):
        await page.set_viewport_size({"width": width, "height": 800})
        await page.wait_for_load_state("networkidle")
        await page.screenshot(path=str(SCREENSHOTS / f"orgs-{name}-{width}.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})


async def test_owner_invites_by_link_and_sets_the_members_allowance(
        common: CommonSettings, stack: dict[str, procs.ServiceProcess], browser: Any) -> None:
    base = stack["keys"].url
    owner_email = f"owner-{secrets.token_hex(4)}@example.com"
    member_email = f"member-{secrets.token_hex(4)}@example.com"
    org_name = f"Acme {secrets.token_hex(3)}"
    owner_ctx, owner, owner_errors = await _sign_up(browser, base, owner_email)
    member_ctx, member, member_errors = await _sign_up(browser, base, member_email)

    # The owner reaches the page from the main menu and creates the organisation.
    await owner.locator("#main-nav").get_by_role("link", name="Organisations", exact=True).click()
    await owner.get_by_role("heading", name="Organisations").wait_for()
    assert "no organisation yet" in await owner.inner_text("main")
    await owner.get_by_label("Name", exact=True).fill(org_name)
    await owner.get_by_role("button", name="Create organisation").click()
    await owner.get_by_role("heading", name=org_name).wait_for()
    org_path = owner.url.removeprefix(base)
    assert re.fullmatch(r"/orgs/[^/]+", org_path), owner.url
    assert owner_email in await owner.get_by_test_id("members").inner_text()

    # An invitation link (no e-mail): shown once, and listed as pending.
    await owner.get_by_role("button", name="Invite", exact=True).click()
    link_box = owner.get_by_label("Invitation link")
    await link_box.wait_for()
    link = await link_box.input_value()
    assert link.startswith(f"{base}/orgs/join?token="), link
    pending = owner.locator("section", has=owner.get_by_role("heading", name="Pending invitations"))
    await pending.get_by_text("anyone with the link").wait_for()
    await _shoot_both(owner, "org")

    # The second person opens the link and accepts; the org is then in their list.
    await member.goto(link)
    await member.get_by_role("heading", name="Join an organisation").wait_for()
    await _shoot_both(member, "join")
    await member.get_by_role("button", name="Accept").click()
    await member.get_by_role("heading", name="Organisations").wait_for()
    await member.get_by_role("link", name=org_name).wait_for()
    await _shoot_both(member, "list")

    # The owner sees the new member, gives them $7.50 a month, and finds it in the list and the audit log.
    await owner.reload()
    await owner.get_by_role("heading", name=org_name).wait_for()
    members = owner.get_by_test_id("members")
    await members.get_by_text(member_email).wait_for()
    assert "No pending invitations." in await pending.inner_text()
    await owner.get_by_role("button", name=f"Edit {member_email}").click()
    dialog = owner.get_by_role("dialog")
    await dialog.get_by_label("Monthly allowance (USD)").fill("7.50")
    await dialog.get_by_role("button", name="Save").click()
    await dialog.wait_for(state="detached")
    row = members.locator("tr", has_text=member_email)
    await row.get_by_text("$7.50").wait_for()
    audit = owner.get_by_test_id("audit")
    allowance_entry = audit.locator("tr", has_text="member.allowance_changed")
    await allowance_entry.wait_for()
    assert "new: $7.50" in await allowance_entry.inner_text()
    assert await audit.locator("tr", has_text="member.joined").count() == 1
    await _shoot_both(owner, "org-after")

    assert not owner_errors, owner_errors
    assert not member_errors, member_errors
    await owner_ctx.close()
    await member_ctx.close()
