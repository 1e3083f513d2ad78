"""Shared steps of the organisation scenarios: an org with one person in each role."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.keys.conftest import User, register


@dataclass
class Org:
    id: str
    owner: User
    admin: User
    member: User
    viewer: User
    outsider: User

    def by_role(self, role: str) -> User:
        return {"owner": self.owner, "admin": self.admin, "member": self.member, "viewer": self.viewer,
                "outsider": self.outsider}[role]


async def join(org_id: str, inviter: User, person: User, role: str, **extra: object) -> None:
    r = await inviter.post(f"/api/orgs/{org_id}/invitations", json={"role": role, **extra})
    assert r.status_code == 201, r.text
    token = r.json()["url"].split("token=")[1]
    r = await person.post("/api/orgs/invitations/accept", json={"token": token})
    assert r.status_code == 200, r.text


async def make_org(client: AsyncTestClient[Litestar], **settings: object) -> Org:
    owner = await register(client)
    r = await owner.post("/api/orgs", json={"name": "Acme", **settings})
    assert r.status_code == 201, r.text
    org_id = r.json()["id"]
    people = {role: await register(client) for role in ("admin", "member", "viewer", "outsider")}
    for role in ("admin", "member", "viewer"):
        await join(org_id, owner, people[role], role)
    return Org(id=org_id, owner=owner, **people)
