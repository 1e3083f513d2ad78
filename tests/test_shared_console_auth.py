"""shared/console_auth.py: the CSRF formula keys signs with, the internal-token and session paths, organisation
roles, and the keys client against the real keys service (`faregate keys`)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shared.config import CommonSettings
from shared.console_auth import (
    Caller,
    ConsoleAuth,
    KeysClient,
    Unavailable,
    csrf_ok,
    csrf_token,
    session_hash,
)
from shared.events import new_id
from shared.web import Forbidden, ServiceError, Unauthorized
from tests import procs

SECRET = "k" * 32
TOKEN = "internal-test-token"


class StoredKeys:
    """Answers like keys from two dicts: sessions and (org, person) memberships."""

    def __init__(self, sessions: dict[str, Caller], members: dict[tuple[str, str], str]) -> None:
        self.sessions = sessions
        self.members = members
        self.asked: list[str] = []

    async def whoami(self, session: str) -> Caller:
        self.asked.append(session)
        if session not in self.sessions:
            raise Unauthorized("not logged in or login expired")
        return self.sessions[session]

    async def org_role(self, org_id: str, user_id: str) -> str | None:
        return self.members.get((org_id, user_id))


ALICE = Caller("acct_alice", "acct_alice", "user", "alice@example.com")
ADMIN = Caller("acct_root", "acct_root", "admin", "root@example.com")


@pytest.fixture
def keys() -> StoredKeys:
    return StoredKeys({"s-alice": ALICE, "s-root": ADMIN},
                      {("org_a", "acct_alice"): "viewer", ("org_b", "acct_alice"): "owner"})


@pytest.fixture
def auth(keys: StoredKeys) -> ConsoleAuth:
    return ConsoleAuth(keys, internal_token=TOKEN, secret_key=SECRET)


def test_the_csrf_token_is_the_one_keys_has_always_issued() -> None:
    # Pinned: sessions signed in before a change to the formula must keep their writes working.
    assert session_hash("session-value") == "74c19bcb8ffa19c29b8ebdcae98415d0bbf2d300c3b3ac5ac8dbdfeb11c0e7ab"
    assert csrf_token(SECRET, session_hash("session-value")) == \
        "c2df5dbddd0aa8256115c829f30170043a547c8f4a36be6228dc68ae7344c5f0"
    good = csrf_token(SECRET, session_hash("s"))
    assert csrf_ok(SECRET, "s", good)
    assert not csrf_ok(SECRET, "other-session", good)
    assert not csrf_ok("x" * 32, "s", good)
    assert not csrf_ok(SECRET, "s", "")


async def test_service_calls_name_their_account(auth: ConsoleAuth, keys: StoredKeys) -> None:
    who = await auth.caller({"x-internal-token": TOKEN, "x-account-id": "acct_1", "x-user-id": "u"}, {}, "POST")
    assert who == Caller("acct_1", "u", "user")
    root = await auth.caller({"x-internal-token": TOKEN, "x-role": "admin"}, {}, "GET")
    assert root.is_admin and root.account_id == ""
    with pytest.raises(ServiceError) as missing:
        await auth.caller({"x-internal-token": TOKEN}, {}, "GET")
    assert missing.value.code == "missing_account" and missing.value.status == 400
    with pytest.raises(Unauthorized):
        # A wrong token is refused even with a good session cookie beside it.
        await auth.caller({"x-internal-token": "guess", "x-account-id": "acct_1"}, {"fg_session": "s-alice"}, "GET")
    assert keys.asked == []


async def test_sessions_and_csrf(auth: ConsoleAuth, keys: StoredKeys) -> None:
    cookie = {"fg_session": "s-alice"}
    assert await auth.caller({}, cookie, "GET") == ALICE
    assert await auth.caller({"x-session": "s-alice"}, {}, "DELETE") == ALICE  # a header needs no token
    token = csrf_token(SECRET, session_hash("s-alice"))
    assert await auth.caller({"x-csrf-token": token}, cookie, "post") == ALICE
    for sent in ({}, {"x-csrf-token": "guess"}, {"x-csrf-token": csrf_token(SECRET, session_hash("s-root"))}):
        with pytest.raises(Forbidden) as refused:
            await auth.caller(sent, cookie, "PUT")
        assert refused.value.code == "csrf_failed"
    with pytest.raises(Forbidden):
        # The cookie decides: an X-Session header beside it does not excuse a cookie-borne write.
        await auth.caller({"x-session": "s-alice"}, cookie, "PUT")
    with pytest.raises(Unauthorized):
        await auth.caller({}, {"fg_session": "stale"}, "GET")
    with pytest.raises(Unauthorized):
        await auth.caller({}, {}, "GET")
    read_only = ConsoleAuth(keys, internal_token=TOKEN, secret_key=None)
    assert await read_only.caller({}, cookie, "GET") == ALICE
    with pytest.raises(Forbidden):
        await read_only.caller({"x-csrf-token": token}, cookie, "POST")
    custom = ConsoleAuth(keys, internal_token=TOKEN, secret_key=SECRET, session_cookie="other")
    with pytest.raises(Unauthorized):
        await custom.caller({}, cookie, "GET")
    assert await custom.caller({}, {"other": "s-alice"}, "GET") == ALICE


async def test_organisation_roles(auth: ConsoleAuth) -> None:
    readers, writers = frozenset({"owner", "admin", "viewer"}), frozenset({"owner", "admin"})
    as_org = await auth.org_member(ALICE, "org_a", readers)
    assert as_org == Caller("org_a", "acct_alice", "user", "alice@example.com")
    with pytest.raises(Forbidden) as refused:
        await auth.org_member(ALICE, "org_a", writers)
    assert refused.value.code == "org_role"
    assert (await auth.org_member(ALICE, "org_b", writers)).account_id == "org_b"
    # Not a member, not an org id, no id, an admin: left for the service's own account rule.
    assert await auth.org_member(ALICE, "org_c", readers) == ALICE
    assert await auth.org_member(ALICE, "acct_bob", readers) == ALICE
    assert await auth.org_member(ALICE, None, readers) == ALICE
    assert await auth.org_member(ADMIN, "org_a", readers) == ADMIN


@pytest.fixture(scope="module")
def keys_service(common: CommonSettings) -> Iterator[procs.ServiceProcess]:
    with procs.running("keys", ready_path="/readyz") as sp:
        yield sp


async def test_the_keys_client_against_keys(common: CommonSettings, keys_service: procs.ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=keys_service.url) as http:
        email = f"console-{new_id()[:8]}@example.com"  # unique: the whole suite shares one database
        r = await http.post("/api/auth/register", json={"email": email, "password": "correct horse battery"})
        assert r.status_code == 201, r.text
        session, csrf = r.cookies["fg_session"], r.cookies["csrf"]
        client = KeysClient(http, keys_service.url + "/", common.internal_token)
        who = await client.whoami(session)
        assert who.account_id == r.json()["account"]["id"] and who.email == email and not who.is_admin
        # The token keys issued is the one the services check.
        assert csrf == csrf_token(common.secret_key, session_hash(session))
        with pytest.raises(Unauthorized):
            await client.whoami("not-a-session")
        assert await client.org_role("org_nonexistent", who.account_id) is None
        with pytest.raises(Unavailable):
            await KeysClient(http, f"http://127.0.0.1:{procs.free_port()}", common.internal_token).whoami(session)
