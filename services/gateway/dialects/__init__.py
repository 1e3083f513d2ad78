"""Dialect translators: pure functions between each client/upstream wire format and the gateway's internal
form, OpenAI Chat Completions JSON as plain dicts. No I/O here; the gateway wires them to HTTP.

- `openai`: the passthrough helpers (rewrite `model`, ask for usage in streams, read usage) and OpenAI
  errors.
- `anthropic`, `gemini`: requests, responses, stream converters and errors, both directions.
- `responses`: the OpenAI Responses API as a client dialect.
- `errors`: what a translator raises when a request cannot be expressed or is malformed.
"""
