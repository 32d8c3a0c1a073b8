"""
Integration tests: the real C{twistd oidcproxy} process in front of a real
upstream process (L{tests.integration.upstream_app}), over loopback TCP.

Each test starts its own upstream and proxy on free ports and stops them in
cleanup. HTTP clients are treq on an L{Agent} with a non-persistent pool, or
a raw TCP client where the exact bytes on the wire matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
import uuid
from http.cookiejar import CookieJar
from typing import Any, Callable, Dict, List, Optional, Tuple

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.integration import procs
from tests.integration.upstream_app import BLOCK, BLOCK_SIZE, bytes_sha256

log = Logger()

MB = 1_000_000
BIG = 100 * MB
RSS_LIMIT = 20 * MB

# -- clients ---------------------------------------------------------------------


def http_client(testcase: TestCase) -> HTTPClient:
    """
    A treq client of its own: no connection outlives its response (so none
    is left for trial's dirty-reactor check) and no cookie jar shared with
    other tests.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool, connectTimeout=5)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(agent, cookiejar=CookieJar())


async def get_json(client: HTTPClient, url: str, **kwargs: Any) -> Tuple[Any, Any]:
    response = await client.get(url, timeout=10, **kwargs)
    body = await response.content()
    return response, json.loads(body)


async def upstream_events(client: HTTPClient, upstream: procs.Upstream) -> List[Dict[str, Any]]:
    """The upstream's record of every request it received (asked directly)."""
    _, events = await get_json(client, upstream.url + "/events")
    return events


def header_values(echo: Dict[str, Any], name: str) -> List[str]:
    """The values of header C{name} the upstream received, in order."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


class RawClient(Protocol):
    """
    A TCP client that sends exactly the bytes it is told to and keeps
    everything it receives, for requests treq would not send as written
    (dot segments, hop-by-hop headers, chunked bodies, C{Expect}).
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = False
        self.lost: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.lost.callback(None)

    async def wait_for(self, predicate: Callable[[bytes], bool], timeout: float) -> bytes:
        """Wait until C{predicate(received)} holds or the connection closes."""
        await procs.poll(lambda: predicate(bytes(self.received)) or self.closed, timeout,
                         what="response bytes")
        return bytes(self.received)

    async def wait_closed(self, timeout: float) -> bytes:
        await procs.poll(lambda: self.closed, timeout, what="the server to close the connection")
        return bytes(self.received)

    async def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()
        await self.lost


async def raw_connect(testcase: TestCase, port: int, protocol: Optional[Protocol] = None) -> Any:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    proto = await connectProtocol(endpoint, protocol if protocol is not None else RawClient())
    testcase.addCleanup(proto.close)
    return proto


async def raw_request(testcase: TestCase, port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send C{data} and return everything received until the server closes."""
    client = await raw_connect(testcase, port)
    client.transport.write(data)
    return await client.wait_closed(timeout)


def parse_head(raw: bytes) -> Tuple[int, List[Tuple[bytes, bytes]], bytes]:
    """The status, headers and the bytes after the header block of a response."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {raw[:300]!r}")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers, rest


def raw_header(headers: List[Tuple[bytes, bytes]], name: bytes) -> List[bytes]:
    return [v for n, v in headers if n == name.lower()]


def _dechunk(data: bytes) -> Optional[Tuple[bytes, int]]:
    """
    The body of a complete chunked encoding at the start of C{data} and the
    number of bytes it took, or None while it is incomplete.
    """
    body = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end == -1:
            return None
        size = int(data[pos:end].split(b";", 1)[0], 16)
        pos = end + 2
        if size == 0:
            # No trailers expected: the last chunk is followed by an empty line.
            if len(data) < pos + 2:
                return None
            return bytes(body), pos + 2
        if len(data) < pos + size + 2:
            return None
        body += data[pos:pos + size]
        pos += size + 2


Response = Tuple[int, List[Tuple[bytes, bytes]], bytes]


def next_response(data: bytes) -> Optional[Tuple[Response, int]]:
    """
    The first whole response in C{data} (to a GET) with its decoded body,
    and the number of bytes it took; None while it is incomplete or
    delimited by the connection closing.
    """
    if b"\r\n\r\n" not in data:
        return None
    status, headers, rest = parse_head(data)
    head_length = len(data) - len(rest)
    if 100 <= status < 200 or status in (204, 304):
        return (status, headers, b""), head_length
    encodings = raw_header(headers, b"transfer-encoding")
    if encodings and encodings[-1].lower() == b"chunked":
        chunked = _dechunk(rest)
        if chunked is None:
            return None
        return (status, headers, chunked[0]), head_length + chunked[1]
    lengths = raw_header(headers, b"content-length")
    if lengths and len(rest) >= int(lengths[0]):
        size = int(lengths[0])
        return (status, headers, rest[:size]), head_length + size
    return None


def complete_response(data: bytes) -> Optional[Response]:
    """The first whole response in C{data}, or None (see L{next_response})."""
    found = next_response(data)
    return None if found is None else found[0]


async def read_response(client: RawClient, timeout: float = 10
                        ) -> Tuple[int, List[Tuple[bytes, bytes]], bytes]:
    """Wait for one whole response on a connection that may stay open."""
    data = await client.wait_for(lambda d: complete_response(d) is not None, timeout)
    parsed = complete_response(data)
    if parsed is None:
        # The connection closed: a close-delimited body, or a cut-off one.
        return parse_head(data)
    return parsed


class StreamingClient(RawClient):
    """
    A raw client for a large response: hashes the body as it arrives instead
    of keeping it, and can stop reading (pause its transport) to act as a
    slow client.
    """

    def __init__(self) -> None:
        super().__init__()
        self.head: Optional[bytes] = None
        self.body_length = 0
        self.sha256 = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.received += data
            head, sep, rest = bytes(self.received).partition(b"\r\n\r\n")
            if not sep:
                return
            self.head = head + sep
            self.received = bytearray(self.head)
            data = rest
        self.body_length += len(data)
        self.sha256.update(data)


class RSSMonitor:
    """The peak resident size of a process, sampled every C{interval} seconds."""

    def __init__(self, testcase: TestCase, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.baseline = procs.read_rss(pid)
        self.peak = self.baseline
        self.samples = 0
        self._loop = LoopingCall(self._sample)
        self._loop.clock = reactor
        self._interval = interval
        testcase.addCleanup(self.stop)

    def _sample(self) -> None:
        try:
            rss = procs.read_rss(self.pid)
        except (OSError, RuntimeError):
            return
        self.samples += 1
        self.peak = max(self.peak, rss)

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self._sample()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def report(self, what: str) -> str:
        text = (f"RSS {what}: baseline {self.baseline / MB:.1f} MB, peak {self.peak / MB:.1f} MB, "
                f"growth {self.growth / MB:.1f} MB over {self.samples} samples")
        log.info("{text}", text=text)
        return text


class BodyDigest:
    """A treq collector that hashes a body instead of keeping it."""

    def __init__(self) -> None:
        self.length = 0
        self.sha256 = hashlib.sha256()

    def __call__(self, data: bytes) -> None:
        self.length += len(data)
        self.sha256.update(data)


# -- fixtures --------------------------------------------------------------------


class ProxyTestCase(TestCase):
    """Starts an upstream and a proxy in front of it for each test."""

    timeout = 60

    async def start(self, routes: Optional[Callable[[str], str]] = None,
                    **top: Any) -> Tuple[procs.Upstream, procs.Proxy]:
        """
        Start the upstream, then the proxy. C{routes(upstream_url)} gives the
        C{[[routes]]} tables; the default is one route for everything.
        """
        upstream = procs.spawn_upstream(self)
        if routes is None:
            text = procs.route_config(upstream.url, timeout="5s", max_body_size="200MB")
        else:
            text = routes(upstream.url)
        # Both start at once; the upstream's socket is already listening.
        ready = Deferred.fromCoroutine(upstream.wait_ready())
        try:
            proxy = await procs.start_proxy(self, procs.config_text(text, **top))
        except BaseException:
            ready.addErrback(lambda _: None)
            ready.cancel()
            raise
        await ready
        self.client = http_client(self)
        return upstream, proxy


# -- the command line ------------------------------------------------------------


async def run_twistd(testcase: TestCase, *args: str,
                     env: Optional[Dict[str, str]] = None) -> Tuple[str, str, int]:
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    command = procs.twistd_command()
    out, err, code = await getProcessOutputAndValue(
        command[0], command[1:] + list(args), env={**procs.child_env(), **(env or {})},
        path=workdir,
    )
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code


class CommandLineTests(TestCase):
    """The twistd plugin and its options, run as a real twistd."""

    timeout = 60

    async def test_plugin_listed_in_twistd_help(self) -> None:
        """C{twistd --help} lists the oidcproxy plugin with its one-line description."""
        out, err, code = await run_twistd(self, "--help")
        self.assertEqual(code, 0, err)
        lines = [line for line in out.splitlines() if line.strip().startswith("oidcproxy ")]
        self.assertEqual(len(lines), 1, out)
        self.assertIn("OpenID Connect authenticating reverse proxy", lines[0])

    async def test_plugin_help_lists_options(self) -> None:
        """C{twistd oidcproxy --help} documents --config, --listen, --check and --port-file."""
        out, err, code = await run_twistd(self, "--pidfile=", "oidcproxy", "--help")
        self.assertEqual(code, 0, err)
        for option in ("--config", "--listen", "--check", "--port-file"):
            self.assertIn(option, out)

    async def test_check_example_config(self) -> None:
        """C{--check} on the shipped example configuration says "config OK" and exits 0."""
        # The example takes its secrets from the environment, as a deployment
        # would: give every variable it names a value long enough for any key.
        with open(procs.EXAMPLE_CONFIG, encoding="utf-8") as f:
            names = re.findall(r'^[^#\n]*\benv\s*=\s*"(\w+)"', f.read(), re.MULTILINE)
        env = {name: "integration-test-secret-" + "x" * 40 for name in names}
        out, err, code = await run_twistd(
            self, "--pidfile=", "oidcproxy", "--config", procs.EXAMPLE_CONFIG, "--check", env=env
        )
        self.assertEqual(code, 0, out + err)
        self.assertIn("config OK", out)

    async def test_check_bad_config_lists_every_problem(self) -> None:
        """
        C{--check} on a configuration with three problems exits 1 and prints
        one line per problem, each naming its key path and the file, the
        unknown key first.
        """
        path = procs.write_config(self, (
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            'keepalive_timeout = "soon"\n'
            "\n[[routes]]\n"
            'path = "/"\nupstream = "http://127.0.0.1:1"\nauth = "none"\ntimout = "2s"\n'
            "\n[[routes]]\n"
            'path = "/b"\nauth = "none"\n'
        ))
        out, err, code = await run_twistd(
            self, "--pidfile=", "oidcproxy", "--config", path, "--check"
        )
        self.assertEqual(code, 1, out + err)
        problems = [line for line in (out + err).splitlines() if line.startswith("config:")]
        self.assertEqual(len(problems), 3, out + err)
        for keypath, line in zip(
            ("routes[0].timout:", "keepalive_timeout:", "routes[1].upstream:"), problems
        ):
            self.assertIn(keypath, line)
            self.assertIn(path, line)
        self.assertIn("unknown key", problems[0])
        self.assertIn("duration", problems[1])
        self.assertIn("required", problems[2])
        self.assertNotIn("config OK", out + err)


# -- forwarding ------------------------------------------------------------------


class ForwardingTests(ProxyTestCase):
    """A started proxy forwards requests to the real upstream."""

    async def test_get_is_forwarded(self) -> None:
        """A GET reaches the upstream with its target; status and body come back."""
        _, proxy = await self.start()
        response, echo = await get_json(self.client, proxy.url + "/echo/some/where?a=1&b=%20x")
        self.assertEqual(response.code, 200)
        self.assertEqual(echo["method"], "GET")
        self.assertEqual(echo["uri"], "/echo/some/where?a=1&b=%20x")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    async def test_forwarding_headers_set_by_proxy(self) -> None:
        """
        The upstream sees X-Forwarded-For 127.0.0.1, X-Forwarded-Proto http
        and X-Forwarded-Host equal to the Host the client sent.
        """
        _, proxy = await self.start()
        host = f"app.example.test:{proxy.port}"
        _, echo = await get_json(self.client, proxy.url + "/echo",
                                 headers=Headers({b"host": [host.encode("ascii")]}))
        self.assertEqual(header_values(echo, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(header_values(echo, "x-forwarded-proto"), ["http"])
        self.assertEqual(header_values(echo, "x-forwarded-host"), [host])

    async def test_client_forwarded_for_replaced_when_untrusted(self) -> None:
        """A client's X-Forwarded-For is dropped when the client is not a trusted proxy."""
        _, proxy = await self.start()
        _, echo = await get_json(self.client, proxy.url + "/echo",
                                 headers=Headers({b"x-forwarded-for": [b"6.6.6.6"]}))
        self.assertEqual(header_values(echo, "x-forwarded-for"), ["127.0.0.1"])

    async def test_forwarding_header_spellings_dropped_when_untrusted(self) -> None:
        """
        X_Forwarded_For, X-Real-IP and X-Original-URL from an untrusted client
        never reach the upstream (frameworks read them as the real thing).
        """
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"X_Forwarded_For: 6.6.6.6\r\n"
            b"X-Real-IP: 6.6.6.6\r\n"
            b"X-Original-URL: /admin\r\n"
            b"\r\n"
        )
        status, _, body = await read_response(client)
        self.assertEqual(status, 200)
        echo = json.loads(body)
        names = [n.lower().replace("_", "-") for n, _ in echo["headers"]]
        self.assertEqual(names.count("x-forwarded-for"), 1, echo["headers"])
        self.assertEqual(header_values(echo, "x-forwarded-for"), ["127.0.0.1"])
        self.assertNotIn("x-real-ip", names)
        self.assertNotIn("x-original-url", names)

    async def test_two_host_headers_400(self) -> None:
        """A request with two Host headers is refused with 400, nothing goes upstream."""
        upstream, proxy = await self.start()
        raw = await raw_request(self, proxy.port, (
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
            b"Connection: close\r\n\r\n"
        ))
        status, _, _ = parse_head(raw)
        self.assertEqual(status, 400)
        self.assertEqual(await upstream_events(self.client, upstream), [])

    async def test_client_forwarded_for_kept_when_trusted(self) -> None:
        """From a trusted proxy the X-Forwarded-For is kept and the peer appended."""
        _, proxy = await self.start(trusted_proxies=["127.0.0.1"])
        _, echo = await get_json(self.client, proxy.url + "/echo",
                                 headers=Headers({b"x-forwarded-for": [b"6.6.6.6"]}))
        self.assertEqual(header_values(echo, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"])


    async def test_request_body_forwarded(self) -> None:
        """A POST body reaches the upstream whole."""
        _, proxy = await self.start()
        body = BLOCK[:5000]
        response = await self.client.post(proxy.url + "/echo", data=body, timeout=10)
        echo = json.loads(await response.content())
        self.assertEqual(response.code, 200)
        self.assertEqual(echo["method"], "POST")
        self.assertEqual(echo["body_length"], 5000)
        self.assertEqual(echo["body_sha256"], hashlib.sha256(body).hexdigest())

    async def test_chunked_request_body_forwarded(self) -> None:
        """A chunked request body reaches the upstream whole."""
        _, proxy = await self.start()
        parts = [BLOCK[:1000], BLOCK[1000:1500], BLOCK[1500:4000]]
        chunks = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
        )
        status, _, body = await read_response(client)
        self.assertEqual(status, 200, body[:300])
        echo = json.loads(body)
        self.assertEqual(echo["body_length"], 4000)
        self.assertEqual(echo["body_sha256"], hashlib.sha256(BLOCK[:4000]).hexdigest())

    async def test_unrouted_path_404(self) -> None:
        """A path no route matches gets 404 and nothing goes upstream."""
        upstream, proxy = await self.start(lambda url: procs.route_config(url, "/echo"))
        response = await self.client.get(proxy.url + "/echoes", timeout=10)
        await response.content()
        self.assertEqual(response.code, 404)
        response, echo = await get_json(self.client, proxy.url + "/echo/in")
        self.assertEqual(echo["uri"], "/echo/in")
        self.assertEqual([e["uri"] for e in await upstream_events(self.client, upstream)],
                         ["/echo/in"])


class ConnectionTests(ProxyTestCase):
    """Client connections: keep-alive, pipelining, HTTP/1.0."""

    async def test_keep_alive_connection_serves_several_requests(self) -> None:
        """Three requests one after another on one client connection all get answers."""
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        for i in range(3):
            client.received = bytearray()
            client.transport.write(
                f"GET /echo?i={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")
            )
            status, _, body = await read_response(client)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["uri"], f"/echo?i={i}")
        self.assertFalse(client.closed)

    async def test_pipelined_requests_answered_in_order(self) -> None:
        """Requests sent back to back before any answer are answered in order."""
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(b"".join(
            f"GET /echo?i={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")
            for i in range(3)
        ))

        def three(data: bytes) -> Optional[List[Response]]:
            found = []
            while len(found) < 3:
                one = next_response(data)
                if one is None:
                    return None
                found.append(one[0])
                data = data[one[1]:]
            return found

        data = await client.wait_for(lambda d: three(d) is not None, 10)
        responses = three(data)
        self.assertIsNotNone(responses, data[:1000])
        assert responses is not None
        self.assertEqual([r[0] for r in responses], [200, 200, 200])
        self.assertEqual([json.loads(r[2])["uri"] for r in responses],
                         ["/echo?i=0", "/echo?i=1", "/echo?i=2"])

    async def test_idle_connection_closed_after_keepalive_timeout(self) -> None:
        """An idle client connection is closed after keepalive_timeout (1 s here)."""
        _, proxy = await self.start(keepalive_timeout="1s")
        client = await raw_connect(self, proxy.port)
        client.transport.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, _ = await read_response(client)
        self.assertEqual(status, 200)
        idle = time.monotonic()
        await client.wait_closed(5)
        self.assertGreaterEqual(time.monotonic() - idle, 0.8)

    async def test_http10_client_gets_whole_body(self) -> None:
        """An HTTP/1.0 client gets the whole body, then the connection closes."""
        _, proxy = await self.start()
        raw = await raw_request(self, proxy.port, b"GET /bytes?n=300000 HTTP/1.0\r\n\r\n")
        status, headers, rest = parse_head(raw)
        self.assertEqual(status, 200)
        self.assertEqual(raw_header(headers, b"transfer-encoding"), [])
        self.assertEqual(hashlib.sha256(rest).hexdigest(), bytes_sha256(300_000))


class HeaderTests(ProxyTestCase):
    """Which headers cross the proxy, and how."""

    async def test_hop_by_hop_headers_not_forwarded(self) -> None:
        """
        Connection, the headers it names, Keep-Alive, TE, Upgrade and
        Proxy-Authorization stay on the client hop; end-to-end headers pass.
        """
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            b"GET /echo HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Connection: X-Secret\r\n"
            b"X-Secret: 1\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"TE: trailers\r\n"
            b"Upgrade: websocket\r\n"
            b"Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n"
            b"X-End-To-End: kept\r\n"
            b"Accept-Language: de\r\n"
            b"\r\n"
        )
        status, _, body = await read_response(client)
        self.assertEqual(status, 200, body[:500])
        echo = json.loads(body)
        names = {n.lower() for n, _ in echo["headers"]}
        for hop in ("x-secret", "keep-alive", "te", "upgrade", "proxy-authorization"):
            self.assertNotIn(hop, names, echo["headers"])
        for value in header_values(echo, "connection"):
            self.assertNotIn("secret", value.lower())
        self.assertEqual(header_values(echo, "x-end-to-end"), ["kept"])
        self.assertEqual(header_values(echo, "accept-language"), ["de"])

    async def test_content_length_kept(self) -> None:
        """An upstream's Content-Length reaches the client; the body is not re-chunked."""
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(b"GET /bytes?n=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = await read_response(client)
        self.assertEqual(status, 200)
        self.assertEqual(raw_header(headers, b"content-length"), [b"1000"])
        self.assertEqual(raw_header(headers, b"transfer-encoding"), [])
        self.assertEqual(body, BLOCK[:1000])

    async def test_chunked_upstream_response_stays_unsized(self) -> None:
        """An upstream's chunked body reaches an HTTP/1.1 client chunked and whole."""
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            b"GET /bytes?n=100000&chunked=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        status, headers, body = await read_response(client)
        self.assertEqual(status, 200)
        self.assertEqual(raw_header(headers, b"content-length"), [])
        self.assertEqual(raw_header(headers, b"transfer-encoding"), [b"chunked"])
        self.assertEqual(hashlib.sha256(body).hexdigest(), bytes_sha256(100_000))

    async def test_response_hop_by_hop_headers_not_forwarded(self) -> None:
        """
        A header the upstream's Connection header names (and
        Proxy-Authenticate) stays on the upstream hop; end-to-end ones pass.
        """
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(b"GET /hop-headers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = await read_response(client)
        self.assertEqual(status, 200)
        self.assertEqual(body, b"hop\n")
        self.assertEqual(raw_header(headers, b"x-end-to-end"), [b"kept"])
        self.assertEqual(raw_header(headers, b"proxy-authenticate"), [])
        self.assertEqual(raw_header(headers, b"x-hop"), [], headers)

    async def test_no_content_type_added(self) -> None:
        """An upstream answer without Content-Type gets none from the proxy either."""
        _, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            b"GET /status?code=200&type=none HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        status, headers, body = await read_response(client)
        self.assertEqual(status, 200)
        self.assertEqual(body, b"status 200\n")
        self.assertEqual(raw_header(headers, b"content-type"), [])

    async def test_repeated_request_headers_stay_repeated(self) -> None:
        """A header sent twice reaches the upstream twice, in order."""
        _, proxy = await self.start()
        _, echo = await get_json(self.client, proxy.url + "/echo",
                                 headers=Headers({b"x-repeat": [b"first", b"second"]}))
        self.assertEqual(header_values(echo, "x-repeat"), ["first", "second"])

    async def test_set_cookie_headers_stay_separate(self) -> None:
        """Two Set-Cookie headers (and a repeated X-Multi) reach the client as separate lines."""
        _, proxy = await self.start()
        raw = await raw_request(
            self, proxy.port, b"GET /cookies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        status, headers, _ = parse_head(raw)
        self.assertEqual(status, 200)
        self.assertEqual(raw_header(headers, b"set-cookie"), [
            b"a=1; Path=/; HttpOnly",
            b"b=2; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
        ])
        self.assertEqual(raw_header(headers, b"x-multi"), [b"one", b"two"])


# -- streaming -------------------------------------------------------------------


class StreamingTests(ProxyTestCase):
    """100 MB bodies stream through the proxy without it holding them in memory."""

    timeout = 90

    async def _download(self, chunked: bool) -> None:
        _, proxy = await self.start()
        query = "&chunked=1" if chunked else ""
        # Warm up: the first transfer allocates what every later one reuses.
        warm = await self.client.get(proxy.url + f"/bytes?n={5 * MB}{query}", timeout=30)
        await treq.collect(warm, BodyDigest())

        monitor = RSSMonitor(self, proxy.pid)
        monitor.start()
        response = await self.client.get(proxy.url + f"/bytes?n={BIG}{query}", timeout=60)
        self.assertEqual(response.code, 200)
        digest = BodyDigest()
        await treq.collect(response, digest)
        monitor.stop()
        report = monitor.report(f"download {'chunked' if chunked else 'content-length'}")
        self.assertEqual(digest.length, BIG)
        self.assertEqual(digest.sha256.hexdigest(), bytes_sha256(BIG))
        self.assertLessEqual(monitor.growth, RSS_LIMIT, report)
        # The Agent keeps Content-Length to itself and reports it as length.
        self.assertEqual(response.length, UNKNOWN_LENGTH if chunked else BIG)

    async def test_large_response_with_content_length(self) -> None:
        """
        100 MB with Content-Length reach the client byte for byte while the
        proxy's RSS grows by no more than 20 MB.
        """
        await self._download(chunked=False)

    async def test_large_chunked_response(self) -> None:
        """
        100 MB chunked reach the client byte for byte while the proxy's RSS
        grows by no more than 20 MB.
        """
        await self._download(chunked=True)

    async def test_large_request_body(self) -> None:
        """
        A 100 MB upload reaches the upstream with exactly its length and
        SHA-256, while the proxy's RSS grows by no more than 20 MB.
        """
        _, proxy = await self.start()
        path = os.path.abspath(self.mktemp())
        expected = hashlib.sha256()
        with open(path, "wb") as f:
            for i in range(BIG // BLOCK_SIZE + 1):
                # Vary the blocks so a reordering or a repeat would show.
                block = (i.to_bytes(8, "big") + BLOCK[8:])[: min(BLOCK_SIZE, BIG - f.tell())]
                f.write(block)
                expected.update(block)
        self.addCleanup(os.remove, path)
        self.assertEqual(os.path.getsize(path), BIG)

        warm = await self.client.post(proxy.url + "/upload", data=b"x" * MB, timeout=30)
        await warm.content()

        monitor = RSSMonitor(self, proxy.pid)
        monitor.start()
        with open(path, "rb") as body:
            response = await self.client.post(
                proxy.url + "/upload", data=FileBodyProducer(body), timeout=60
            )
            result = json.loads(await response.content())
        monitor.stop()
        report = monitor.report("upload")
        self.assertEqual(response.code, 200, result)
        self.assertEqual(result, {"length": BIG, "sha256": expected.hexdigest()})
        self.assertLessEqual(monitor.growth, RSS_LIMIT, report)

    async def test_slow_client_back_pressure(self) -> None:
        """
        A client that stops reading a 100 MB response for a few seconds does
        not make the proxy buffer it: RSS grows by no more than 20 MB, and
        once the client reads again every byte arrives.
        """
        _, proxy = await self.start()
        warm = await self.client.get(proxy.url + f"/bytes?n={5 * MB}", timeout=30)
        await treq.collect(warm, BodyDigest())

        monitor = RSSMonitor(self, proxy.pid)
        monitor.start()
        client = await raw_connect(self, proxy.port, StreamingClient())
        client.transport.write(
            f"GET /bytes?n={BIG} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            .encode("ascii")
        )
        await procs.poll(lambda: client.head is not None, 10, what="the response head")
        client.transport.pauseProducing()
        paused_at = client.body_length
        await procs.sleep(3.0)
        self.assertLess(client.body_length - paused_at, 10 * MB)
        stalled_peak = monitor.peak
        client.transport.resumeProducing()
        await client.wait_closed(60)
        monitor.stop()
        report = monitor.report("slow client")
        status, headers, _ = parse_head(bytes(client.received))
        self.assertEqual(status, 200)
        self.assertLessEqual(stalled_peak - monitor.baseline, RSS_LIMIT, report)
        self.assertLessEqual(monitor.growth, RSS_LIMIT, report)
        self.assertEqual(client.body_length, BIG)
        self.assertEqual(client.sha256.hexdigest(), bytes_sha256(BIG))


    async def test_timeout_does_not_cut_a_slow_body(self) -> None:
        """
        The route timeout covers the wait for the response head only: a body
        that takes longer than it (the client pauses) still arrives whole.
        """
        _, proxy = await self.start(
            lambda url: procs.route_config(url, timeout="1s", max_body_size="200MB")
        )
        n = 20 * MB
        client = await raw_connect(self, proxy.port, StreamingClient())
        client.transport.write(
            f"GET /bytes?n={n} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            .encode("ascii")
        )
        await procs.poll(lambda: client.head is not None, 10, what="the response head")
        client.transport.pauseProducing()
        await procs.sleep(1.5)
        client.transport.resumeProducing()
        await client.wait_closed(30)
        status, _, _ = parse_head(bytes(client.received))
        self.assertEqual(status, 200)
        self.assertEqual(client.body_length, n)
        self.assertEqual(client.sha256.hexdigest(), bytes_sha256(n))

    async def test_client_disconnect_mid_body_closes_upstream_request(self) -> None:
        """
        A client that goes away in the middle of a 100 MB response makes the
        proxy close the upstream request instead of reading it to the end.
        """
        upstream, proxy = await self.start()
        token = uuid.uuid4().hex
        client = await raw_connect(self, proxy.port, StreamingClient())
        client.transport.write(
            f"GET /bytes?n={BIG}&id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            .encode("ascii")
        )
        await procs.poll(lambda: client.body_length >= MB, 10, what="the first megabyte")
        client.transport.abortConnection()

        async def closed() -> Optional[Dict[str, Any]]:
            for event in await upstream_events(self.client, upstream):
                if token in event["uri"] and (event["closed"] or event["finished"]):
                    return event
            return None

        event = await procs.poll_async(closed, 5, what="the upstream request to end")
        self.assertFalse(event["finished"], "the upstream sent all 100 MB")
        self.assertIsNotNone(event["closed"])


# -- upstream failures -----------------------------------------------------------


class UpstreamFailureTests(ProxyTestCase):
    """An upstream that cannot be reached, is slow, or breaks off."""

    async def _refused(self) -> procs.Proxy:
        upstream = f"http://127.0.0.1:{procs.refused_port()}"
        config = procs.config_text(procs.route_config(upstream, timeout="5s"))
        self.client = http_client(self)
        return await procs.start_proxy(self, config)

    async def test_refused_upstream_502_html(self) -> None:
        """A refused upstream connection is a 502 HTML page, within 2 seconds."""
        proxy = await self._refused()
        started = time.monotonic()
        response = await self.client.get(proxy.url + "/x", timeout=10)
        body = await response.content()
        elapsed = time.monotonic() - started
        self.assertEqual(response.code, 502)
        self.assertLess(elapsed, 2.0)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
        )
        self.assertIn(b"502", body)
        self.assertIn(b"<html", body.lower())

    async def test_refused_upstream_502_json(self) -> None:
        """With Accept: application/json the 502 is a JSON object with an "error" key."""
        proxy = await self._refused()
        response = await self.client.get(
            proxy.url + "/x", headers={"Accept": "application/json"}, timeout=10
        )
        body = json.loads(await response.content())
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIn("error", body)

    async def test_upstream_timeout_504(self) -> None:
        """
        An upstream that does not answer within the route's 1 s timeout gives
        504 after about a second, and another route to the same upstream
        answers meanwhile.
        """
        def routes(url: str) -> str:
            return (procs.route_config(url, "/hang", timeout="1s")
                    + procs.route_config(url, "/", timeout="5s"))

        _, proxy = await self.start(routes)
        started = time.monotonic()
        hanging = self.client.get(proxy.url + "/hang", timeout=10)
        await procs.sleep(0.2)
        other, echo = await get_json(self.client, proxy.url + "/echo")
        other_elapsed = time.monotonic() - started
        self.assertEqual(other.code, 200)
        self.assertEqual(echo["uri"], "/echo")
        self.assertLess(other_elapsed, 0.9)
        response = await hanging
        await response.content()
        elapsed = time.monotonic() - started
        self.assertEqual(response.code, 504)
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLessEqual(elapsed, 3.0)

    async def test_client_disconnect_closes_upstream_request(self) -> None:
        """A client that goes away mid-request makes the proxy close its upstream request."""
        upstream, proxy = await self.start()
        token = uuid.uuid4().hex
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            f"GET /hang?id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")
        )

        async def record() -> Optional[Dict[str, Any]]:
            for event in await upstream_events(self.client, upstream):
                if token in event["uri"]:
                    return event
            return None

        arrived = await procs.poll_async(record, 10, what="the request to reach the upstream")
        self.assertIsNone(arrived["closed"])
        client.transport.loseConnection()

        async def closed() -> Optional[Dict[str, Any]]:
            event = await record()
            return event if event is not None and event["closed"] is not None else None

        event = await procs.poll_async(closed, 5, what="the upstream to see its request closed")
        self.assertFalse(event["finished"])

    async def _abort_mid_body(self, target: str) -> None:
        _, proxy = await self.start()
        failed: Optional[Failure] = None
        body = b""
        code = None
        try:
            response = await self.client.get(proxy.url + target, timeout=10)
            code = response.code
            body = await response.content()
        except (ResponseFailed, ResponseNeverReceived) as e:
            failed = Failure(e)
        if failed is None:
            self.assertEqual(code, 502, f"a clean {code} response of {len(body)} bytes")
        response, echo = await get_json(self.client, proxy.url + "/echo")
        self.assertEqual(response.code, 200)
        self.assertEqual(echo["uri"], "/echo")

    async def test_upstream_abort_mid_body_fails_client_response(self) -> None:
        """
        An upstream that aborts its connection mid-body (Content-Length
        promised) makes the client's response fail, not end as a clean short
        body; the proxy goes on serving.
        """
        await self._abort_mid_body("/abort-mid-body")

    async def test_upstream_abort_mid_chunked_body_fails_client_response(self) -> None:
        """
        An upstream that aborts its connection in the middle of a chunked
        body makes the client's response fail: the proxy must not end it with
        the last chunk as if it were whole. The proxy goes on serving.
        """
        await self._abort_mid_body("/abort-mid-body?chunked=1")


# -- bodies and their absence ----------------------------------------------------


class BodylessResponseTests(ProxyTestCase):
    """Responses that must not have a body, checked on the wire."""

    async def _raw(self, proxy: procs.Proxy, request_line: bytes) -> Tuple[int, Any, bytes]:
        raw = await raw_request(
            self, proxy.port, request_line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        return parse_head(raw)

    async def test_head_has_no_body_and_keeps_length(self) -> None:
        """A HEAD of /bytes?n=1000 keeps Content-Length: 1000 and sends no body."""
        _, proxy = await self.start()
        status, headers, rest = await self._raw(proxy, b"HEAD /bytes?n=1000 HTTP/1.1")
        self.assertEqual(status, 200)
        self.assertEqual(raw_header(headers, b"content-length"), [b"1000"])
        self.assertEqual(rest, b"")

    async def test_204_has_no_body(self) -> None:
        """A 204 from the upstream reaches the client with no body (not even a chunk)."""
        _, proxy = await self.start()
        status, headers, rest = await self._raw(proxy, b"GET /status?code=204 HTTP/1.1")
        self.assertEqual(status, 204)
        self.assertEqual(raw_header(headers, b"transfer-encoding"), [])
        self.assertEqual(rest, b"")

    async def test_304_has_no_body(self) -> None:
        """A 304 from the upstream reaches the client with no body (not even a chunk)."""
        _, proxy = await self.start()
        status, headers, rest = await self._raw(proxy, b"GET /status?code=304 HTTP/1.1")
        self.assertEqual(status, 304)
        self.assertEqual(raw_header(headers, b"transfer-encoding"), [])
        self.assertEqual(rest, b"")


class BodyLimitTests(ProxyTestCase):
    """A body over the route's max_body_size is refused before it goes upstream."""

    def _routes(self, url: str) -> str:
        return (procs.route_config(url, "/upload", max_body_size="1KB", timeout="5s")
                + procs.route_config(url, "/", timeout="5s"))

    async def _not_seen(self, upstream: procs.Upstream, token: str) -> None:
        # Give a wrongly forwarded request time to arrive before looking.
        await procs.sleep(0.5)
        seen = [e for e in await upstream_events(self.client, upstream) if token in e["uri"]]
        self.assertEqual(seen, [])

    async def test_body_within_limit_is_forwarded(self) -> None:
        """A body under the limit is forwarded whole (the control for the tests below)."""
        upstream, proxy = await self.start(self._routes)
        token = uuid.uuid4().hex
        raw = await raw_request(self, proxy.port, (
            f"POST /upload?id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 500\r\nConnection: close\r\n\r\n".encode("ascii") + b"y" * 500
        ))
        status, _, body = parse_head(raw)
        self.assertEqual(status, 200, raw[:500])
        self.assertEqual(json.loads(body)["length"], 500)
        seen = [e for e in await upstream_events(self.client, upstream) if token in e["uri"]]
        self.assertEqual(len(seen), 1)

    async def test_content_length_over_limit_413(self) -> None:
        """A Content-Length over the limit gets 413 and nothing reaches the upstream."""
        upstream, proxy = await self.start(self._routes)
        token = uuid.uuid4().hex
        raw = await raw_request(self, proxy.port, (
            f"POST /upload?id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 5000\r\nConnection: close\r\n\r\n".encode("ascii") + b"y" * 5000
        ))
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:300])
        await self._not_seen(upstream, token)

    async def test_chunked_body_over_limit_413(self) -> None:
        """A chunked body that grows over the limit gets 413 and nothing reaches the upstream."""
        upstream, proxy = await self.start(self._routes)
        token = uuid.uuid4().hex
        chunks = b"".join(b"3e8\r\n" + b"z" * 1000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        raw = await raw_request(self, proxy.port, (
            f"POST /upload?id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode("ascii") + chunks
        ))
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:300])
        await self._not_seen(upstream, token)

    async def test_expect_continue_over_limit_413_without_100(self) -> None:
        """
        With Expect: 100-continue and a Content-Length over the limit, the
        first and only answer is 413: no 100 Continue invites the body.
        """
        upstream, proxy = await self.start(self._routes)
        token = uuid.uuid4().hex
        client = await raw_connect(self, proxy.port)
        client.transport.write((
            f"POST /upload?id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        ).encode("ascii"))
        raw = await client.wait_for(lambda data: b"\r\n\r\n" in data, 5)
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:300])
        self.assertNotIn(b" 100 ", raw)
        await self._not_seen(upstream, token)


# -- request targets -------------------------------------------------------------


class RequestTargetTests(ProxyTestCase):
    """Ambiguous paths are refused; dot segments are resolved before forwarding."""

    async def _status(self, proxy: procs.Proxy, target: bytes) -> Tuple[int, bytes]:
        raw = await raw_request(self, proxy.port, (
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ))
        status, _, body = parse_head(raw)
        return status, body

    async def test_encoded_dot_segments_above_root_400(self) -> None:
        """/a/%2e%2e/%2e%2e/etc climbs above the root: 400, and nothing goes upstream."""
        upstream, proxy = await self.start()
        status, _ = await self._status(proxy, b"/a/%2e%2e/%2e%2e/etc")
        self.assertEqual(status, 400)
        self.assertEqual(await upstream_events(self.client, upstream), [])

    async def test_encoded_slash_400(self) -> None:
        """/a%2Fb (an encoded slash) is ambiguous: 400, and nothing goes upstream."""
        upstream, proxy = await self.start()
        status, _ = await self._status(proxy, b"/a%2Fb")
        self.assertEqual(status, 400)
        self.assertEqual(await upstream_events(self.client, upstream), [])

    async def test_dot_segments_resolved(self) -> None:
        """/x/../echo goes upstream as /echo."""
        _, proxy = await self.start()
        status, body = await self._status(proxy, b"/x/../echo")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["uri"], "/echo")


# -- the access log --------------------------------------------------------------


class AccessLogTests(ProxyTestCase):
    """The access log (twistd -n logs to stdout): a line per request, no secrets."""

    def _access_lines(self, proxy: procs.Proxy) -> List[str]:
        return [line for line in proxy.log().splitlines() if "oidcproxy.access" in line]

    async def test_one_line_per_request(self) -> None:
        """Each request gets one access-log line with method, path, status and route."""
        _, proxy = await self.start()
        response = await self.client.get(proxy.url + "/echo/one", timeout=10)
        await response.content()
        response = await self.client.get(proxy.url + "/status?code=204", timeout=10)
        await response.content()
        await procs.poll(lambda: len(self._access_lines(proxy)) >= 2, 5,
                         what="two access-log lines")
        await procs.sleep(0.3)
        lines = self._access_lines(proxy)
        self.assertEqual(len(lines), 2, "\n".join(lines))
        self.assertIn('"GET /echo/one" 200 ', lines[0])
        self.assertIn('"GET /status" 204 ', lines[1])
        for line in lines:
            self.assertIn("route=routes[0]", line)

    async def test_no_query_cookie_or_authorization_logged(self) -> None:
        """The log never holds the query string, nor a Cookie or Authorization value."""
        _, proxy = await self.start()
        response = await self.client.get(
            proxy.url + "/echo?code=SECRET123&state=SECRET456",
            headers={"Cookie": "session=COOKIESECRET789",
                     "Authorization": "Bearer AUTHSECRET012"},
            timeout=10,
        )
        await response.content()
        await procs.poll(lambda: self._access_lines(proxy), 5, what="an access-log line")
        await procs.sleep(0.3)
        lines = self._access_lines(proxy)
        self.assertEqual(len(lines), 1, "\n".join(lines))
        self.assertIn('"GET /echo" 200 ', lines[0])
        text = proxy.log()
        for secret in ("SECRET123", "SECRET456", "COOKIESECRET789", "AUTHSECRET012"):
            self.assertNotIn(secret, text)


    async def test_client_disconnect_logged_once(self) -> None:
        """A request whose client went away gets one line, with status 499."""
        upstream, proxy = await self.start()
        token = uuid.uuid4().hex
        client = await raw_connect(self, proxy.port)
        client.transport.write(
            f"GET /hang?id={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")
        )

        async def arrived() -> bool:
            return any(token in e["uri"] for e in await upstream_events(self.client, upstream))

        await procs.poll_async(arrived, 10, what="the request to reach the upstream")
        client.transport.loseConnection()
        await procs.poll(lambda: self._access_lines(proxy), 5, what="an access-log line")
        await procs.sleep(0.5)
        lines = self._access_lines(proxy)
        self.assertEqual(len(lines), 1, "\n".join(lines))
        self.assertIn('"GET /hang" 499 ', lines[0])
        self.assertNotIn(token, proxy.log())

    async def test_refused_body_logged_with_method_path_status_route(self) -> None:
        """
        A request refused with 413 before its body is read still gets its
        access-log line with method, path, status and route.
        """
        _, proxy = await self.start(
            lambda url: procs.route_config(url, "/upload", max_body_size="1KB")
        )
        raw = await raw_request(self, proxy.port, (
            b"POST /upload?code=SECRET123 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 5000\r\nConnection: close\r\n\r\n" + b"y" * 5000
        ))
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:300])
        await procs.poll(lambda: self._access_lines(proxy), 5, what="an access-log line")
        await procs.sleep(0.3)
        lines = self._access_lines(proxy)
        self.assertEqual(len(lines), 1, "\n".join(lines))
        self.assertNotIn("SECRET123", proxy.log())
        self.assertIn("413", lines[0])
        self.assertIn('"POST /upload"', lines[0])
        self.assertIn("route=routes[0]", lines[0])


# -- the process -----------------------------------------------------------------


class LifecycleTests(ProxyTestCase):
    """The proxy process itself."""

    async def _sigterm(self) -> Tuple[procs.Proxy, Optional[int], float]:
        _, proxy = await self.start()
        response = await self.client.get(proxy.url + "/echo", timeout=10)
        await response.content()
        started = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        code = await proxy.child.wait(5)
        return proxy, code, time.monotonic() - started

    async def test_sigterm_stops_promptly(self) -> None:
        """SIGTERM stops the proxy, cleanly shut down, within a few seconds."""
        proxy, code, elapsed = await self._sigterm()
        self.assertIsNotNone(code, "still running 5 s after SIGTERM")
        self.assertLess(elapsed, 5)
        self.assertIn("Server Shut Down", proxy.log())
        self.assertNotIn("Traceback", proxy.log())

    async def test_sigterm_exit_status(self) -> None:
        """
        After a clean shutdown on SIGTERM, twistd re-raises the signal, so the
        process ends "killed by SIGTERM" — what systemd and other supervisors
        count as a clean stop — and never with an error status.
        """
        proxy, code, _ = await self._sigterm()
        self.assertEqual(code, -signal.SIGTERM, proxy.child.describe())
