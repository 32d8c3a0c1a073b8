"""
A real WebSocket upstream for the integration tests, run as its own process:
C{python tests/integration/ws_server.py}. Built on the C{websockets} library
(asyncio); it imports nothing from the project.

It listens on two free loopback ports and prints C{PORT <n>} (WebSockets)
and C{SSE_PORT <n>} (a plain HTTP server-sent-events endpoint) once both
listen. It prints C{HANDSHAKE <path> <json headers>} for every WebSocket
handshake and C{CLOSED <path> <code>} when a client's close frame arrives.

WebSocket paths:
  - C{/echo}: every message back as it came (text as text, binary as binary);
    the text C{close <code>} closes with that code and reason C{bye}.
  - C{/headers}: first a JSON message of the handshake's request headers
    (a list of [name, value]), then as C{/echo}.
  - C{/sink}: counts the bytes of the binary messages; the text C{done}
    gets the count back as text.
  - C{/source?n=<bytes>}: sends that many bytes in 1 MiB binary messages,
    then the text C{done}.

SSE: C{GET /events?n=<count>&every=<seconds>} answers 200
C{text/event-stream} and sends C{count} events, one every C{every} seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

CHUNK = 1024 * 1024


async def handler(ws: ServerConnection) -> None:
    request = ws.request
    assert request is not None
    url = urlsplit(request.path)
    path = url.path
    headers = [[name, value] for name, value in request.headers.raw_items()]
    print("HANDSHAKE", path, json.dumps(headers), flush=True)
    try:
        if path == "/headers":
            await ws.send(json.dumps(headers))
        if path == "/source":
            n = int(parse_qs(url.query)["n"][0])
            block = bytes(range(256)) * (CHUNK // 256)
            while n > 0:
                await ws.send(block[:min(n, CHUNK)])
                n -= CHUNK
            await ws.send("done")
        count = 0
        async for message in ws:
            if path == "/sink":
                if isinstance(message, str) and message == "done":
                    await ws.send(str(count))
                else:
                    count += len(message)
                continue
            if isinstance(message, str) and message.startswith("close "):
                await ws.close(int(message.split()[1]), "bye")
                break
            await ws.send(message)
    finally:
        print("CLOSED", path, ws.close_code, flush=True)


async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    target = head.split(b" ", 2)[1].decode("ascii")
    query = parse_qs(urlsplit(target).query)
    count = int(query.get("n", ["3"])[0])
    every = float(query.get("every", ["1"])[0])
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    await writer.drain()
    for i in range(count):
        await asyncio.sleep(every)
        writer.write(b"data: event %d\n\n" % i)
        await writer.drain()
    writer.close()


async def main() -> None:
    async with serve(handler, "127.0.0.1", 0, max_size=2 * CHUNK, compression=None) as server:
        sse_server = await asyncio.start_server(sse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sse_port = sse_server.sockets[0].getsockname()[1]
        print("PORT", port, flush=True)
        print("SSE_PORT", sse_port, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
