# ruff: noqa: E501 -- recorded wire data stays exactly as sent, one event per line
"""Provider answers in the exact shape each API sends them (modelled on captured traffic and the providers'
documentation), used as inputs to the translators."""

from __future__ import annotations

import json
from typing import Any

# Anthropic: a streamed reply that says a few words, then calls a tool (from the Messages streaming docs).
ANTHROPIC_TOOL_STREAM = """\
event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-6","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2,"cache_creation_input_tokens":10,"cache_read_input_tokens":1024},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let me check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""

ANTHROPIC_RESPONSE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {
            "type": "thinking",
            "thinking": "The user wants weather.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
        },
        {"type": "text", "text": "I'll check."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "Paris", "unit": "c"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2048,
        "output_tokens": 60,
        "service_tier": "standard",
    },
}

# OpenAI: a streamed reply that calls a tool, with include_usage (captured from api.openai.com).
OPENAI_TOOL_STREAM = """\
data: {"id":"chatcmpl-AyPd1","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AyPd1","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\""}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AyPd1","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"location"}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AyPd1","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\":\\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AyPd1","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}

data: {"id":"chatcmpl-AyPd1","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_50cad350e4","choices":[],"usage":{"prompt_tokens":1300,"completion_tokens":17,"total_tokens":1317,"prompt_tokens_details":{"cached_tokens":1152,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}

data: [DONE]

"""

# OpenAI: a streamed text reply from a reasoning model (DeepSeek style reasoning_content), with include_usage.
OPENAI_TEXT_STREAM = """\
data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"reasoning_content":"Think "},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"reasoning_content":"first."},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"length"}]}

data: {"id":"chatcmpl-R1","object":"chat.completion.chunk","created":1738960001,"model":"deepseek-reasoner","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":4}}}

data: [DONE]

"""

OPENAI_TOOL_RESPONSE = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": "call_62136354",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

# Gemini: streamGenerateContent?alt=sse, text then a function call; usage on every chunk, final counts last.
GEMINI_STREAM = """\
data: {"candidates": [{"content": {"parts": [{"text": "Sure"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 1200,"totalTokenCount": 1200,"cachedContentTokenCount": 1024},"modelVersion": "gemini-2.5-flash","responseId": "mKdRaOWxBq2n1dkP"}\r
\r
data: {"candidates": [{"content": {"parts": [{"text": ", checking."}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 1200,"totalTokenCount": 1200,"cachedContentTokenCount": 1024},"modelVersion": "gemini-2.5-flash","responseId": "mKdRaOWxBq2n1dkP"}\r
\r
data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": {"location": "Paris"}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 1200,"candidatesTokenCount": 15,"totalTokenCount": 1245,"cachedContentTokenCount": 1024,"thoughtsTokenCount": 30},"modelVersion": "gemini-2.5-flash","responseId": "mKdRaOWxBq2n1dkP"}\r
\r
"""

GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {
                "parts": [{"text": "Weighing it up.", "thought": True}, {"text": "It is sunny."}],
                "role": "model",
            },
            "finishReason": "MAX_TOKENS",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 2000,
        "candidatesTokenCount": 5,
        "totalTokenCount": 2025,
        "cachedContentTokenCount": 1500,
        "thoughtsTokenCount": 20,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2000}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "Bq2n1dkPmKdRaOWx",
}


def sse_events(raw: str | bytes) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) for each SSE frame; `[DONE]` stays a string."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    out: list[tuple[str | None, Any]] = []
    for frame in text.replace("\r\n", "\n").split("\n\n"):
        name = None
        data = []
        for line in frame.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            joined = "\n".join(data)
            out.append((name, joined if joined == "[DONE]" else json.loads(joined)))
    return out


def openai_chunks(raw: str) -> list[dict[str, Any]]:
    return [d for _, d in sse_events(raw) if isinstance(d, dict)]
