"""Incremental Server-Sent Events parsing of an upstream's byte stream (for the dialects that need
translating;
an OpenAI-to-OpenAI stream is forwarded without it)."""

from __future__ import annotations


class SSEParser:
    """Feed bytes as they arrive; get back the complete events as (event name or "", data bytes)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        self._buf += chunk
        if b"\r" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        end = self._buf.rfind(b"\n\n")
        if end < 0:
            return []
        ready, self._buf = self._buf[:end], self._buf[end + 2 :]
        return [e for e in (_event(block) for block in ready.split(b"\n\n")) if e is not None]

    def close(self) -> list[tuple[str, bytes]]:
        """Whatever complete-looking event is left when the stream ends without a final blank line."""
        rest, self._buf = self._buf.strip(), b""
        event = _event(rest) if rest else None
        return [event] if event is not None else []


def _event(block: bytes) -> tuple[str, bytes] | None:
    name = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    if not data:
        return None
    return name, b"\n".join(data)
