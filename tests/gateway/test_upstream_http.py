"""The gateway's own upstream HTTP/1.1 client against a raw socket server that answers exactly as scripted:
body framings, keep-alive reuse, a stale idle connection, an abandoned body, malformed answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from services.gateway.upstream_http import Client, UpstreamConnectError, UpstreamProtocolError
from tests import procs


@dataclass
class Script:
    """Each accepted connection answers requests with `answers` (one per request, in order), then, if
    `close_after` is set, closes after that many answers."""

    answers: list[bytes]
    close_after: int | None = None
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def serve(script: Script) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                script.requests.append(head + await reader.readexactly(length))
                writer.write(script.answers[min(len(script.requests) - 1, len(script.answers) - 1)])
                await writer.drain()
                served += 1
                if script.close_after is not None and served >= script.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client(connect_timeout_s=2)
    yield c
    await c.aclose()


LENGTH = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{"ok": true}'
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n7\r\ndata: 2\r\n0\r\n\r\n"


async def test_content_length_body_and_the_connection_is_reused(client: Client) -> None:
    script = Script([LENGTH])
    server, url = await serve(script)
    async with server:
        for _ in range(3):
            r = await client.post(url, {"authorization": "Bearer k"}, b'{"a": 1}')
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            assert await r.aread() == b'{"ok": true}'
    assert script.connections == 1
    assert script.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"authorization: Bearer k" in script.requests[0] and script.requests[0].endswith(b'{"a": 1}')


async def test_chunked_body_arrives_chunk_by_chunk(client: Client) -> None:
    server, url = await serve(Script([CHUNKED]))
    async with server:
        r = await client.post(url, {}, b"{}")
        pieces = [p async for p in r.aiter_raw()]
    assert b"".join(pieces) == b"data: 1data: 2"


async def test_body_to_the_end_of_the_connection(client: Client) -> None:
    server, url = await serve(Script([b"HTTP/1.1 200 OK\r\n\r\nall of it"], close_after=1))
    async with server:
        r = await client.post(url, {}, b"{}")
        assert await r.aread() == b"all of it"


async def test_a_stale_idle_connection_is_replaced_transparently(client: Client) -> None:
    script = Script([LENGTH], close_after=1)  # the server closes every connection after one answer
    server, url = await serve(script)
    async with server:
        for _ in range(3):
            r = await client.post(url, {}, b"{}")
            assert await r.aread() == b'{"ok": true}'
            await asyncio.sleep(0.05)  # let the server's close land before the next request
    assert script.connections == 3


async def test_an_abandoned_body_closes_the_connection(client: Client) -> None:
    script = Script([CHUNKED])
    server, url = await serve(script)
    async with server:
        r = await client.post(url, {}, b"{}")
        first = await anext(r.aiter_raw())
        assert first == b"data: 1"
        await r.aclose()  # the client went away mid-stream: this connection must not be reused
        r = await client.post(url, {}, b"{}")
        assert await r.aread() == b"data: 1data: 2"
    assert script.connections == 2


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"],
)
async def test_malformed_answers_are_protocol_errors(client: Client, answer: bytes) -> None:
    server, url = await serve(Script([answer]))
    async with server:
        with pytest.raises(UpstreamProtocolError):
            await client.post(url, {}, b"{}")


async def test_a_body_cut_short_is_a_protocol_error(client: Client) -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
    server, url = await serve(Script([cut], close_after=1))
    async with server:
        r = await client.post(url, {}, b"{}")
        with pytest.raises(UpstreamProtocolError):
            await r.aread()


async def test_nothing_listening_is_a_connect_error(client: Client) -> None:
    with pytest.raises(UpstreamConnectError):
        await client.post(f"http://127.0.0.1:{procs.free_port()}/v1/x", {}, b"{}")
