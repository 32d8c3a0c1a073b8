"""
Integration tests for HTTP/2: the real proxy process on an C{ssl:} listener
(certificates from L{tests.pki}), and a client speaking HTTP/2 over a real
TLS socket with the C{h2} package's client side (in a thread: it blocks),
which offers C{h2} by ALPN as browsers do.

Covered: ALPN chooses C{h2} (C{http/1.1} with C{http2 = false}, and for a
client offering only C{http/1.1}); a public route; the login redirect of a
session route (302 with its state cookie); a session route with a session
cookie sealed by the test (it knows the secret); a bearer route without a
token (401); a streamed upload and download of a few MB on one connection;
an RST_STREAM in mid-request, which ends the upstream request as a client's
disconnect does over HTTP/1.1; a WebSocket upgrade over HTTP/1.1 on the
same listener; an SSE answer arriving event by event; CSRF (refused without
the token, accepted with it; cookies in several fields); forward auth; 100 MB
up and down with the proxy's peak RSS barely moving; a 431 on one stream;
and the rapid-reset and CONTINUATION floods, cut off while another
connection is served (the figures are printed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from hyperframe.frame import ContinuationFrame, HeadersFrame, RstStreamFrame
from jwt.algorithms import RSAAlgorithm
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import Data

from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.session import Session, new_session_id
from tests.fakes import SECRET
from tests.integration import procs
from tests.integration.test_tls import endpoint_path, start_proxy
from tests.integration.test_websocket import start_ws_server
from tests.integration.upstream_app import bytes_sha256
from tests.pki import make_pki

PUBLIC_URL = "https://app.test"
SESSION_COOKIE = "__Host-oidcproxy"
"""The session cookie's name: public_url is https, the cookie has no Domain and path /."""
TIMEOUT = 20.0


class Answer:
    """What arrived on one stream."""

    def __init__(self) -> None:
        self.headers: List[Tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.chunks: List[Tuple[float, bytes]] = []
        """Each piece of the body as it came, with its time (C{time.monotonic})."""
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def status(self) -> int:
        return int(self.header(b":status") or b"0")

    def header(self, name: bytes) -> Optional[bytes]:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def headers_named(self, name: bytes) -> List[bytes]:
        return [value for key, value in self.headers if key == name]


class H2Client:
    """
    A blocking HTTP/2 client on one TLS connection to 127.0.0.1:C{port}
    (verified against C{ca} as C{localhost}), offering C{alpn}.
    """

    def __init__(self, port: int, ca: str, alpn: Sequence[str] = ("h2", "http/1.1"),
                 keep_body: bool = True) -> None:
        context = ssl.create_default_context(cafile=ca)
        context.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.protocol = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.answers: Dict[int, Answer] = {}
        self.keep_body = keep_body
        """Keep all that the bodies carry (else their first MiB, and their SHA-256 in C{received})."""
        self.received: Dict[int, Any] = {}
        self.goaway: Optional[int] = None
        if self.protocol == "h2":
            self.conn.initiate_connection()
            self.flush()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def read(self) -> None:
        """Read once from the socket and handle what came."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        for event in self.conn.receive_data(data):
            stream = getattr(event, "stream_id", 0)
            answer = self.answers.setdefault(stream, Answer()) if stream else None
            if isinstance(event, h2.events.ResponseReceived):
                assert answer is not None
                answer.headers = list(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                assert answer is not None
                if self.keep_body or len(answer.body) < 2 ** 20:
                    answer.body += event.data
                    answer.chunks.append((time.monotonic(), event.data))
                if not self.keep_body:
                    self.received.setdefault(stream, hashlib.sha256()).update(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded):
                assert answer is not None
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset):
                assert answer is not None
                answer.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code
        self.flush()

    def start(self, method: str, path: str, headers: Sequence[Tuple[str, str]] = (),
              body: Optional[bytes] = None, end: bool = True) -> int:
        """Send a request's headers (and its body, as flow control allows); its stream."""
        stream = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":authority", "app.test"),
                  (":scheme", "https"), *headers]
        self.conn.send_headers(stream, [(k.encode(), v.encode()) for k, v in fields],
                               end_stream=body is None and end)
        self.flush()
        if body is not None:
            self.send(stream, body, end)
        return stream

    def send(self, stream: int, body: bytes, end: bool = True) -> None:
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(stream),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.read()  # wait for the proxy to open the window
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream, bytes(chunk), end_stream=end and not view)
            self.flush()
        if end and not body:
            self.conn.end_stream(stream)
            self.flush()

    def wait(self, stream: int) -> Answer:
        """Read until C{stream} is answered whole (or reset)."""
        while True:
            answer = self.answers.get(stream)
            if answer is not None and (answer.ended or answer.reset is not None):
                return answer
            self.read()

    def request(self, method: str, path: str, headers: Sequence[Tuple[str, str]] = (),
                body: Optional[bytes] = None) -> Answer:
        return self.wait(self.start(method, path, headers, body))


def session_cookie(sub: str = "alice") -> str:
    """A session cookie value sealed with L{SECRET}, as the proxy seals one after a login."""
    now = time.time()
    session = Session(id=new_session_id(), sub=sub,
                      claims={"sub": sub, "preferred_username": sub, "email": f"{sub}@example.com"},
                      created=now, last_seen=now, expires=now + 3600)
    return Sealer([SECRET.encode("ascii")]).seal(session.to_bytes(), b"session")


def echo_headers(answer: Answer) -> Dict[str, str]:
    echo = json.loads(bytes(answer.body))
    return {name.lower(): value for name, value in echo["headers"]}


class HTTP2Tests(TestCase):
    """The proxy on an ssl: listener, with Twisted's http2 extra installed (the test venvs have it)."""

    timeout = 120

    async def start(self, *top: str, routes: str = "") -> int:
        idp = self.start_idp()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.pki = make_pki(directory)
        self.upstream = await procs.start_upstream(self)
        url = self.upstream.url
        config = "\n".join([
            f'public_url = "{PUBLIC_URL}"', *top, "",
            "[oidc]", f'issuer = "{idp}"', 'client_id = "proxy"',
            'client_secret = "client-secret"', "discovery = false",
            f'authorization_endpoint = "{idp}/authorize"',
            f'token_endpoint = "{idp}/token"', f'jwks_uri = "{idp}/jwks"', "",
            "[session]", f'secrets = ["{SECRET}"]', "",
            procs.route_config(url, path="/public", strip_prefix=True),
            procs.route_config(url, path="/app", strip_prefix=True).replace(
                'auth = "none"', 'auth = "session"'),
            procs.route_config(url, path="/api", strip_prefix=True).replace(
                'auth = "none"', 'auth = "bearer"'),
            routes,
        ])
        files = self.pki
        listen = (f"ssl:0:interface=127.0.0.1:privateKey={endpoint_path(files['server_chained_key'])}"
                  f":certKey={endpoint_path(files['server_chained'])}"
                  f":extraCertChain={endpoint_path(files['intermediate'])}")
        self.proxy, port = await start_proxy(self, config, listen=listen)
        return port

    def start_idp(self) -> str:
        """An IdP in this process that only has to be reachable: a key set of one RSA key. Its URL."""
        key = self.idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        jwks = Resource()
        jwks.putChild(b"jwks", Data(json.dumps({"keys": [jwk]}).encode(), "application/json"))
        site = server.Site(jwks)
        site.log = lambda request: None  # type: ignore[method-assign]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.idp = f"http://127.0.0.1:{port.getHost().port}"
        return self.idp

    def access_token(self) -> str:
        """An access token of alice's for the proxy, signed by the IdP's key."""
        now = int(time.time())
        claims = {"iss": self.idp, "aud": "proxy", "sub": "alice", "email": "alice@example.com",
                  "iat": now, "exp": now + 300}
        return jwt.encode(claims, self.idp_key, algorithm="RS256",
                          headers={"kid": "k1", "typ": "at+jwt"})

    def client(self, port: int, alpn: Sequence[str] = ("h2", "http/1.1"),
               keep_body: bool = True) -> H2Client:
        client = H2Client(port, self.pki["ca"], alpn, keep_body)
        self.addCleanup(client.close)
        return client

    def log(self) -> str:
        return self.proxy.stdout() + self.proxy.stderr()

    async def test_routes_over_h2(self) -> None:
        """
        ALPN chooses h2; on one connection: a public route is proxied, a
        session route without a session redirects to the IdP with a state
        cookie, with a sealed session cookie it is proxied with the identity
        headers, and a bearer route without a token answers 401, with a
        valid token it is proxied with the token's identity.
        """
        port = await self.start()
        cookie = session_cookie()
        token_of = self.access_token()

        def walk() -> Dict[str, Any]:
            client = self.client(port)
            public = client.request("GET", "/public/echo?x=1")
            navigate = [("accept", "text/html"), ("sec-fetch-mode", "navigate"),
                        ("sec-fetch-dest", "document")]
            deadline = time.monotonic() + TIMEOUT
            login = client.request("GET", "/app/page", navigate)
            while login.status == 503 and time.monotonic() < deadline:
                # The proxy fetches the IdP's keys as it starts.
                time.sleep(0.1)
                login = client.request("GET", "/app/page", navigate)
            session = client.request("GET", "/app/echo", [("cookie", f"{SESSION_COOKIE}={cookie}")])
            bearer = client.request("GET", "/api/echo", [("accept", "application/json")])
            token = client.request("GET", "/api/echo", [("authorization", f"Bearer {token_of}")])
            return {"protocol": client.protocol, "public": public, "login": login,
                    "session": session, "bearer": bearer, "token": token}

        got = await deferToThread(walk)
        self.assertEqual(got["protocol"], "h2")
        public = got["public"]
        self.assertEqual(public.status, 200, bytes(public.body))
        self.assertEqual(json.loads(bytes(public.body))["uri"], "/echo?x=1")
        self.assertEqual(echo_headers(public)["x-forwarded-proto"], "https")

        login = got["login"]
        self.assertEqual(login.status, 302, bytes(login.body))
        self.assertIn(b"/authorize?", login.header(b"location") or b"")
        state_cookies = [c for c in login.headers_named(b"set-cookie") if b"state" in c.split(b"=")[0]]
        self.assertEqual(len(state_cookies), 1, login.headers)
        self.assertIn(b"HttpOnly", state_cookies[0])

        session = got["session"]
        self.assertEqual(session.status, 200, bytes(session.body))
        headers = echo_headers(session)
        self.assertEqual(headers["x-forwarded-user"], "alice")
        self.assertEqual(headers["x-forwarded-email"], "alice@example.com")
        self.assertNotIn(SESSION_COOKIE.lower(), headers.get("cookie", "").lower())

        bearer = got["bearer"]
        self.assertEqual(bearer.status, 401, bytes(bearer.body))
        self.assertTrue((bearer.header(b"www-authenticate") or b"").startswith(b"Bearer"))
        token = got["token"]
        self.assertEqual(token.status, 200, bytes(token.body))
        self.assertEqual(echo_headers(token)["x-forwarded-user"], "alice")

        self.assertIn('"GET /public/echo" 200', self.log())
        self.assertNotIn("Unhandled Error", self.log())
        self.assertNotIn("Traceback", self.log())

    async def test_streamed_upload_and_download(self) -> None:
        """An upload and a download of 8 MB each cross whole on one HTTP/2 connection."""
        port = await self.start()
        size = 8 * 1024 * 1024
        body = os.urandom(1024) * (size // 1024)

        def transfer() -> Tuple[Answer, Answer]:
            client = self.client(port)
            up = client.request("POST", "/public/upload", [("content-type", "application/octet-stream")],
                                body)
            down = client.request("GET", f"/public/bytes?n={size}")
            return up, down

        up, down = await deferToThread(transfer)
        self.assertEqual(up.status, 200, bytes(up.body))
        digest = json.loads(bytes(up.body))
        self.assertEqual((digest["length"], digest["sha256"]), (size, hashlib.sha256(body).hexdigest()))
        self.assertEqual(down.status, 200)
        self.assertEqual(len(down.body), size)
        self.assertEqual(hashlib.sha256(down.body).hexdigest(), bytes_sha256(size))

    async def test_reset_stream_ends_the_upstream_request(self) -> None:
        """
        An RST_STREAM while the upstream has not answered: the proxy ends its
        upstream request (as for an HTTP/1.1 client that disconnects), and
        the connection goes on serving.
        """
        port = await self.start()
        client = self.client(port)

        def hang() -> int:
            return client.start("GET", "/public/hang")

        stream = await deferToThread(hang)

        async def arrived() -> Optional[bool]:
            return any(r["uri"] == "/hang" for r in await self.events()) or None

        await procs.poll_async(arrived, TIMEOUT, what="the request to reach the upstream")

        def reset_and_go_on() -> Answer:
            client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            client.flush()
            return client.request("GET", "/public/echo")

        after = await deferToThread(reset_and_go_on)
        self.assertEqual(after.status, 200)

        async def closed() -> Optional[Dict[str, Any]]:
            for record in await self.events():
                if record["uri"] == "/hang" and record["closed"] is not None:
                    return record
            return None

        record = await procs.poll_async(closed, TIMEOUT, what="the upstream request to be closed")
        self.assertFalse(record["finished"])
        self.assertIn('"GET /public/hang" 499', self.log())

    async def events(self) -> List[Dict[str, Any]]:
        """What the upstream app recorded (asked over HTTP/1.1, straight)."""
        def ask() -> List[Dict[str, Any]]:
            with socket.create_connection(("127.0.0.1", self.upstream.port), timeout=TIMEOUT) as s:
                s.sendall(b"GET /events HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if b"chunked" in head.lower():
                body = dechunk(body)
            return json.loads(body)

        return await deferToThread(ask)

    async def test_http2_off(self) -> None:
        """http2 = false: the same client gets http/1.1 from ALPN."""
        port = await self.start("http2 = false")
        client = await deferToThread(self.client, port)
        self.assertEqual(client.protocol, "http/1.1")

    async def test_http11_clients_and_websocket_upgrade(self) -> None:
        """
        With h2 offered, a client offering only http/1.1 is served HTTP/1.1,
        and a WebSocket upgrade on the same listener is answered 101 (browsers
        open WebSockets over HTTP/1.1).
        """
        ws = await start_ws_server(self)
        port = await self.start(routes=procs.route_config(
            f"http://127.0.0.1:{ws.port}", path="/ws", strip_prefix=True))

        def http11(request: bytes) -> Tuple[Optional[str], bytes]:
            client = self.client(port, alpn=("http/1.1",))
            client.sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return client.protocol, data

        protocol, head = await deferToThread(
            http11, b"GET /public/echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        self.assertEqual(protocol, "http/1.1")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)

        key = base64.b64encode(os.urandom(16))
        _, head = await deferToThread(http11, (
            b"GET /ws/echo HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"))
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.assertIn(b"sec-websocket-accept: " + accept.lower(), head.lower())
        # The server notes the handshake once its 101 is out: it may come after the 101.
        handshakes = await procs.poll(lambda: ws.handshakes("/echo") or None, TIMEOUT,
                                      what="the WebSocket server to note the handshake")
        self.assertEqual(len(handshakes), 1)


    async def test_sse_event_by_event(self) -> None:
        """A text/event-stream answer arrives over h2 event by event, not at its end."""
        ws = await start_ws_server(self)
        port = await self.start(routes=procs.route_config(
            f"http://127.0.0.1:{ws.sse_port}", path="/sse", strip_prefix=True,
            stream_idle_timeout="5s"))

        def listen() -> Tuple[float, Answer]:
            client = self.client(port)
            started = time.monotonic()
            return started, client.request("GET", "/sse/events?n=3&every=0.5",
                                           [("accept", "text/event-stream")])

        started, answer = await deferToThread(listen)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"), b"text/event-stream")
        self.assertEqual(bytes(answer.body), b"data: event 0\n\ndata: event 1\n\ndata: event 2\n\n")
        arrivals = [(round(at - started, 1), data) for at, data in answer.chunks if data]
        self.assertEqual([data for _, data in arrivals],
                         [b"data: event %d\n\n" % i for i in range(3)], arrivals)
        # One every half second: the first one did not wait for the last.
        self.assertGreaterEqual(arrivals[2][0] - arrivals[0][0], 0.8, arrivals)

    async def test_csrf(self) -> None:
        """
        With [csrf], over h2: a session POST without the token is refused
        (403), with the cookie's token in the header it goes through; the
        cookies may come as separate cookie fields (RFC 9113 8.2.3), and the
        upstream gets them as one Cookie header.
        """
        port = await self.start("[csrf]")
        cookie = f"{SESSION_COOKIE}={session_cookie()}"

        def walk() -> Dict[str, Answer]:
            client = self.client(port)
            page = client.request("GET", "/app/echo", [("cookie", cookie), ("cookie", "mine=1")])
            token = ""
            for header in page.headers_named(b"set-cookie"):
                name, _, rest = header.decode().partition("=")
                if name == "__Host-oidcproxy_csrf":
                    token = rest.split(";")[0]
            refused = client.request("POST", "/app/upload", [("cookie", cookie)], b"x")
            accepted = client.request(
                "POST", "/app/upload",
                [("cookie", cookie), ("cookie", f"__Host-oidcproxy_csrf={token}"),
                 ("x-csrf-token", token)], b"xyz")
            return {"page": page, "refused": refused, "accepted": accepted}

        got = await deferToThread(walk)
        page = got["page"]
        self.assertEqual(page.status, 200, bytes(page.body))
        echo = json.loads(bytes(page.body))
        cookies = [value for name, value in echo["headers"] if name.lower() == "cookie"]
        self.assertEqual(cookies, ["mine=1"])
        self.assertEqual(got["refused"].status, 403, bytes(got["refused"].body))
        accepted = got["accepted"]
        self.assertEqual(accepted.status, 200, bytes(accepted.body))
        self.assertEqual(json.loads(bytes(accepted.body))["length"], 3)
        self.assertIn("auth=csrf_refused proto=HTTP/2", self.log())

    async def test_forward_auth(self) -> None:
        """/oidc/auth answers over h2: 200 with the identity for a session, 401 without."""
        port = await self.start('trusted_proxies = ["127.0.0.1/32"]')
        described = [("x-forwarded-method", "GET"), ("x-forwarded-proto", "https"),
                     ("x-forwarded-host", "app.test"), ("x-forwarded-uri", "/app/page")]

        def ask() -> Tuple[Answer, Answer]:
            client = self.client(port)
            deadline = time.monotonic() + TIMEOUT
            without = client.request("GET", "/oidc/auth", described)
            while without.status == 503 and time.monotonic() < deadline:
                time.sleep(0.1)  # the proxy fetches the IdP's keys as it starts
                without = client.request("GET", "/oidc/auth", described)
            cookie = [("cookie", f"{SESSION_COOKIE}={session_cookie('bob')}")]
            return without, client.request("GET", "/oidc/auth", described + cookie)

        without, with_session = await deferToThread(ask)
        self.assertEqual(without.status, 401, bytes(without.body))
        self.assertEqual(with_session.status, 200, bytes(with_session.body))
        self.assertEqual(with_session.header(b"x-forwarded-user"), b"bob")
        self.assertIn('"GET /oidc/auth" 200', self.log())

    async def test_100_mb_up_and_down_streamed(self) -> None:
        """
        100 MB up and 100 MB down on one h2 connection cross whole, and the
        proxy's peak RSS grows by far less than that: it streams them.
        """
        port = await self.start("[upstream]", "max_body_size = 200_000_000")
        size = 100 * 1024 * 1024
        body = os.urandom(1024 * 1024) * 100
        # Warm up (first request, TLS, the upstream pool) before the baseline.
        await deferToThread(lambda: self.client(port).request("GET", "/public/echo"))
        before = peak_rss(self.proxy.pid)

        def transfer() -> Tuple[Answer, Answer, Any]:
            client = self.client(port, keep_body=False)
            up = client.request("POST", "/public/upload",
                                [("content-type", "application/octet-stream")], body)
            down_stream = client.start("GET", f"/public/bytes?n={size}")
            down = client.wait(down_stream)
            return up, down, client.received[down_stream]

        up, down, digest = await deferToThread(transfer)
        grown = peak_rss(self.proxy.pid) - before
        self.assertEqual(up.status, 200, bytes(up.body))
        self.assertEqual(json.loads(bytes(up.body)),
                         {"length": size, "sha256": hashlib.sha256(body).hexdigest()})
        self.assertEqual(down.status, 200)
        self.assertEqual(digest.hexdigest(), bytes_sha256(size))
        print(f"\n100 MB up and down over h2: the proxy's peak RSS grew {grown / 2 ** 20:.1f} MiB")
        self.assertLess(grown, 40 * 1024 * 1024)

    async def test_rapid_reset_flood(self) -> None:
        """
        A client opening and resetting streams as fast as it can is cut off
        (GOAWAY ENHANCE_YOUR_CALM); the proxy started about the reset
        bucket's burst of requests (each cancelled: 499), and the upstream
        saw no more; another connection is served meanwhile.
        """
        port = await self.start()
        await deferToThread(lambda: self.client(port).request("GET", "/public/echo"))

        def flood() -> Tuple[int, Optional[int], float]:
            client = self.client(port)
            # Settings acknowledged first: the raw frames use the client's own encoder.
            client.request("GET", "/public/echo")
            encoder = client.conn.encoder
            first = client.conn.get_next_available_stream_id()
            fields = [(b":method", b"GET"), (b":path", b"/public/hang"),
                      (b":authority", b"app.test"), (b":scheme", b"https")]
            sent = 0

            def batches() -> Iterator[bytes]:
                nonlocal sent
                while sent < 100000:
                    frames = []
                    for _ in range(50):
                        stream = first + 2 * sent
                        headers = HeadersFrame(stream, encoder.encode(fields))
                        headers.flags.add("END_HEADERS")
                        headers.flags.add("END_STREAM")
                        reset = RstStreamFrame(stream)
                        reset.error_code = h2.errors.ErrorCodes.CANCEL
                        frames += [headers.serialize(), reset.serialize()]
                        sent += 1
                    yield b"".join(frames)

            elapsed = write_until_goaway(client, batches())
            return sent, client.goaway, elapsed

        sent, goaway, elapsed = await deferToThread(flood)
        other = await deferToThread(lambda: self.client(port).request("GET", "/public/echo"))
        self.assertEqual(other.status, 200)
        self.assertEqual(goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        await procs.sleep(1)
        hangs = [r for r in await self.events() if r["uri"] == "/hang"]
        started = self.log().count('"GET /public/hang" 499')
        print(f"\nrapid reset: {sent} HEADERS+RST_STREAM pairs written in {elapsed:.2f}s before "
              f"the GOAWAY; the proxy started {started} requests, {len(hangs)} reached the upstream")
        # The bucket: a burst of 200 (twice the default stream limit), refilled at 33 a second.
        self.assertLessEqual(started, 201 + 33 * elapsed + 1)
        self.assertLessEqual(len(hangs), started)
        self.assertNotIn("Traceback", self.log())

    async def test_continuation_flood(self) -> None:
        """
        A header block that never ends is cut off (GOAWAY ENHANCE_YOUR_CALM)
        without the proxy holding it: its RSS barely moves, another
        connection is served.
        """
        port = await self.start()
        await deferToThread(lambda: self.client(port).request("GET", "/public/echo"))
        before = peak_rss(self.proxy.pid)

        def flood() -> Tuple[int, Optional[int], float]:
            client = self.client(port)
            # Settings acknowledged first: nothing of the client's may come
            # between the HEADERS and its CONTINUATION frames.
            client.request("GET", "/public/echo")
            stream = client.conn.get_next_available_stream_id()
            headers = HeadersFrame(stream, client.conn.encoder.encode(
                [(b":method", b"GET"), (b":path", b"/public/echo"),
                 (b":authority", b"app.test"), (b":scheme", b"https")]))
            client.sock.sendall(headers.serialize())
            frame = ContinuationFrame(stream, b"\x00" * 16384).serialize()
            sent = 0

            def frames() -> Iterator[bytes]:
                nonlocal sent
                while sent < 64 * 2 ** 20:
                    sent += 16384
                    yield frame

            elapsed = write_until_goaway(client, frames())
            return sent, client.goaway, elapsed

        sent, goaway, elapsed = await deferToThread(flood)
        other = await deferToThread(lambda: self.client(port).request("GET", "/public/echo"))
        self.assertEqual(other.status, 200)
        self.assertEqual(goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        grown = peak_rss(self.proxy.pid) - before
        print(f"\nCONTINUATION flood: {sent} bytes written in {elapsed:.2f}s before the GOAWAY; "
              f"the proxy's peak RSS grew {grown / 1024:.0f} KiB")
        self.assertLess(grown, 8 * 1024 * 1024)

    async def test_header_list_over_the_limit(self) -> None:
        """An over-long Cookie over h2: 431 on its stream, and the connection goes on."""
        port = await self.start()

        def ask() -> Tuple[Answer, Answer]:
            client = self.client(port)
            big = client.request("GET", "/public/echo", [("cookie", "c=" + "x" * 60000)])
            return big, client.request("GET", "/public/echo")

        big, after = await deferToThread(ask)
        self.assertEqual(big.status, 431)
        self.assertEqual(after.status, 200)
        self.assertIn('"GET /public/echo" 431', self.log())


def write_until_goaway(client: H2Client, chunks: Iterator[bytes]) -> float:
    """
    Write C{chunks} as fast as the connection takes them, reading what comes
    back, until the server's GOAWAY, the connection's end or the last chunk;
    then wait for the GOAWAY. The seconds it took.
    """
    started = time.monotonic()
    client.sock.settimeout(0.001)
    for chunk in chunks:
        if client.goaway is not None:
            break
        try:
            client.sock.sendall(chunk)
            client.read()
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        except (OSError, ConnectionError, h2.exceptions.ProtocolError):
            break
    client.sock.settimeout(TIMEOUT)
    while client.goaway is None:
        try:
            client.read()
        except (OSError, ConnectionError):
            break
    return time.monotonic() - started


def peak_rss(pid: int) -> int:
    """The peak resident set size of process C{pid} (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out
