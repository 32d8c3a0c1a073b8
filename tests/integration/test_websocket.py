"""
Integration tests of WebSockets and streams behind the login: the real
C{twistd oidcproxy} process between a real WebSocket client and server (the
C{websockets} library: L{tests.integration.ws_server} as its own process, its
client in a thread), with sessions from a real login at the test OpenID
Provider (C{oidc-provider}, see L{tests.integration.stack}).

Where Node.js, the OP's node_modules or the websockets library are missing
they fail, saying what to install (see L{tests.helpers}); C{tests/run.sh}
installs them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.helpers import require_module
from tests.integration import procs
from tests.integration.stack import (
    OpenIDProvider,
    WebClient,
    browse,
    fill_login,
    require_op,
    reserve_port,
    session_secrets,
    start_op,
    start_proxy,
)

try:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect
except ImportError:  # pragma: no cover - requirements-dev.txt installs it; start_stack says so
    pass

WS_SERVER = os.path.join(procs.HERE, "ws_server.py")
MB = 1024 * 1024
TRANSFER = 50 * MB
RSS_GROWTH_LIMIT = 30 * 1000 * 1000
CONCURRENT = 200
SSE_TIMEOUT = 1.0
OTHER_ORIGIN = "http://other.test:8080"
"""The one origin besides public_url's allowed to open session-authenticated sockets."""


class WSServer:
    """The WebSocket (and SSE) upstream process."""

    def __init__(self, child: procs.Child, port: int, sse_port: int) -> None:
        self.child = child
        self.port = port
        self.sse_port = sse_port

    def handshakes(self, path: str) -> List[List[List[str]]]:
        """The request headers of every handshake on C{path} so far."""
        return [json.loads(line.split(" ", 2)[2]) for line in self.child.stdout().splitlines()
                if line.startswith(f"HANDSHAKE {path} ")]

    def closes(self, path: str) -> List[str]:
        return [line.split()[2] for line in self.child.stdout().splitlines()
                if line.startswith(f"CLOSED {path} ")]


async def start_ws_server(testcase: TestCase) -> WSServer:
    child = procs.Child("ws_server", [sys.executable, WS_SERVER],
                        os.path.abspath(testcase.mktemp()))
    testcase.addCleanup(child.stop)

    def ports() -> Optional[Tuple[int, int]]:
        found: Dict[str, int] = {}
        for line in child.stdout().splitlines():
            words = line.split()
            if len(words) == 2 and words[0] in ("PORT", "SSE_PORT"):
                found[words[0]] = int(words[1])
        if len(found) == 2:
            return found["PORT"], found["SSE_PORT"]
        if child.process.poll() is not None:
            raise AssertionError("the WebSocket server died at start")
        return None

    try:
        port, sse_port = await procs.poll(ports, procs.START_DEADLINE,
                                          what="the WebSocket server's ports")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{child.describe()}") from None
    return WSServer(child, port, sse_port)


def proxy_config(port: int, op: OpenIDProvider, ws: WSServer) -> str:
    """Sessions from the OP; /ws/* to the WebSocket server, /sse to its SSE port."""
    return f"""\
public_url = "http://127.0.0.1:{port}"
listen = ["tcp:{port}:interface=127.0.0.1"]
websocket_origins = ["{OTHER_ORIGIN}"]

[oidc]
issuer = "{op.issuer}"
client_id = "{op.client_id}"
client_secret = "{op.client_secret}"
scopes = ["openid", "email", "profile", "groups"]

[session]
secrets = {json.dumps(session_secrets())}
lifetime = "1h"

[headers]
X-Forwarded-User = ["preferred_username", "sub"]
X-Forwarded-Email = "email"

[[routes]]
path = "/ws"
upstream = "http://127.0.0.1:{ws.port}"
strip_prefix = true

[[routes]]
path = "/sse"
upstream = "http://127.0.0.1:{ws.sse_port}"
strip_prefix = true
timeout = "{SSE_TIMEOUT}s"
stream_idle_timeout = "5s"

[[routes]]
path = "/"
upstream = "http://127.0.0.1:{ws.port}"
"""


class Stack:
    def __init__(self, op: OpenIDProvider, ws: WSServer, proxy: procs.Proxy, cookie: str,
                 web: WebClient) -> None:
        self.op = op
        self.ws = ws
        self.proxy = proxy
        self.cookie = cookie
        self.web = web

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}{path}"

    def connect(self, path: str, cookie: bool = True, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("additional_headers", {}))
        if cookie:
            headers["Cookie"] = self.cookie
        return connect(self.url(path), additional_headers=headers, max_size=2 * MB,
                       compression=None, open_timeout=10, close_timeout=10, **kwargs)

    def describe(self) -> str:
        return "\n".join(c.describe() for c in (self.op.child, self.ws.child, self.proxy.child))


async def start_stack(testcase: TestCase) -> Stack:
    """OP, WebSocket server and proxy, and the session cookie of a real login as alice."""
    require_module("websockets", "pip install -r requirements-dev.txt (tests/run.sh does)")
    require_op()
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        op = await start_op(testcase, [f"http://127.0.0.1:{port}/oidc/callback"],
                            [f"http://127.0.0.1:{port}/"])
        ws = await start_ws_server(testcase)
        proxy = await start_proxy(testcase, reserved, proxy_config(port, op, ws))
    finally:
        reserved.close()
    web = WebClient(testcase)
    await browse(web, proxy.url + "/ws/echo", fill_login("alice"))
    cookie = web.jar.header(proxy.url + "/ws/echo")
    assert cookie is not None and b"oidcproxy=" in cookie, web.history
    return Stack(op, ws, proxy, cookie.decode("ascii"), web)


def in_thread(function: Any, *args: Any) -> Any:
    """Run a blocking client in a thread (the reactor keeps serving the test)."""
    return deferToThread(function, *args)


class WebSocketTests(TestCase):
    timeout = 60

    async def test_echo_identity_close_codes_and_401(self) -> None:
        """
        Through the proxy: text and binary messages echo back; the upstream's
        handshake carries the identity headers and not the client's spoofed
        one; close codes pass both ways; an upgrade without a session gets
        401 (not a login redirect).
        """
        stack = await start_stack(self)

        def exchange() -> Dict[str, Any]:
            out: Dict[str, Any] = {}
            with stack.connect("/ws/headers",
                               additional_headers={"X-Forwarded-User": "mallory"}) as ws:
                out["headers"] = json.loads(ws.recv(timeout=10))
                ws.send("hello")
                out["text"] = ws.recv(timeout=10)
                ws.send(b"\x00\x01\xfe\xff")
                out["binary"] = ws.recv(timeout=10)
                ws.send("close 4001")
                try:
                    ws.recv(timeout=10)
                except ConnectionClosed:
                    pass
                out["server_close"] = (ws.close_code, ws.close_reason)
            with stack.connect("/ws/echo") as ws:
                ws.send("x")
                ws.recv(timeout=10)
                ws.close(4002, "client says bye")
            try:
                with stack.connect("/ws/echo", cookie=False,
                                   additional_headers={"Accept": "text/html",
                                                       "Sec-Fetch-Mode": "navigate"}):
                    pass
            except InvalidStatus as e:
                out["unauthenticated"] = e.response.status_code
            return out

        try:
            out = await in_thread(exchange)
        except (ConnectionClosed, InvalidStatus, OSError, TimeoutError) as e:
            raise AssertionError(f"{e!r}\n{stack.describe()}") from None
        self.assertEqual(out["text"], "hello")
        self.assertEqual(out["binary"], b"\x00\x01\xfe\xff")
        self.assertEqual(out["server_close"], (4001, "bye"))
        self.assertEqual(out["unauthenticated"], 401)
        users = [v for n, v in out["headers"] if n.lower() == "x-forwarded-user"]
        self.assertEqual(users, ["alice"])
        self.assertEqual([v for n, v in out["headers"] if n.lower() == "upgrade"], ["websocket"])
        self.assertFalse(any("oidcproxy=" in v for n, v in out["headers"] if n.lower() == "cookie"))
        await procs.poll(lambda: "4002" in stack.ws.closes("/echo"), 10,
                         what="the server to see the client's close code")
        # The unauthenticated upgrade never reached the upstream.
        self.assertEqual(len(stack.ws.handshakes("/echo")), 1)
        log = stack.proxy.log()
        self.assertRegex(log, r'"GET /ws/headers" 101 \d+ ')

    async def test_origin_checked_for_session_sockets(self) -> None:
        """
        Cross-site WebSocket hijacking: with the session cookie, a handshake
        whose Origin is another site's gets 403 and never reaches the
        upstream; the proxy's own origin, one in websocket_origins, and none
        at all (not a browser) open the socket.
        """
        stack = await start_stack(self)

        def attempts() -> Dict[str, Any]:
            out: Dict[str, Any] = {}
            for label, origin in (("own", stack.proxy.url), ("listed", OTHER_ORIGIN),
                                  ("none", None), ("foreign", "http://evil.test"),
                                  ("null", "null")):
                try:
                    with stack.connect("/ws/echo", origin=origin) as ws:
                        ws.send(label)
                        out[label] = ws.recv(timeout=10)
                except InvalidStatus as e:
                    out[label] = e.response.status_code
            return out

        try:
            out = await in_thread(attempts)
        except (ConnectionClosed, OSError, TimeoutError) as e:
            raise AssertionError(f"{e!r}\n{stack.describe()}") from None
        self.assertEqual(out, {"own": "own", "listed": "listed", "none": "none",
                               "foreign": 403, "null": 403})
        self.assertEqual(len(stack.ws.handshakes("/echo")), 3)
        log = stack.proxy.log()
        self.assertIn("Origin http://evil.test is neither", log)
        self.assertNotIn("Traceback", log)

    async def test_large_transfer_bounded_memory(self) -> None:
        """50 MB each way through one socket; the proxy's RSS grows by less than 30 MB."""
        stack = await start_stack(self)
        pid = stack.proxy.pid
        before = procs.read_rss(pid)
        peak = [before]

        def sample() -> None:
            peak[0] = max(peak[0], procs.read_rss(pid))

        def transfer() -> Tuple[str, int]:
            block = os.urandom(MB)
            with stack.connect("/ws/sink") as ws:
                for i in range(TRANSFER // MB):
                    ws.send(block)
                    if i % 5 == 0:
                        sample()
                ws.send("done")
                uploaded = ws.recv(timeout=30)
            received = 0
            with stack.connect(f"/ws/source?n={TRANSFER}") as ws:
                while True:
                    message = ws.recv(timeout=30)
                    if message == "done":
                        break
                    received += len(message)
                    if received % (5 * MB) == 0:
                        sample()
            return uploaded, received

        uploaded, received = await in_thread(transfer)
        sample()
        self.assertEqual((int(uploaded), received), (TRANSFER, TRANSFER))
        self.assertLess(peak[0] - before, RSS_GROWTH_LIMIT,
                        f"RSS grew from {before} to {peak[0]}")
        print(f"WEBSOCKET_RSS_GROWTH_BYTES={peak[0] - before}", file=sys.stderr)
        self.assertNotIn("Traceback", stack.proxy.log())

    async def test_concurrent_sockets(self) -> None:
        """200 sockets open at once, each echoing its own messages."""
        stack = await start_stack(self)

        def many() -> List[str]:
            from websockets.asyncio.client import connect as aconnect

            async def one(i: int, ready: asyncio.Event, opened: List[int]) -> str:
                async with aconnect(stack.url("/ws/echo"), open_timeout=20,
                                    additional_headers={"Cookie": stack.cookie}) as ws:
                    opened.append(i)
                    if len(opened) == CONCURRENT:
                        ready.set()
                    await asyncio.wait_for(ready.wait(), 30)
                    await ws.send(f"socket {i}")
                    return str(await asyncio.wait_for(ws.recv(), 30))

            async def run() -> List[str]:
                ready = asyncio.Event()
                opened: List[int] = []
                return list(await asyncio.gather(*(one(i, ready, opened)
                                                   for i in range(CONCURRENT))))

            return asyncio.run(run())

        answers = await in_thread(many)
        self.assertEqual(answers, [f"socket {i}" for i in range(CONCURRENT)])

    async def test_logout_closes_socket(self) -> None:
        """Logging out closes the session's open socket."""
        stack = await start_stack(self)
        opened = threading.Event()
        result: Dict[str, Any] = {}

        def hold() -> None:
            with stack.connect("/ws/echo") as ws:
                ws.send("ping")
                ws.recv(timeout=10)
                opened.set()
                try:
                    ws.recv(timeout=20)
                    result["closed"] = False
                except ConnectionClosed:
                    result["closed"] = True
                except TimeoutError:
                    result["closed"] = False

        held = in_thread(hold)
        await procs.poll(opened.is_set, 10, what="the socket to open")
        response, _ = await stack.web.request(
            "POST", stack.proxy.url + "/oidc/logout", headers={"Origin": stack.proxy.url})
        self.assertEqual(response.code, 303)
        await held
        self.assertTrue(result["closed"])

    async def test_sse_outlives_timeout(self) -> None:
        """A server-sent-event stream runs past the route's 1 s timeout, every event arriving."""
        stack = await start_stack(self)
        started = time.monotonic()
        response, body = await stack.web.request(
            "GET", stack.proxy.url + "/sse/events?n=4&every=0.6",
            headers={"Accept": "text/event-stream"})
        self.assertGreater(time.monotonic() - started, 2 * SSE_TIMEOUT)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"".join(b"data: event %d\n\n" % i for i in range(4)))
