"""Settings of the billing service (environment: FAREGATE_BILLING_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("BILLING")
class BillingSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8102
