"""An admin's "test this channel": one minimal chat request (max_tokens 1) through the normal attempt code,
with nothing recorded: no usage event, no reservation, no breaker update. A test is the admin's question,
not traffic, so it must not move the channel in or out of rotation."""

from __future__ import annotations

import time
import uuid
from typing import Any

from services.gateway import attempts
from services.gateway.catalog_view import ChannelView
from services.gateway.context import Gateway
from services.gateway.relay import Call
from shared.catalog import Model
from shared.events import ModelPrice


class UnknownChannel(Exception):
    pass


def _model_for(gw: Gateway, channel: ChannelView) -> Model | None:
    names = channel.channel.models
    if not names:
        return None
    model = gw.catalog.models.get(names[0])
    # A channel may list a model the catalog no longer has; the upstream call needs only its name.
    return model or Model(name=names[0], provider=channel.channel.provider, price=ModelPrice(input=0, output=0))


async def run_channel_test(gw: Gateway, channel_id: str) -> dict[str, Any]:
    """{ok, status, latency_ms, error}; raises UnknownChannel for an id the catalog does not hold."""
    channel = gw.catalog.channels.get(channel_id)
    if channel is None:
        raise UnknownChannel(channel_id)
    call = Call(request_id=f"chtest-{uuid.uuid4().hex}", dialect="openai", endpoint="channel_test", client_ip="")
    started = time.perf_counter()
    opened = None
    try:
        model = _model_for(gw, channel)
        if model is None:
            return {"ok": False, "status": 0, "latency_ms": 0, "error": "channel_serves_no_model"}
        body = {"model": model.name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        plan = attempts.Plan("openai", body, body, "/chat/completions", stream=False)
        opened = await attempts._attempt(gw, call, model, channel, plan)
    except attempts.AttemptFailed as failure:
        status = int(failure.reason.removeprefix("upstream_")) if failure.reason[9:].isdigit() else 0
        return {
            "ok": False,
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000),
            "error": failure.reason,
        }
    finally:
        if opened is not None:
            await attempts.close_response(opened.resp)
    return {"ok": True, "status": 200, "latency_ms": round((time.perf_counter() - started) * 1000), "error": ""}
