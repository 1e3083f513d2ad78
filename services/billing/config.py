"""Settings of the billing service (environment: FAREGATE_BILLING_*)."""

from __future__ import annotations

from decimal import InvalidOperation

from shared.config import ServerSettings, register
from shared.money import parse_usd


@register("BILLING")
class BillingSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8102
    # Address users reach billing at (the sandbox checkout page is served from here).
    public_url: str = "http://127.0.0.1:8102"
    # Name of the console's session cookie (set by the keys service); its value is checked with keys' whoami.
    session_cookie: str = "fg_session"
    # Low-balance threshold for wallets that did not set their own (micro-USD; $1).
    low_balance_default_micros: int = 1_000_000
    # Top-up amounts offered as buttons (USD) and the range a custom amount must fall in (USD, inclusive).
    topup_presets_usd: tuple[str, ...] = ("5", "10", "20", "50", "100")
    topup_min_usd: str = "1"
    topup_max_usd: str = "10000"
    # Bonus tiers applied to a top-up, "<min USD>=<percent>": the highest tier not above the paid amount wins.
    # Admins may replace them at run time (stored in the database); these seed an empty table.
    bonus_tiers: tuple[str, ...] = ("20=10", "50=15", "100=20")
    # Payment provider for top-ups and plan purchases: "sandbox" (demos, tests) or "stripe".
    payment_provider: str = "sandbox"
    # Stripe: secret API key, webhook signing secret (whsec_...), API base, and where checkout sends the
    # user back.
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_success_url: str = "http://127.0.0.1:8101/wallet?paid=1"
    stripe_cancel_url: str = "http://127.0.0.1:8101/wallet?cancelled=1"
    # A webhook older than this (seconds, by its signed timestamp) is refused as a possible replay.
    webhook_tolerance_s: int = 300
    # Usage events applied per database transaction (the consumer's fetch size).
    usage_batch: int = 500
    # Concurrent fetch-apply-ack loops on the one durable consumer: while one waits on Postgres, another waits
    # on
    # NATS or Redis. Wallet rows are locked in account order, so they never deadlock.
    usage_consumers: int = 2
    # Seconds JetStream waits for an ack before redelivering (after a crash, how long a fetched batch waits).
    # A batch commits in well under a second; a redelivery of one still in progress is a harmless duplicate.
    usage_ack_wait_s: float = 15.0
    # How often (seconds) expired plans are taken out of the spendable balance published to Redis.
    plan_expiry_scan_s: float = 30.0

    def __post_init__(self) -> None:
        if self.payment_provider not in ("sandbox", "stripe"):
            raise ValueError("FAREGATE_BILLING_PAYMENT_PROVIDER must be sandbox or stripe")
        if self.usage_batch < 1:
            raise ValueError("FAREGATE_BILLING_USAGE_BATCH must be at least 1")
        if self.usage_consumers < 1:
            raise ValueError("FAREGATE_BILLING_USAGE_CONSUMERS must be at least 1")
        if self.payment_provider == "stripe" and not (self.stripe_secret_key and self.stripe_webhook_secret):
            raise ValueError("the stripe provider needs FAREGATE_BILLING_STRIPE_SECRET_KEY and "
                             "FAREGATE_BILLING_STRIPE_WEBHOOK_SECRET")
        for name in ("topup_min_usd", "topup_max_usd"):
            try:
                parse_usd(getattr(self, name))
            except (ValueError, InvalidOperation):
                raise ValueError(f"FAREGATE_BILLING_{name.upper()} must be an amount in USD") from None
        try:
            [parse_usd(p) for p in self.topup_presets_usd]
        except (ValueError, InvalidOperation):
            raise ValueError("FAREGATE_BILLING_TOPUP_PRESETS_USD must be USD amounts") from None
        for tier in self.bonus_tiers:
            usd, _, pct = tier.partition("=")
            try:
                parse_usd(usd)
                int(pct)
            except (ValueError, InvalidOperation):
                raise ValueError(f"FAREGATE_BILLING_BONUS_TIERS: {tier!r} is not <USD>=<percent>") from None
