"""/api/orgs/...: organisations, their members, invitations, keys and audit log (services/keys/orgs.py);
/internal/orgs/...: a person's membership, for billing and usage."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, get, patch, post
from litestar.di import Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from services.keys import orgs
from services.keys.org_schemas import (
    AuditOut,
    InvitationOut,
    InvitationWithLink,
    InviteIn,
    MemberOut,
    MemberPatch,
    MembershipOut,
    OrgCreateIn,
    OrgOut,
    OrgPatch,
    TokenIn,
)
from services.keys.schemas import KeyCreateIn, KeyOut, KeyPage, KeyPatch, KeyWithSecret, RotateIn
from services.keys.web import CtxDep, WhoDep, provide_principal, require_internal

AuditLimit = Annotated[int, QueryParameter(ge=1, le=500)]


@get("/", summary="The organisations you belong to, with your role in each")
async def list_orgs(ctx: CtxDep, who: WhoDep) -> list[OrgOut]:
    return await orgs.my_orgs(ctx, who)


@post("/", status_code=201, summary="Create an organisation (you become its owner; its id is its wallet's)")
async def create_org(ctx: CtxDep, who: WhoDep, data: JSONBody[OrgCreateIn]) -> OrgOut:
    return await orgs.create_org(ctx, who, data)


@get("/{org_id:str}")
async def get_org(ctx: CtxDep, who: WhoDep, org_id: FromPath[str]) -> OrgOut:
    return await orgs.get_org(ctx, who, org_id)


@patch("/{org_id:str}", summary="Name, time zone, default monthly allowance (owners and admins)")
async def update_org(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], data: JSONBody[OrgPatch]) -> OrgOut:
    return await orgs.update_org(ctx, who, org_id, data)


@get("/{org_id:str}/audit", summary="Membership, role, allowance, settings and key changes, newest first")
async def audit(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], before: FromQuery[int | None] = None,
                limit: AuditLimit = 100) -> list[AuditOut]:
    return await orgs.audit_log(ctx, who, org_id, before, limit)


@get("/{org_id:str}/members")
async def list_members(ctx: CtxDep, who: WhoDep, org_id: FromPath[str]) -> list[MemberOut]:
    return await orgs.members(ctx, who, org_id)


@patch("/{org_id:str}/members/{user_id:str}", summary="Role and monthly allowance (owners and admins)")
async def update_member(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], user_id: FromPath[str],
                        data: JSONBody[MemberPatch]) -> MemberOut:
    return await orgs.update_member(ctx, who, org_id, user_id, data)


@delete("/{org_id:str}/members/{user_id:str}", status_code=HTTP_204_NO_CONTENT,
        summary="Remove a member (or leave: your own id); their org keys stop at once")
async def remove_member(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], user_id: FromPath[str]) -> None:
    await orgs.remove_member(ctx, who, org_id, user_id)


@get("/{org_id:str}/invitations")
async def list_invitations(ctx: CtxDep, who: WhoDep, org_id: FromPath[str]) -> list[InvitationOut]:
    return await orgs.invitations(ctx, who, org_id)


@post("/{org_id:str}/invitations", status_code=201,
      summary="Invite by e-mail (mailed) or by link; the link is in this answer only")
async def invite(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], data: JSONBody[InviteIn]
                 ) -> InvitationWithLink:
    return await orgs.invite(ctx, who, org_id, data)


@delete("/{org_id:str}/invitations/{inv_id:str}", status_code=200, summary="Revoke a pending invitation")
async def revoke_invitation(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], inv_id: FromPath[str]
                            ) -> InvitationOut:
    return await orgs.revoke_invitation(ctx, who, org_id, inv_id)


@post("/invitations/accept", status_code=200, summary="Join the organisation an invitation token names")
async def accept(ctx: CtxDep, who: WhoDep, data: JSONBody[TokenIn]) -> MemberOut:
    return await orgs.accept(ctx, who, data.token)


@post("/invitations/decline", status_code=200)
async def decline(ctx: CtxDep, who: WhoDep, data: JSONBody[TokenIn]) -> InvitationOut:
    return await orgs.decline(ctx, who, data.token)


@get("/{org_id:str}/keys", summary="Your keys in the org (owners and admins: all=true for every key)")
async def list_keys(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], all: FromQuery[bool] = False) -> KeyPage:
    return await orgs.keys(ctx, who, org_id, everyone=all)


@post("/{org_id:str}/keys", status_code=201, summary="A key the organisation pays for, held by you")
async def create_key(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], data: JSONBody[KeyCreateIn]
                     ) -> KeyWithSecret:
    key, secret = await orgs.create_key(ctx, who, org_id, data)
    return KeyWithSecret(key=key, secret=secret)


@patch("/{org_id:str}/keys/{key_id:str}")
async def update_key(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], key_id: FromPath[str],
                     data: JSONBody[KeyPatch]) -> KeyOut:
    return await orgs.update_key(ctx, who, org_id, key_id, data)


@post("/{org_id:str}/keys/{key_id:str}/rotate", status_code=200,
      summary="New secret, same settings; the old one works for grace_seconds more")
async def rotate_key(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], key_id: FromPath[str],
                     data: JSONBody[RotateIn]) -> KeyWithSecret:
    key, secret = await orgs.rotate_key(ctx, who, org_id, key_id, data.grace_seconds)
    return KeyWithSecret(key=key, secret=secret)


@delete("/{org_id:str}/keys/{key_id:str}", status_code=HTTP_204_NO_CONTENT)
async def delete_key(ctx: CtxDep, who: WhoDep, org_id: FromPath[str], key_id: FromPath[str]) -> None:
    await orgs.delete_key(ctx, who, org_id, key_id)


router = Router("/api/orgs", route_handlers=[
    list_orgs, create_org, get_org, update_org, audit, list_members, update_member, remove_member,
    list_invitations, invite, revoke_invitation, accept, decline, list_keys, create_key, update_key,
    rotate_key, delete_key,
], dependencies={"who": Provide(provide_principal)}, tags=["organisations"])


@get("/orgs/{org_id:str}/members/{user_id:str}", summary="A person's role in an organisation; 404 if none")
async def membership(internal: CtxDep, org_id: FromPath[str], user_id: FromPath[str]) -> MembershipOut:
    return await orgs.membership(internal, org_id, user_id)


internal_router = Router("/internal", route_handlers=[membership],
                         dependencies={"internal": Provide(require_internal)}, include_in_schema=False)
