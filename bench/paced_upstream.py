"""An upstream that sends the fixed 20-chunk stream with a pause between chunks, to see whether a proxy holds
any chunk back: through a relay that forwards each chunk as it arrives, the client sees the same spacing.

    python -m bench.paced_upstream PORT INTERVAL_MS

HTTP/1.1 with keep-alive and chunked transfer encoding, one HTTP chunk per SSE event; it ignores the request's
content (every POST gets the stream). Small on purpose: the bench measures relays, not this."""

from __future__ import annotations

import asyncio
import sys

from bench import fixtures

_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
         b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")


async def _read_request(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return True


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interval: float) -> None:
    events = fixtures.stream_events()
    try:
        while True:
            try:
                await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(_HEAD)
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(interval)
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        return
    finally:
        writer.close()


async def main(port: int, interval_ms: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, interval_ms / 1000), "127.0.0.1", port,
                                        backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
