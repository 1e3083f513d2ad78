"""The event contract: every fact that crosses a service boundary, as versioned msgspec Structs.

Rules (see ARCHITECTURE.md): events are past-tense facts; each Struct is frozen and keyword-only with a `type` tag;
new fields get defaults; a tag is never reused; a breaking change is a new tag. JSON on the wire. Money is integer
micro-USD (1 USD = 1_000_000) and token counts are integers. Nothing a client sent or received as content (prompts,
completions) ever appears here: metadata only.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec


def new_id() -> str:
    """A fresh event id: a UUID4 hex string (also the gateway's request id)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    event_id: str = msgspec.field(default_factory=new_id)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)


# --- catalog and key snapshots (carried by keys events and cached by the gateway) -----------------------------


class KeySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the gateway needs to authorise a request with one API key. Keyed by `key_hash`."""

    key_id: str
    key_hash: str  # sha256 hex of the full secret
    account_id: str  # the wallet owner (a user or an organisation)
    user_id: str  # the person the key belongs to
    status: str  # active | disabled | deleted
    group: str = "default"
    quota_micros: int = 0  # 0 = unlimited (still bounded by the wallet)
    models: tuple[str, ...] = ()  # allow-list; empty = every model the group allows
    ip_allow: tuple[str, ...] = ()  # addresses and CIDR ranges, v4 and v6; empty = any
    expires_at: datetime | None = None
    rpm_limit: int = 0  # 0 = no per-key RPM limit
    tpm_limit: int = 0
    concurrency_limit: int = 100
    account_status: str = "active"
    # Rotation: the old hash keeps working until this instant.
    grace_until: datetime | None = None
    org_id: str | None = None
    # An organisation's key: the holder's monthly credit allowance (0 = none; the org's wallet still bounds it)
    # and the org's IANA time zone, in which the allowance month begins (a gateway derives the month from it).
    allowance_micros: int = 0
    allowance_tz: str = "UTC"


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True):
    """Prices in micro-USD per million tokens."""

    input: int
    output: int
    cached_input: int = 0


# --- keys service -------------------------------------------------------------------------------------------


class AccountRegistered(Event, frozen=True, kw_only=True, tag="account.registered"):
    account_id: str
    email: str
    # E-mail verification link, when keys asks for one (single-use; the token in it is stored only as a hash).
    # Empty: the notifier sends a plain welcome.
    verify_url: str = ""


class AccountChanged(Event, frozen=True, kw_only=True, tag="account.changed"):
    """Status, group or role changed; the gateway re-reads the keys of a disabled account."""

    account_id: str
    status: str
    group: str
    role: str


class PasswordResetRequested(Event, frozen=True, kw_only=True, tag="password.reset_requested"):
    account_id: str
    email: str
    reset_url: str  # single-use, expiring link; the token in it is stored only as a hash
    expires_at: datetime


class KeyChanged(Event, frozen=True, kw_only=True, tag="key.changed"):
    """A key was created, edited, disabled, rotated or deleted: the full new snapshot (deleted keys included)."""

    key: KeySnapshot
    # On rotation, the old hash: it stays valid until key.grace_until, then is refused.
    previous_hash: str | None = None


class KeyExpiring(Event, frozen=True, kw_only=True, tag="key.expiring"):
    account_id: str
    key_id: str
    label: str
    expires_at: datetime


class CatalogChanged(Event, frozen=True, kw_only=True, tag="catalog.changed"):
    """Channels, models, prices or groups changed; gateways reload the catalog snapshot."""

    version: int


# --- gateway ------------------------------------------------------------------------------------------------


class UsageRecorded(Event, frozen=True, kw_only=True, tag="usage.recorded"):
    """One per request, failed or not. `event_id` is the request id, so a retried publish is the same event."""

    request_id: str
    account_id: str
    key_id: str
    user_id: str = ""
    org_id: str | None = None
    model: str  # public model name the client asked for (after fallback: the one that served)
    upstream_model: str = ""
    channel_id: str = ""
    dialect: str = "openai"  # the client's API: openai | anthropic | gemini | responses
    upstream_dialect: str = ""
    endpoint: str = "chat"  # chat | embeddings | images | responses | messages
    stream: bool = False
    status: int = 200  # HTTP status returned to the client
    error_code: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens served from the upstream's cache
    latency_ms: int = 0
    ttft_ms: int = 0
    # The prices it was charged at (micro-USD per million tokens), so a replay prices it the same.
    price: ModelPrice | None = None
    group: str = "default"
    group_ratio_ppm: int = 1_000_000  # group price multiplier, parts per million
    discount_ppm: int = 0  # platform discount, parts per million off
    cost_price: ModelPrice | None = None  # what the upstream charges the operator (list × channel discount)
    reservation_id: str = ""  # the gateway's reservation this request held (released when debited)
    reserved_micros: int = 0
    client_ip: str = ""


# --- billing ------------------------------------------------------------------------------------------------


class UsageCharged(Event, frozen=True, kw_only=True, tag="usage.charged"):
    """Billing debited (or, at zero cost, recorded) a request."""

    request_id: str
    usage_event_id: str
    account_id: str
    key_id: str
    model: str
    channel_id: str = ""
    amount_micros: int  # what the wallet paid, after plans
    cost_micros: int = 0  # what the upstream charged the operator
    plan_micros: int = 0  # part covered by plans
    balance_micros: int  # wallet balance after the debit


class WalletCredited(Event, frozen=True, kw_only=True, tag="wallet.credited"):
    """A top-up, code redemption, refund or admin adjustment credited (or, if negative, debited) a wallet."""

    account_id: str
    kind: str  # topup | code | refund | adjustment | plan
    amount_micros: int
    bonus_micros: int = 0
    paid_micros: int = 0
    balance_micros: int
    reference: str = ""
    reason: str = ""


class BalanceLow(Event, frozen=True, kw_only=True, tag="balance.low"):
    """A wallet crossed its low-balance threshold downward (once per crossing); exhausted when balance <= 0."""

    account_id: str
    balance_micros: int
    threshold_micros: int
    exhausted: bool = False


class PlanPurchased(Event, frozen=True, kw_only=True, tag="plan.purchased"):
    account_id: str
    plan_id: str
    plan_name: str
    paid_micros: int
    credit_micros: int
    expires_at: datetime
    reference: str = ""
    balance_micros: int = 0


# --- gateway health -----------------------------------------------------------------------------------------


class ChannelStateChanged(Event, frozen=True, kw_only=True, tag="channel.state_changed"):
    """The circuit breaker took a channel out of rotation (open), probes it (half_open) or restored it (closed)."""

    channel_id: str
    state: str
    reason: str = ""


# --- organisations (keys service) ---------------------------------------------------------------------------


class OrgMemberInvited(Event, frozen=True, kw_only=True, tag="org.member_invited"):
    """An e-mail invitation to join an organisation; the notifier mails `invite_url` (single-use, expiring; the
    token in it is stored only as a hash)."""

    org_id: str
    org_name: str
    invitation_id: str
    email: str
    role: str
    invite_url: str
    expires_at: datetime
    invited_by: str = ""  # the inviter's account id


class OrgMemberChanged(Event, frozen=True, kw_only=True, tag="org.member_changed"):
    """A member joined, changed role or allowance, or left/was removed (`removed`: their org keys are disabled)."""

    org_id: str
    user_id: str
    role: str
    allowance_micros: int = 0  # per month in the org's time zone; 0 = no allowance (the wallet bounds it)
    removed: bool = False
    actor_id: str = ""


AnyEvent = (
    AccountRegistered
    | AccountChanged
    | PasswordResetRequested
    | KeyChanged
    | KeyExpiring
    | CatalogChanged
    | UsageRecorded
    | UsageCharged
    | WalletCredited
    | BalanceLow
    | PlanPurchased
    | ChannelStateChanged
    | OrgMemberInvited
    | OrgMemberChanged
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """Raises msgspec.DecodeError / ValidationError on a malformed or unknown event."""
    return _decoder.decode(data)


def tag_of(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
