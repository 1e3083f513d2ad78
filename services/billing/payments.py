"""Payment providers behind one small protocol: start a checkout for a payment, and turn a provider's webhook
into a verified notice. The sandbox provider completes payments on request (demos and tests); the Stripe
provider creates Checkout Sessions and verifies `Stripe-Signature` (`t=<unix>,v1=<hex HMAC-SHA256 of
"t.body">`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
import msgspec

from services.billing.config import BillingSettings

MICROS_PER_CENT = 10_000


class BadSignature(Exception):
    """The webhook is not provably from the provider (or is too old): nothing is credited."""


@dataclass(frozen=True)
class Checkout:
    provider_ref: str
    url: str


@dataclass(frozen=True)
class PaymentNotice:
    """A verified statement from the provider that a payment succeeded (or, `paid=False`, will never)."""

    payment_id: str
    provider_ref: str
    amount_micros: int
    paid: bool = True


class PaymentProvider(Protocol):
    name: str

    async def create_checkout(self, payment_id: str, amount_micros: int, description: str) -> Checkout: ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> PaymentNotice | None:
        """Verify and decode; None for events that are not a completed payment. Raises BadSignature."""
        ...


class SandboxProvider:
    """No money moves: the checkout URL is billing's own sandbox page, whose POST completes the payment."""

    name = "sandbox"

    def __init__(self, public_base: str) -> None:
        self.public_base = public_base.rstrip("/")

    async def create_checkout(self, payment_id: str, amount_micros: int, description: str) -> Checkout:
        return Checkout(provider_ref=f"sbx_{payment_id}",
                        url=f"{self.public_base}/v1/billing/sandbox/payments/{payment_id}/pay")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> PaymentNotice | None:
        raise BadSignature("the sandbox provider has no webhook")


class _StripeSession(msgspec.Struct):
    id: str
    url: str = ""


class _StripeObject(msgspec.Struct):
    id: str
    client_reference_id: str | None = None
    amount_total: int | None = None
    currency: str = ""
    payment_status: str = ""


class _StripeData(msgspec.Struct):
    object: _StripeObject


class _StripeEvent(msgspec.Struct):
    id: str
    type: str
    data: _StripeData


def stripe_signature(secret: str, payload: bytes, timestamp: int) -> str:
    """The `Stripe-Signature` header value Stripe would send for `payload` (also used by tests and tools)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_stripe_signature(secret: str, payload: bytes, header: str, tolerance_s: int,
                            now: float | None = None) -> None:
    if not secret:
        raise BadSignature("no webhook secret configured")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, _, v = item.strip().partition("=")
        parts.setdefault(k, []).append(v)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise BadSignature("no timestamp in Stripe-Signature") from None
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, sig) for sig in parts.get("v1", [])):
        raise BadSignature("signature does not match")
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise BadSignature("timestamp outside the tolerance")


class StripeProvider:
    name = "stripe"

    def __init__(self, settings: BillingSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.http = http or httpx.AsyncClient(timeout=10)

    async def create_checkout(self, payment_id: str, amount_micros: int, description: str) -> Checkout:
        s = self.settings
        resp = await self.http.post(
            f"{s.stripe_api_base.rstrip('/')}/v1/checkout/sessions",
            headers={"Authorization": f"Bearer {s.stripe_secret_key}", "Idempotency-Key": payment_id},
            data={
                "mode": "payment",
                "success_url": s.stripe_success_url,
                "cancel_url": s.stripe_cancel_url,
                "client_reference_id": payment_id,
                "metadata[payment_id]": payment_id,
                "line_items[0][quantity]": "1",
                "line_items[0][price_data][currency]": "usd",
                "line_items[0][price_data][unit_amount]": str(amount_micros // MICROS_PER_CENT),
                "line_items[0][price_data][product_data][name]": description,
            },
        )
        resp.raise_for_status()
        session = msgspec.json.decode(resp.content, type=_StripeSession)
        return Checkout(provider_ref=session.id, url=session.url)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> PaymentNotice | None:
        verify_stripe_signature(self.settings.stripe_webhook_secret, body,
                                headers.get("stripe-signature", ""), self.settings.webhook_tolerance_s)
        try:
            event = msgspec.json.decode(body, type=_StripeEvent)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        obj = event.data.object
        if event.type == "checkout.session.expired" and obj.client_reference_id:
            return PaymentNotice(payment_id=obj.client_reference_id, provider_ref=obj.id, amount_micros=0,
                                 paid=False)
        if (event.type not in ("checkout.session.completed", "checkout.session.async_payment_succeeded")
                or obj.payment_status != "paid" or not obj.client_reference_id or obj.amount_total is None
                or obj.currency.lower() != "usd"):
            return None
        return PaymentNotice(payment_id=obj.client_reference_id, provider_ref=obj.id,
                             amount_micros=obj.amount_total * MICROS_PER_CENT)


def provider_for(settings: BillingSettings, public_base: str,
                 http: httpx.AsyncClient | None = None) -> PaymentProvider:
    if settings.payment_provider == "stripe":
        return StripeProvider(settings, http)
    return SandboxProvider(public_base)
