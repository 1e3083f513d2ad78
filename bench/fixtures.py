"""The fixed upstream answers and the client's request bodies, identical for every target.

The upstream answers what OpenAI's API would for `gpt-4o-mini-2024-07-18`: a valid chat completion with usage,
and a stream of exactly 20 `data:` chunks (a role chunk, 17 content chunks, a finish chunk and the usage chunk
that `stream_options.include_usage` asks for) closed by `data: [DONE]`."""

from __future__ import annotations

import json

UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
STREAM_CHUNKS = 20
PROMPT_TOKENS = 14
COMPLETION_TOKENS = 17
_WORDS = ("Faregate", " relays", " every", " token", " it", " is", " given", ",", " and", " it", " adds",
          " as", " little", " as", " it", " can", ".")
_CREATED = 1_763_942_400


def completion_json() -> bytes:
    body = {
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion",
        "created": _CREATED,
        "model": UPSTREAM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "".join(_WORDS), "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def stream_events() -> list[bytes]:
    """The 20 SSE events plus the closing `[DONE]`, each ending in a blank line."""

    def chunk(delta: dict[str, object], finish: str | None, usage: dict[str, int] | None = None,
              choices: bool = True) -> bytes:
        body: dict[str, object] = {
            "id": "chatcmpl-bench0000000000000000000002",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": UPSTREAM_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            if choices else [],
        }
        if usage is not None:
            body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""}, None)]
    out += [chunk({"content": word}, None) for word in _WORDS]
    out.append(chunk({}, "stop"))
    out.append(chunk({}, None, {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}, choices=False))
    assert len(out) == STREAM_CHUNKS
    out.append(b"data: [DONE]\n\n")
    return out


def stream_body() -> bytes:
    return b"".join(stream_events())


def request_body(model: str, *, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something short about relays."}],
        "max_tokens": 64,
    }
    if stream:
        # As the OpenAI SDKs' users do for cost tracking: every relay then forwards all 20 upstream chunks.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()
