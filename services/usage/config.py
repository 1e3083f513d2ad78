"""Settings of the usage service (environment: FAREGATE_USAGE_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("USAGE")
class UsageSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8103
