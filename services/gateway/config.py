"""Settings of the gateway service (environment: FAREGATE_GATEWAY_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("GATEWAY")
class GatewaySettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8100
