"""Accounts and sessions: register, log in and out, expiry, throttling, password reset, roles and admin user
management, against real Postgres, Redis and NATS."""

from __future__ import annotations

import asyncio
import urllib.parse

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys import accounts
from services.keys.context import Ctx
from shared import events as ev
from shared.config import CommonSettings
from shared.crypto import hash_api_key
from tests.keys.conftest import PASSWORD, Tap, User, login, register, unique_email


async def whoami(client: AsyncTestClient[Litestar], common: CommonSettings, session: str) -> object:
    return await client.get("/internal/whoami", headers={"X-Internal-Token": common.internal_token,
                                                         "X-Session": session})


async def test_register_stores_an_argon2id_hash_and_logs_in(client: AsyncTestClient[Litestar],
                                                            common: CommonSettings, tap: Tap) -> None:
    email = unique_email("Alice")
    r = await client.post("/api/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    cookies = r.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("fg_session="))
    csrf_cookie = next(c for c in cookies if c.startswith("csrf="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    assert "Secure" not in session_cookie
    assert "HttpOnly" not in csrf_cookie
    client.cookies.clear()

    conn = await asyncpg.connect(common.database_url)
    try:
        row = await conn.fetchrow("SELECT password_hash, email_norm FROM keys.accounts WHERE id = $1",
                                  r.json()["account"]["id"])
    finally:
        await conn.close()
    assert row["password_hash"].startswith("$argon2id$") and PASSWORD not in row["password_hash"]
    assert row["email_norm"] == email.lower()

    again = await client.post("/api/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert again.status_code == 409
    weak = await client.post("/api/auth/register", json={"email": unique_email(), "password": "short"})
    assert weak.status_code == 400 and "password" in weak.json()["error"]["fields"]
    bad = await client.post("/api/auth/register", json={"email": "not-an-email", "password": PASSWORD})
    assert bad.status_code == 400 and "email" in bad.json()["error"]["fields"]
    await tap.wait_for(lambda e: isinstance(e, ev.AccountRegistered) and e.email == email)


async def test_secure_cookie_behind_tls(client: AsyncTestClient[Litestar]) -> None:
    r = await client.post("/api/auth/register", json={"email": unique_email(), "password": PASSWORD},
                          headers={"X-Forwarded-Proto": "https"})
    client.cookies.clear()
    assert all("Secure" in c for c in r.headers.get_list("set-cookie"))


async def test_login_me_logout(client: AsyncTestClient[Litestar], common: CommonSettings) -> None:
    alice = await register(client)
    bob = await login(client, alice.email)
    me = await bob.get("/api/auth/me")
    assert me.status_code == 200 and me.json()["account"]["email"] == alice.email
    assert me.json()["csrf_token"] == bob.csrf

    who = await whoami(client, common, bob.session)
    assert who.status_code == 200  # type: ignore[attr-defined]
    assert who.json() == {"account_id": alice.account_id, "user_id": alice.account_id,  # type: ignore[attr-defined]
                          "role": "user", "email": alice.email}

    assert (await bob.post("/api/auth/logout")).status_code == 204
    gone = await bob.get("/api/auth/me")
    assert gone.status_code == 401 and gone.json()["error"]["message"] == "not logged in or login expired"
    assert (await whoami(client, common, bob.session)).status_code == 401  # type: ignore[attr-defined]
    assert (await alice.get("/api/auth/me")).status_code == 200  # the other session lives on

    wrong = await client.post("/api/auth/login", json={"email": alice.email, "password": "wrong password!"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    nobody = await client.post("/api/auth/login", json={"email": unique_email(), "password": PASSWORD})
    assert nobody.status_code == 401 and nobody.json()["error"] == wrong.json()["error"]


async def test_whoami_needs_the_internal_token(client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    r = await client.get("/internal/whoami", headers={"X-Session": alice.session})
    assert r.status_code == 401


async def test_an_idle_session_expires_with_a_clear_message(client: AsyncTestClient[Litestar],
                                                            common: CommonSettings) -> None:
    alice = await register(client)
    assert (await alice.get("/api/auth/me")).status_code == 200
    conn = await asyncpg.connect(common.database_url)
    try:  # idle for longer than session_idle_s (12 h by default)
        await conn.execute("UPDATE keys.sessions SET last_seen_at = now() - interval '13 hours'"
                           " WHERE account_id = $1", alice.account_id)
    finally:
        await conn.close()
    r = await alice.get("/api/keys")
    assert r.status_code == 401
    assert r.json()["error"] == {"code": "not_logged_in", "message": "not logged in or login expired"}
    assert (await whoami(client, common, alice.session)).status_code == 401  # type: ignore[attr-defined]


async def test_activity_keeps_a_session_alive(client: AsyncTestClient[Litestar],
                                              common: CommonSettings) -> None:
    alice = await register(client)
    conn = await asyncpg.connect(common.database_url)
    try:
        await conn.execute("UPDATE keys.sessions SET last_seen_at = now() - interval '11 hours'"
                           " WHERE account_id = $1", alice.account_id)
        assert (await alice.get("/api/auth/me")).status_code == 200
        idle = await conn.fetchval("SELECT now() - last_seen_at FROM keys.sessions WHERE account_id = $1",
                                   alice.account_id)
    finally:
        await conn.close()
    assert idle.total_seconds() < 60


async def test_failed_logins_are_throttled_per_account(client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    for _ in range(3):  # login_max_failures_per_account = 3 in these tests
        r = await client.post("/api/auth/login", json={"email": alice.email, "password": "not the password"},
                              headers={"X-Forwarded-For": "198.51.100.1"})
        assert r.status_code == 401
    blocked = await client.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert blocked.json()["error"]["code"] == "too_many_attempts"
    client.cookies.clear()


async def test_failed_logins_are_throttled_per_address(client: AsyncTestClient[Litestar], ctx: Ctx) -> None:
    victims = [await register(client) for _ in range(3)]
    ip = "testclient"  # AsyncTestClient's client address
    await ctx.redis.delete(f"{ctx.keys.ns}:login:fail:ip:{ip}")
    try:
        for v in victims:  # 2 failures each: under the per-account limit, 6 in all from one address
            for _ in range(2):
                r = await client.post("/api/auth/login", json={"email": v.email, "password": "guess guess"})
                assert r.status_code == 401
        fresh = await register(client)
        blocked = await client.post("/api/auth/login", json={"email": fresh.email, "password": PASSWORD})
        assert blocked.status_code == 429
        assert "address" in blocked.json()["error"]["message"]
    finally:
        await ctx.redis.delete(f"{ctx.keys.ns}:login:fail:ip:{ip}")
    client.cookies.clear()


async def test_password_reset_flow(client: AsyncTestClient[Litestar], tap: Tap) -> None:
    alice = await register(client)
    other_session = await login(client, alice.email)

    known = await client.post("/api/auth/reset-request", json={"email": alice.email})
    unknown = await client.post("/api/auth/reset-request", json={"email": unique_email()})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()

    event = await tap.wait_for(lambda e: isinstance(e, ev.PasswordResetRequested) and e.email == alice.email)
    assert isinstance(event, ev.PasswordResetRequested)
    await asyncio.sleep(0.2)
    assert len(tap.of(ev.PasswordResetRequested)) == 1  # nothing for the unknown address
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(event.reset_url).query)["token"][0]

    new_password = "a brand new password"
    r = await client.post("/api/auth/reset-confirm", json={"token": token, "password": new_password})
    assert r.status_code == 204, r.text
    # Every session of the account ended; the old password is gone; the new one works.
    assert (await alice.get("/api/auth/me")).status_code == 401
    assert (await other_session.get("/api/auth/me")).status_code == 401
    old = await client.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert old.status_code == 401
    await login(client, alice.email, new_password)
    # Single use.
    again = await client.post("/api/auth/reset-confirm",
                              json={"token": token, "password": "yet another one!"})
    assert again.status_code == 400 and "token" in again.json()["error"]["fields"]


async def test_a_reset_token_expires_and_is_stored_only_hashed(client: AsyncTestClient[Litestar],
                                                               common: CommonSettings, tap: Tap) -> None:
    alice = await register(client)
    await client.post("/api/auth/reset-request", json={"email": alice.email})
    event = await tap.wait_for(lambda e: isinstance(e, ev.PasswordResetRequested) and e.email == alice.email)
    assert isinstance(event, ev.PasswordResetRequested)
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(event.reset_url).query)["token"][0]
    conn = await asyncpg.connect(common.database_url)
    try:
        stored = await conn.fetch("SELECT token_hash FROM keys.password_resets WHERE account_id = $1",
                                  alice.account_id)
        assert [r["token_hash"] for r in stored] == [accounts.token_hash(token)]
        await conn.execute("UPDATE keys.password_resets SET expires_at = now() - interval '1 second'"
                           " WHERE account_id = $1", alice.account_id)
    finally:
        await conn.close()
    r = await client.post("/api/auth/reset-confirm",
                          json={"token": token, "password": "a brand new password"})
    assert r.status_code == 400


async def test_changing_the_password_ends_other_sessions(client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    elsewhere = await login(client, alice.email)
    r = await alice.post("/api/auth/password",
                         json={"current_password": "wrong one!!", "new_password": "x" * 12})
    assert r.status_code == 400 and "current_password" in r.json()["error"]["fields"]
    r = await alice.post("/api/auth/password", json={"current_password": PASSWORD,
                                                     "new_password": "another fine password"})
    assert r.status_code == 204
    assert (await alice.get("/api/auth/me")).status_code == 200
    assert (await elsewhere.get("/api/auth/me")).status_code == 401


async def test_users_are_not_admins(client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    for method, url in [("GET", "/api/admin/users"), ("GET", f"/api/admin/users/{alice.account_id}"),
                        ("PATCH", f"/api/admin/users/{alice.account_id}"), ("GET", "/api/admin/catalog"),
                        ("POST", "/api/admin/channels"), ("PUT", "/api/admin/models"),
                        ("PUT", "/api/admin/groups"), ("PUT", "/api/admin/catalog/discount")]:
        r = await alice.request(method, url, json={"role": "admin"})
        assert r.status_code == 403, (method, url, r.text)
    assert (await alice.get("/api/auth/me")).json()["account"]["role"] == "user"


async def test_admin_lists_searches_disables_regroups_and_promotes(client: AsyncTestClient[Litestar],
                                                                  admin: User, common: CommonSettings,
                                                                  catalog_loaded: object, tap: Tap) -> None:
    alice = await register(client, unique_email("findme"))
    found = (await admin.get("/api/admin/users", params={"q": "findme"})).json()
    assert alice.account_id in [a["id"] for a in found["items"]]
    assert all("findme" in a["email"] for a in found["items"])
    admins = (await admin.get("/api/admin/users", params={"role": "admin"})).json()
    assert all(a["role"] == "admin" for a in admins["items"]) and admins["total"] >= 1

    url = f"/api/admin/users/{alice.account_id}"
    r = await admin.patch(url, json={"group": "vip"})
    assert r.status_code == 200 and r.json()["group"] == "vip"
    await tap.wait_for(lambda e: isinstance(e, ev.AccountChanged) and e.account_id == alice.account_id
                       and e.group == "vip")
    assert (await admin.patch(url, json={"group": "no-such-group"})).status_code == 400
    # The account's keys in its old group moved with it, and gateways were told.
    assert (await alice.get(f"/api/keys/{alice.key_id}")).json()["group"] == "vip"
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == alice.key_id
                       and e.key.group == "vip")
    # Moved back to default, a key it had put in vip comes back too: no better-priced key is left behind.
    await admin.patch(url, json={"group": "default"})
    assert (await alice.get(f"/api/keys/{alice.key_id}")).json()["group"] == "default"
    assert (await alice.patch(f"/api/keys/{alice.key_id}", json={"group": "vip"})).status_code == 400
    await admin.patch(url, json={"group": "vip"})

    r = await admin.patch(url, json={"status": "disabled"})
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    assert (await alice.get("/api/auth/me")).status_code == 401  # sessions ended
    blocked = await client.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "account_disabled"
    snap = (await client.get(f"/internal/keys/{hash_api_key(alice.api_key)}",
                             headers={"X-Internal-Token": common.internal_token})).json()
    assert snap["account_status"] == "disabled"  # gateways refuse its keys
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == alice.key_id
                       and e.key.account_status == "disabled")

    await admin.patch(url, json={"status": "active", "role": "admin"})
    promoted = await login(client, alice.email)
    assert (await promoted.get("/api/admin/users")).status_code == 200
    self_demotion = await admin.patch(f"/api/admin/users/{admin.account_id}", json={"role": "user"})
    assert self_demotion.status_code == 409
    assert (await admin.patch(url, json={"role": "owner"})).status_code == 400


async def test_admin_creates_accounts(client: AsyncTestClient[Litestar], admin: User) -> None:
    email = unique_email("made")
    r = await admin.post("/api/admin/users", json={"email": email, "password": PASSWORD, "role": "user"})
    assert r.status_code == 201, r.text
    made = await login(client, email)
    assert (await made.get("/api/keys")).json()["total"] == 0  # no default key for admin-made accounts


async def test_the_first_admin_comes_from_configuration_once(ctx: Ctx, admin: User) -> None:
    assert (await admin.get("/api/admin/users")).status_code == 200  # it logged in: start-up created it
    account_id, created = await accounts.ensure_admin(ctx, "root@example.com", "whatever-password")
    assert created is False  # the app created it at start-up; a rerun changes nothing
    page = await accounts.search(ctx, "root@example.com")
    assert [a.id for a in page.items] == [account_id] and page.items[0].role == "admin"


@pytest.mark.parametrize("body", [{"email": "x@example.com"}, {"password": "p"},
                                  {"email": 5, "password": "x"},
                                  {"email": "a" * 300 + "@example.com", "password": PASSWORD}])
async def test_malformed_auth_bodies_get_field_errors(client: AsyncTestClient[Litestar],
                                                     body: dict[str, object]) -> None:
    r = await client.post("/api/auth/login", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "validation_error" and r.json()["error"]["fields"]


async def test_reset_requests_per_address_are_capped_silently(client: AsyncTestClient[Litestar],
                                                              tap: Tap) -> None:
    alice = await register(client)
    answers = [await client.post("/api/auth/reset-request", json={"email": alice.email}) for _ in range(7)]
    assert {a.status_code for a in answers} == {202} and len({a.text for a in answers}) == 1
    await tap.wait_for(lambda e: isinstance(e, ev.PasswordResetRequested) and e.email == alice.email)
    await asyncio.sleep(0.3)
    sent = [e for e in tap.of(ev.PasswordResetRequested) if e.email == alice.email]
    assert len(sent) == 5  # reset_max_per_hour


async def test_registration_can_be_closed(common: CommonSettings) -> None:
    from services.keys.app import create_app
    from services.keys.config import KeysSettings

    app = create_app(KeysSettings(allow_registration=False), common)
    async with AsyncTestClient(app=app) as closed:
        r = await closed.post("/api/auth/register", json={"email": unique_email(), "password": PASSWORD})
        assert r.status_code == 403 and r.json()["error"]["code"] == "registration_closed"


async def test_scripts_may_send_the_session_as_a_bearer_token(client: AsyncTestClient[Litestar],
                                                              admin: User) -> None:
    bearer = {"Authorization": f"Bearer {admin.session}"}
    r = await client.get("/api/admin/users", headers=bearer)
    assert r.status_code == 200
    made = await client.post("/api/keys", json={"label": "script"}, headers=bearer)  # no CSRF token needed
    assert made.status_code == 201
    wrong = await client.get("/api/keys", headers={"Authorization": "Bearer not-a-session"})
    assert wrong.status_code == 401
    # A cookie still needs its CSRF token, whatever else is sent along.
    both = await client.post("/api/keys", json={"label": "x"},
                             headers={**bearer, **admin.headers(csrf=False)})
    assert both.status_code == 403
