"""
An upstream that answers every request after a fixed delay (the overload
scenario of the benchmark, C{bench/run --overload}).

    python bench/slow_upstream.py --delay 0.05 [--port 0]

It listens on 127.0.0.1 (port 0: any free port), prints C{PORT <n>} once it
listens, and answers every request, on keep-alive connections, with the
bench's 144-byte C{text/plain} body C{--delay} seconds after the request's
head arrived. It stops on SIGTERM or SIGINT.

A waiting request costs it one timer and no thread, so the time an answer
takes is the delay, whatever the number of requests waiting: the proxy in
front, not this server, decides how many are in flight. (Debian's nginx has
no C{echo_sleep}; this is plain asyncio, with no dependency.)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any, Optional

BODY = b"oidcproxy-bench upstream says hello\n" * 4
"""The same answer as the bench's nginx (bench/run.py's UPSTREAM_BODY)."""

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % len(BODY)) + BODY
MAX_HEAD = 64 * 1024


class SlowHTTP(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: every request answered C{delay} seconds after its head."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.body_left = 0
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[taken:]
                self.body_left -= taken
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD and self.transport is not None:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.body_left = int(value.strip() or b"0")
            asyncio.get_running_loop().call_later(self.delay, self.answer)

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.transport = None


async def serve(delay: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SlowHTTP(delay), "127.0.0.1", port, backlog=4096)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await stop
    server.close()


def main(argv: Any) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.delay, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
