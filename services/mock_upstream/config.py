"""Settings of the mock_upstream service (environment: FAREGATE_MOCK_UPSTREAM_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("MOCK_UPSTREAM")
class MockUpstreamSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8109
    # The key callers must present (Bearer, x-api-key or x-goog-api-key); empty accepts any non-empty key.
    api_key: str = ""
