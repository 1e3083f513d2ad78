"""The preferences API: who may call it (a console session checked by a real whoami endpoint, or a service
with the internal token) and the errors a caller gets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.notifier.app import create_app
from shared.config import CommonSettings
from shared.console_auth import csrf_token, session_hash
from tests.notifier.receivers import SmtpServer, settings_for
from tests.procs import free_port


@pytest.fixture
def keys_whoami(common: CommonSettings) -> Iterator[str]:
    """A stand-in for keys' `GET /internal/whoami`: session "good-session" is user u1 of account acct-api."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = (
                self.path == "/internal/whoami"
                and self.headers.get("X-Internal-Token") == common.internal_token
                and self.headers.get("X-Session") == "good-session"
            )
            body = msgspec.json.encode(
                {"account_id": "acct-api", "user_id": "u1", "role": "owner", "email": "api@example.com"}
                if ok
                else {"error": "unauthorized"}
            )
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client_for(common: CommonSettings, smtp: SmtpServer, keys_url: str) -> AsyncTestClient[Any]:
    return AsyncTestClient(
        app=create_app(settings_for(smtp), msgspec.structs.replace(common, keys_url=keys_url))
    )


async def test_console_session_is_checked_with_keys(
    common: CommonSettings, smtp: SmtpServer, keys_whoami: str
) -> None:
    async with client_for(common, smtp, keys_whoami) as client:
        anonymous = await client.get("/api/notifications/preferences")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
        bad = await client.get("/api/notifications/preferences", headers={"X-Session": "stolen"})
        assert bad.status_code == 401 and "login expired" in bad.json()["error"]["message"]

        put = await client.put(
            "/api/notifications/preferences",
            headers={"X-Session": "good-session"},
            json={"email": "billing@example.com", "email_alerts": ["receipt"]},
        )
        assert put.status_code == 200, put.text
        assert put.json()["account_id"] == "acct-api"
        client.cookies.set("fg_session", "good-session")
        token = csrf_token(common.secret_key, session_hash("good-session"))  # what keys puts in its csrf cookie
        client.cookies.set("csrf", token)
        got = await client.get("/api/notifications/preferences")
        assert got.json()["email"] == "billing@example.com" and got.json()["email_alerts"] == ["receipt"]
        assert got.json()["webhook_url"] is None and got.json()["webhook_secret_set"] is False
        # Writes with the cookie must echo the csrf cookie, as with keys' own API.
        # A csrf cookie planted by a sibling site, echoed back, is not the token keys signed.
        client.cookies.set("csrf", "planted")
        planted = await client.put("/api/notifications/preferences", json={"email_alerts": []},
                                   headers={"X-CSRF-Token": "planted"})
        assert planted.status_code == 403 and planted.json()["error"]["code"] == "csrf_failed"
        client.cookies.set("csrf", token)
        forged = await client.put("/api/notifications/preferences", json={"email_alerts": []})
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
        wrong = await client.put(
            "/api/notifications/preferences", json={"email_alerts": []}, headers={"X-CSRF-Token": "guess"}
        )
        assert wrong.status_code == 403
        ok = await client.put(
            "/api/notifications/preferences",
            json={"email_alerts": []},
            headers={"X-CSRF-Token": token},
        )
        assert ok.status_code == 200 and ok.json()["email_alerts"] == []


async def test_internal_token_must_match(common: CommonSettings, smtp: SmtpServer, keys_whoami: str) -> None:
    async with client_for(common, smtp, keys_whoami) as client:
        wrong = await client.get(
            "/api/notifications/preferences",
            headers={"X-Internal-Token": "guess", "X-Account-Id": "acct-api"},
        )
        assert wrong.status_code == 401
        missing = await client.get(
            "/api/notifications/preferences", headers={"X-Internal-Token": common.internal_token}
        )
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_account"


async def test_bad_input_gets_clear_errors(
    common: CommonSettings, smtp: SmtpServer, keys_whoami: str
) -> None:
    h = {"X-Internal-Token": common.internal_token, "X-Account-Id": "acct-bad"}
    async with client_for(common, smtp, keys_whoami) as client:
        unknown_field = await client.put("/api/notifications/preferences", headers=h, json={"emial": "x@y.z"})
        assert unknown_field.status_code == 400
        alert = await client.put("/api/notifications/preferences", headers=h, json={"email_alerts": ["spam"]})
        assert alert.status_code == 422 and alert.json()["error"]["field"] == "email_alerts"
        url = await client.put("/api/notifications/preferences", headers=h, json={"webhook_url": "not a url"})
        assert url.status_code == 422 and url.json()["error"]["code"] == "invalid_webhook_url"
        no_hook = await client.post("/api/notifications/webhook/secret", headers=h)
        assert no_hook.status_code == 409
        status = await client.get("/api/notifications/deliveries?status=lost", headers=h)
        assert status.status_code == 400 and status.json()["error"]["field"] == "status"
        retry = await client.post("/api/notifications/deliveries/999999/retry", headers=h)
        assert retry.status_code == 404


async def test_rotating_the_webhook_secret_shows_a_new_one_once(
    common: CommonSettings, smtp: SmtpServer, keys_whoami: str
) -> None:
    h = {"X-Internal-Token": common.internal_token, "X-Account-Id": "acct-rot"}
    async with client_for(common, smtp, keys_whoami) as client:
        first = (
            await client.put(
                "/api/notifications/preferences", headers=h, json={"webhook_url": "http://127.0.0.1:9/x"}
            )
        ).json()["webhook_secret"]
        rotated = await client.post("/api/notifications/webhook/secret", headers=h)
        assert rotated.status_code == 200
        second = rotated.json()["webhook_secret"]
        assert second.startswith("whsec_") and second != first
        assert (await client.get("/api/notifications/preferences", headers=h)).json()[
            "webhook_secret"
        ] is None


async def test_keys_unreachable_is_a_503_not_a_crash(common: CommonSettings, smtp: SmtpServer) -> None:
    async with client_for(common, smtp, f"http://127.0.0.1:{free_port()}") as client:
        resp = await client.get("/api/notifications/preferences", headers={"X-Session": "any"})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "auth_unavailable"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json()["checks"] == {"postgres": "ok", "nats": "ok"}
