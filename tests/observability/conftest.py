"""The gateway's fixtures (mock upstream process, catalog and keys in Redis, the app in the test's loop),
reused so a request can be followed from the gateway to the usage consumer."""

from tests.gateway.conftest import gateway, gateway_settings, mock_upstream, world  # noqa: F401
