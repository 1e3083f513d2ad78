"""`faregate mock-upstream`: a fake LLM provider speaking the OpenAI, Anthropic and Gemini wire formats, with
deterministic replies, realistic usage and faults chosen per request (see faults.py). Test equipment only."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, get, post
from litestar.datastructures import State

from services.mock_upstream import anthropic_api, gemini_api, openai_api
from services.mock_upstream.config import MockUpstreamSettings
from services.mock_upstream.exchange import stats_of
from shared import config, logs, telemetry, web
from shared.config import CommonSettings
from shared.web import ops_handlers, request_id_middleware


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    # One path, three providers: Anthropic's SDK always sends `anthropic-version`, Google's sends its key in
    # `x-goog-api-key` (or `?key=`), OpenAI's does neither.
    if "anthropic-version" in request.headers:
        return anthropic_api.anthropic_models()
    if gemini_api.api_key(request):
        return gemini_api.gemini_models()
    return openai_api.openai_models()


@get("/_mock/stats", include_in_schema=False)
async def mock_stats(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return stats_of(request).snapshot()


@post("/_mock/reset", include_in_schema=False, status_code=200)
async def mock_reset(request: Request[Any, Any, Any]) -> dict[str, str]:
    stats_of(request).reset()
    return {"status": "reset"}


def create_app(settings: MockUpstreamSettings, common: CommonSettings) -> Litestar:
    from services.mock_upstream.stats import Stats

    return Litestar(
        logging_config=web.logging_config(),
        route_handlers=[
            *ops_handlers({}),
            list_models,
            mock_stats,
            mock_reset,
            *openai_api.HANDLERS,
            *anthropic_api.HANDLERS,
            *gemini_api.HANDLERS,
        ],
        middleware=[request_id_middleware],
        state=State({"stats": Stats(), "api_key": settings.api_key}),
        # Bodies up to 32 MiB: tests send long prompts and images.
        request_max_body_size=32 * 1024 * 1024,
        debug=False,
    )


def from_env() -> Litestar:
    settings = config.load(MockUpstreamSettings)
    common = config.load(CommonSettings)
    logs.setup("mock-upstream", common.log_level, common.log_format)
    telemetry.setup("mock-upstream", common.otel_exporter, common.otel_endpoint)
    return create_app(settings, common)
