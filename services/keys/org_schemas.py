"""Request and response bodies of the organisations API (/api/orgs). Sizes are limited here, as in
schemas.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from services.keys.schemas import Body, Email, Micros

OrgName = Annotated[str, Meta(min_length=1, max_length=100)]
TimeZone = Annotated[str, Meta(min_length=1, max_length=64)]
MemberRole = Annotated[str, Meta(pattern="^(owner|admin|member|viewer)$")]
InvitedRole = Annotated[str, Meta(pattern="^(admin|member|viewer)$")]  # ownership is given, never invited
Token = Annotated[str, Meta(min_length=1, max_length=256)]


class OrgCreateIn(Body, kw_only=True):
    name: OrgName
    time_zone: TimeZone = "UTC"
    default_allowance_micros: Micros = 0  # monthly allowance of new members; 0 = none


class OrgPatch(Body, kw_only=True):
    name: OrgName | UnsetType = UNSET
    time_zone: TimeZone | UnsetType = UNSET
    default_allowance_micros: Micros | UnsetType = UNSET


class OrgOut(msgspec.Struct, kw_only=True):
    id: str  # also the wallet's account id in billing
    name: str
    time_zone: str
    default_allowance_micros: int
    status: str
    created_by: str
    created_at: datetime
    my_role: str


class MemberOut(msgspec.Struct, kw_only=True):
    user_id: str
    email: str
    role: str
    allowance_micros: int
    joined_at: datetime
    allowance_used_micros: int = 0  # this month (the org's time zone), as the gateways counted it


class MemberPatch(Body, kw_only=True):
    role: MemberRole | UnsetType = UNSET
    allowance_micros: Micros | UnsetType = UNSET


class InviteIn(Body, kw_only=True):
    email: Email | None = None  # None: a link anyone holding it may use once
    role: InvitedRole = "member"
    allowance_micros: Micros | None = None  # None: the org's default when accepted


class InvitationOut(msgspec.Struct, kw_only=True):
    id: str
    org_id: str
    email: str
    role: str
    allowance_micros: int | None
    status: str  # pending | accepted | declined | revoked | expired
    invited_by: str
    expires_at: datetime
    created_at: datetime


class InvitationWithLink(msgspec.Struct, kw_only=True):
    invitation: InvitationOut
    url: str  # shown this once (and mailed for an e-mail invitation); only the token's hash is stored


class TokenIn(Body, kw_only=True):
    token: Token


class AuditOut(msgspec.Struct, kw_only=True):
    id: int
    actor_id: str
    action: str
    subject_id: str
    detail: dict[str, Any]
    at: datetime


class MembershipOut(msgspec.Struct, kw_only=True):
    """What /internal/orgs/{org_id}/members/{user_id} tells billing and usage."""

    org_id: str
    user_id: str
    role: str
    allowance_micros: int
    time_zone: str
