"""Against the real keys service: its registration and password-reset events become mails, and a console
session it issued opens the notifier's preferences API (through keys' own /internal/whoami)."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import msgspec
from litestar.testing import AsyncTestClient

from services.notifier.app import create_app
from shared.config import CommonSettings
from tests import procs
from tests.notifier.receivers import SmtpServer, settings_for, until


async def test_registration_reset_and_session_through_the_keys_service(
    common: CommonSettings, smtp: SmtpServer
) -> None:
    keys = await asyncio.to_thread(procs.start, "keys", None, None, "/readyz")
    try:
        app = create_app(settings_for(smtp), msgspec.structs.replace(common, keys_url=keys.url))
        address = f"e2e-{secrets.token_hex(4)}@example.com"
        async with AsyncTestClient(app=app) as notifier, httpx.AsyncClient(base_url=keys.url) as http:
            reg = await http.post(
                "/api/auth/register", json={"email": address, "password": "a long enough passphrase 42"}
            )
            assert reg.status_code == 201, reg.text
            account_id = reg.json()["account"]["id"]
            await until(lambda: len(smtp.to(address)) == 1, timeout=20, what="the welcome mail")

            session = reg.cookies["fg_session"]
            prefs = await notifier.get("/api/notifications/preferences", headers={"X-Session": session})
            assert prefs.status_code == 200, prefs.text
            assert prefs.json()["account_id"] == account_id

            asked = await http.post("/api/auth/reset-request", json={"email": address})
            assert asked.status_code == 202
            await until(lambda: len(smtp.to(address)) == 2, timeout=20, what="the reset mail")
    finally:
        keys.stop()
    reset = next(m for m in smtp.to(address) if m.subject.startswith("Reset your"))
    link = next(line.strip() for line in reset.text.splitlines() if "reset-password?token=" in line)
    assert link.startswith("http") and len(link.split("token=", 1)[1]) >= 32
    assert "It works once and expires at" in reset.text
