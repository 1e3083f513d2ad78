"""The HTTP API's request bodies and answers (separate from events and tables). Money is integer micro-USD in
`*_micros` fields, with the display form beside it in `*_usd` ('$12.500000')."""

from __future__ import annotations

from datetime import datetime

import msgspec


class TopUpStart(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount_micros: int | None = None
    amount_usd: str | None = None  # "20" or "20.50"; either this or amount_micros


class Redeem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    code: str


class Threshold(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    threshold_micros: int


class BuyPlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pay_with: str = "balance"  # balance | payment
    idempotency_key: str | None = None


class Adjust(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount_micros: int  # positive credits, negative debits
    reason: str
    idempotency_key: str | None = None


class Refund(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    usage_event_id: str | None = None
    request_id: str | None = None
    amount_micros: int | None = None  # default: everything the wallet paid for that request
    reason: str = ""


class CodeBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    count: int
    amount_micros: int
    expires_at: datetime | None = None
    valid_days: int | None = None


class PlanDef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    price_micros: int
    credit_micros: int
    validity_days: int
    models: list[str] = []
    active: bool = True


class Tier(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    min_micros: int
    percent: int


class Tiers(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tiers: list[Tier]
