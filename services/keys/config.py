"""Settings of the keys service (environment: FAREGATE_KEYS_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("KEYS")
class KeysSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8101
