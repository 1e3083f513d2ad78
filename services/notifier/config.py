"""Settings of the notifier service (environment: FAREGATE_NOTIFIER_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("NOTIFIER")
class NotifierSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8104
