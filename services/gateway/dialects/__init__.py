"""Dialect translators: pure functions between each client/upstream wire format and the gateway's internal
form, OpenAI Chat Completions JSON as plain dicts. No I/O here; the gateway wires them to HTTP.

- `openai`: the passthrough helpers (rewrite `model`, ask for usage in streams, read usage, spot an error
  event in a stream), OpenAI errors, and the lenient readers every converter uses on chunks and answers.
- `anthropic`, `gemini`: requests, responses, stream converters, count_tokens bodies and errors, both ways.
- `responses`: the OpenAI Responses API as a client dialect.
- `errors`: what a translator raises; `shape` and `media`: typed access to untrusted JSON, images/files.

How the gateway chains them for a client in dialect C and an upstream in dialect U (C != U):

    internal = C.request_to_openai(body)  # or responses.request_to_chat(body), gemini's (body, model, stream)
    upstream = U.request_from_openai(internal, model)  # openai: to_upstream(internal, model, translated=True)
    whole:   C.response_from_openai(U.response_to_openai(answer), model)
    stream:  up = U.StreamToOpenAI(...); down = C.StreamFromOpenAI(model)
             for each upstream event: for chunk in up.feed(...): send(down.feed(chunk))
             then up.finish() (Gemini) / the chunk after message_stop (Anthropic) carries usage;
             send(down.finish(usage)); on UpstreamStreamError: send(down.error(message))

A request that cannot be expressed raises `errors.UnsupportedField` (or `InvalidField` when malformed): a 400
naming `exc.field`. Upstream answers and stream events are read leniently and never raise, except
`UpstreamStreamError` for an error the upstream itself reported mid-stream.
"""
