"""The head of an upstream stream: what each provider's `stream_head(head)` answers about the bytes that came
before anything was sent to the client, and the first whole SSE event of those bytes.

Some upstreams answer 200 and put an error in the very first event. Caught here, the gateway can still try
another channel; caught later, the client would get a mid-stream error for an answer that never started."""

from __future__ import annotations

from typing import Literal

# answer: forward it. incomplete: the first event is not whole yet; read on. error: the upstream failed, another
# channel may serve. invalid_request: the upstream says the request itself is wrong; no channel will take it.
Head = Literal["answer", "incomplete", "error", "invalid_request"]


def first_event(head: bytes) -> tuple[str, bytes] | None:
    """The first whole SSE event of `head` as (event name, data), or None while its blank line has not come.

    A block with no data line (a comment such as `: keep-alive`) comes back with empty data: the upstream is
    alive and said no error, and waiting past it for a data event would hold back a slow but healthy answer."""
    if b"\r" in head:
        head = head.replace(b"\r\n", b"\n")
    end = head.find(b"\n\n")
    if end < 0:
        return None
    name = ""
    data: list[bytes] = []
    for line in head[:end].split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    return name, b"\n".join(data)
