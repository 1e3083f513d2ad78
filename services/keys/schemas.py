"""The HTTP API's request and response bodies (separate from events and tables). Limits on sizes live here, so
an oversized value is refused by msgspec with a field-level 400 before any handler runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.events import ModelPrice

Email = Annotated[str, Meta(min_length=3, max_length=254)]
Password = Annotated[str, Meta(min_length=1, max_length=1024)]
Label = Annotated[str, Meta(min_length=1, max_length=64)]
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")]
GroupName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
ModelList = Annotated[list[Name], Meta(max_length=500)]
IpList = Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=100)]
Micros = Annotated[int, Meta(ge=0, le=10**15)]
Ppm = Annotated[int, Meta(ge=0, le=100_000_000)]
Limit = Annotated[int, Meta(ge=0, le=10_000_000)]
Concurrency = Annotated[int, Meta(ge=1, le=100_000)]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# --- accounts and sessions ----------------------------------------------------------------------------------


class RegisterIn(Body, kw_only=True):
    email: Email
    password: Password


class LoginIn(Body, kw_only=True):
    email: Email
    password: Password


class ResetRequestIn(Body, kw_only=True):
    email: Email


class ResetConfirmIn(Body, kw_only=True):
    token: Annotated[str, Meta(min_length=1, max_length=256)]
    password: Password


class PasswordChangeIn(Body, kw_only=True):
    current_password: Password
    new_password: Password


class AccountOut(msgspec.Struct, kw_only=True):
    id: str
    email: str
    role: str
    status: str
    group: str
    created_at: datetime


class SessionOut(msgspec.Struct, kw_only=True):
    account: AccountOut
    csrf_token: str  # send it back as X-CSRF-Token on every write (also in the `csrf` cookie)


class RegisteredOut(msgspec.Struct, kw_only=True):
    account: AccountOut
    csrf_token: str
    api_key: str  # the default key's secret: shown this once, never again
    key_id: str


class WhoAmI(msgspec.Struct, kw_only=True):
    account_id: str
    user_id: str
    role: str
    email: str


class AccountPatch(Body, kw_only=True):
    status: Annotated[str, Meta(pattern="^(active|disabled)$")] | UnsetType = UNSET
    group: GroupName | UnsetType = UNSET
    role: Annotated[str, Meta(pattern="^(user|admin)$")] | UnsetType = UNSET


class AccountCreateIn(Body, kw_only=True):
    email: Email
    password: Password
    role: Annotated[str, Meta(pattern="^(user|admin)$")] = "user"
    group: GroupName = "default"


class AccountPage(msgspec.Struct, kw_only=True):
    items: list[AccountOut]
    total: int


# --- API keys ---------------------------------------------------------------------------------------------


class KeyCreateIn(Body, kw_only=True):
    label: Label
    group: GroupName | None = None  # None: the account's group
    quota_micros: Micros = 0  # 0 = unlimited (still bounded by the wallet)
    models: ModelList = []
    ip_allow: IpList = []
    expires_at: datetime | None = None
    rpm_limit: Limit | None = None  # None: the service default
    tpm_limit: Limit | None = None
    concurrency_limit: Concurrency | None = None


class KeyPatch(Body, kw_only=True):
    label: Label | UnsetType = UNSET
    group: GroupName | UnsetType = UNSET
    status: Annotated[str, Meta(pattern="^(active|disabled)$")] | UnsetType = UNSET
    quota_micros: Micros | UnsetType = UNSET
    models: ModelList | UnsetType = UNSET
    ip_allow: IpList | UnsetType = UNSET
    expires_at: datetime | UnsetType | None = UNSET  # null clears the expiry
    rpm_limit: Limit | UnsetType = UNSET
    tpm_limit: Limit | UnsetType = UNSET
    concurrency_limit: Concurrency | UnsetType = UNSET


class RotateIn(Body, kw_only=True):
    # How long the old secret keeps working; 0 = it stops at once. At most 30 days.
    grace_seconds: Annotated[int, Meta(ge=0, le=30 * 24 * 3600)] = 0


class KeyOut(msgspec.Struct, kw_only=True):
    id: str
    account_id: str
    prefix: str  # the first characters of the secret
    label: str
    group: str
    status: str  # active | disabled | expired (derived) | deleted
    quota_micros: int
    quota_used_micros: int
    quota_left_micros: int | None  # None: unlimited
    models: list[str]
    ip_allow: list[str]
    expires_at: datetime | None
    rpm_limit: int
    tpm_limit: int
    concurrency_limit: int
    last_used_at: datetime | None
    created_at: datetime
    updated_at: datetime
    previous_secret_valid_until: datetime | None = None  # after a rotation with a grace period


class KeyWithSecret(msgspec.Struct, kw_only=True):
    key: KeyOut
    secret: str  # shown this once; only its hash is stored


class KeyPage(msgspec.Struct, kw_only=True):
    items: list[KeyOut]
    total: int


# --- catalog ----------------------------------------------------------------------------------------------

Provider = Annotated[str, Meta(pattern="^(openai|anthropic|gemini)$")]
Url = Annotated[str, Meta(min_length=8, max_length=512, pattern=r"^https?://[^\s]+$")]
UpstreamKeys = Annotated[list[Annotated[str, Meta(min_length=1, max_length=1024)]], Meta(max_length=64)]
ChannelId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Weight = Annotated[int, Meta(ge=0, le=1_000_000)]
Priority = Annotated[int, Meta(ge=-1_000_000, le=1_000_000)]
ModelMap = Annotated[dict[Name, Annotated[str, Meta(min_length=1, max_length=256)]], Meta(max_length=500)]
GroupList = Annotated[list[GroupName], Meta(max_length=100)]


class ChannelIn(Body, kw_only=True):
    id: ChannelId | None = None  # None: one is made up
    name: Label
    provider: Provider
    base_url: Url
    api_keys: UpstreamKeys = []  # in clear on the way in; sealed at rest; never returned
    models: ModelList = []
    model_map: ModelMap = {}
    priority: Priority = 0
    weight: Weight = 1
    groups: GroupList = []
    status: Annotated[str, Meta(pattern="^(enabled|disabled)$")] = "enabled"
    cost_ratio_ppm: Ppm = 1_000_000


class ChannelPatch(Body, kw_only=True):
    name: Label | UnsetType = UNSET
    provider: Provider | UnsetType = UNSET
    base_url: Url | UnsetType = UNSET
    api_keys: UpstreamKeys | UnsetType = UNSET  # replaces every upstream key
    add_api_keys: UpstreamKeys | UnsetType = UNSET
    models: ModelList | UnsetType = UNSET
    model_map: ModelMap | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    weight: Weight | UnsetType = UNSET
    groups: GroupList | UnsetType = UNSET
    status: Annotated[str, Meta(pattern="^(enabled|disabled)$")] | UnsetType = UNSET
    cost_ratio_ppm: Ppm | UnsetType = UNSET


class ChannelOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    provider: str
    base_url: str
    api_keys: list[str]  # masked, e.g. "sk-…wxyz"
    models: list[str]
    model_map: dict[str, str]
    priority: int
    weight: int
    groups: list[str]
    status: str
    cost_ratio_ppm: int


Price = Annotated[int, Meta(ge=0, le=10**12)]


class PriceIn(Body, kw_only=True):
    input: Price
    output: Price
    cached_input: Price = 0


class ModelIn(Body, kw_only=True):
    name: Name
    provider: Annotated[str, Meta(min_length=1, max_length=32)]
    kind: Annotated[str, Meta(pattern="^(chat|embedding|image)$")] = "chat"
    context_window: Annotated[int, Meta(ge=1, le=100_000_000)] = 128_000
    max_output: Annotated[int, Meta(ge=1, le=100_000_000)] = 8_192
    price: PriceIn
    list_price: PriceIn | None = None
    fallbacks: Annotated[list[Name], Meta(max_length=10)] = []
    image_price_micros: Price = 0


class GroupIn(Body, kw_only=True):
    name: GroupName
    ratio_ppm: Ppm = 1_000_000
    models: ModelList = []
    selectable: bool = False  # users may put their own keys in it


class GroupOut(msgspec.Struct, kw_only=True):
    name: str
    ratio_ppm: int
    models: list[str]
    selectable: bool


class DiscountIn(Body, kw_only=True):
    discount_ppm: Annotated[int, Meta(ge=0, le=1_000_000)]


class CatalogFileChannel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A channel in a catalog file: where a provider answers. Imported disabled and without upstream keys
    unless it already exists (then left as the operator configured it)."""

    id: ChannelId
    name: Label
    provider: Provider
    base_url: Url
    models: ModelList = []
    model_map: ModelMap = {}
    priority: Priority = 0
    weight: Weight = 1
    groups: GroupList = []
    cost_ratio_ppm: Ppm = 1_000_000


class CatalogFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The shape of services/keys/catalog/default.json (prices in micro-USD per million tokens)."""

    comment: str = ""
    discount_ppm: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    groups: list[GroupIn] = []
    models: list[ModelIn] = []
    channels: list[CatalogFileChannel] = []


class CatalogOut(msgspec.Struct, kw_only=True):
    version: int
    discount_ppm: int
    channels: list[ChannelOut]
    models: list[ModelIn]
    groups: list[GroupOut]


class PublicModel(msgspec.Struct, kw_only=True):
    """One row of the pricing page."""

    name: str
    provider: str
    kind: str
    context_window: int
    max_output: int
    price: ModelPrice  # micro-USD per million tokens, platform discount applied
    list_price: ModelPrice | None
    image_price_micros: int
    available: bool  # some enabled channel serves it


class PublicModels(msgspec.Struct, kw_only=True):
    version: int
    discount_ppm: int
    models: list[PublicModel]
