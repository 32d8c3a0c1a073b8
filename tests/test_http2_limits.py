"""
Tests for the limits HTTP/2 brings (L{oidcproxy.web.http2}): concurrent
streams, the header-list size, and the denial-of-service classes of HTTP/2
(rapid reset, CVE-2023-44487; CONTINUATION floods, CVE-2024-27316), driven
in memory as in C{tests/test_http2.py}. The floods are sent as raw frames
(the h2 client would not send them), with an HPACK encoder of their own:
the h2 client sends no header block before them, so the server's decoder
and this encoder agree.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import h2.errors
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame, RstStreamFrame
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import parse_config
from oidcproxy.core.metrics import Metrics
from oidcproxy.service import build_site
from oidcproxy.web.http2 import ProxyH2Connection
from tests.test_http2 import H2Harness
from tests.test_server import sample

MAX_HEADERS = 4096
"""The site's header limit in these tests (the proxy's is 16 KiB plus room for its cookies)."""


def fields(path: bytes, extra: Tuple[Tuple[bytes, bytes], ...] = ()) -> List[Tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":path", path), (b":authority", b"app.test"),
            (b":scheme", b"https"), *extra]


class RawClient:
    """Frames the h2 client would not send, written straight to the server."""

    def __init__(self, harness: H2Harness) -> None:
        self.h = harness
        self.encoder = hpack.Encoder()
        harness.pump()

    def send(self, *frames: Any) -> None:
        self.h.server.dataReceived(b"".join(frame.serialize() for frame in frames))

    def headers(self, stream: int, path: bytes, end_headers: bool = True) -> HeadersFrame:
        frame = HeadersFrame(stream)
        frame.data = self.encoder.encode(fields(path))
        frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    def reset(self, stream: int) -> RstStreamFrame:
        frame = RstStreamFrame(stream)
        frame.error_code = h2.errors.ErrorCodes.CANCEL
        return frame


class ConcurrentStreamTests(SynchronousTestCase):
    """http2_max_concurrent_streams: advertised, and enforced."""

    def test_advertised(self) -> None:
        """The client learns the site's stream and header-list limits from the server's SETTINGS."""
        h = H2Harness(self, max_header_size=MAX_HEADERS, http2_max_streams=7)
        settings = h.client.remote_settings
        self.assertEqual((settings.max_concurrent_streams, settings.max_header_list_size),
                         (7, MAX_HEADERS))

    def test_default_and_config(self) -> None:
        """The key defaults to 100 (as Apache's and h2's); the site gets what it says."""
        base = {"routes": [{"path": "/", "auth": "none", "upstream": "http://up.test"}]}
        self.assertEqual(parse_config(base, "t.toml").http2_max_concurrent_streams, 100)
        config = parse_config({**base, "http2_max_concurrent_streams": 128}, "t.toml")
        self.assertEqual(config.http2_max_concurrent_streams, 128)
        self.assertEqual(build_site(config, H2Harness(self).clock).http2_max_streams, 128)
        with self.assertRaises(Exception) as raised:
            parse_config({**base, "http2_max_concurrent_streams": 0}, "t.toml")
        self.assertIn("http2_max_concurrent_streams", str(raised.exception))

    def test_as_many_as_allowed(self) -> None:
        """Up to the limit, requests wait side by side on one connection."""
        h = H2Harness(self, http2_max_streams=3)
        for _ in range(3):
            h.request(b"GET", b"/hang")
        self.assertEqual(len(h.resource.waiting), 3)
        self.assertFalse(h.transport.disconnecting)

    def test_one_more_closes(self) -> None:
        """A client opening one stream past the limit loses the connection (PROTOCOL_ERROR)."""
        h = H2Harness(self, http2_max_streams=3)
        raw = RawClient(h)
        raw.send(*(raw.headers(stream, b"/hang") for stream in (1, 3, 5)))
        self.assertEqual(len(h.resource.waiting), 3)
        self.assertFalse(h.transport.disconnecting)
        raw.send(raw.headers(7, b"/hang"))
        h.pump()
        self.assertEqual(len(h.resource.waiting), 3)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.goaway, h2.errors.ErrorCodes.PROTOCOL_ERROR)


class HeaderListTests(SynchronousTestCase):
    """The site's header limit (max_header_size, as for HTTP/1.1) over HTTP/2."""

    def test_within_the_limit(self) -> None:
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        stream = h.request(b"GET", b"/down?n=1", headers=((b"cookie", b"c" * 3000),))
        self.assertEqual(h.answers[stream].status, 200)

    def test_over_the_limit_answered_431_on_its_stream(self) -> None:
        """
        Over the limit: 431 on that stream, logged and counted; the
        connection goes on (HPACK decoded the block, so its state is whole).
        """
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        stream = h.request(b"GET", b"/down?n=1", headers=((b"cookie", b"c" * 5000),))
        answer = h.answers[stream]
        self.assertEqual((answer.status, answer.ended), (431, True))
        self.assertIn(b"larger than 4096 bytes", answer.body)
        self.assertEqual([(e["path"], e["status"]) for e in h.access()], [("/down", 431)])
        self.assertEqual(sample(h.metrics, "oidcproxy_requests_total", route="-", status="431"), 1)
        self.assertFalse(h.transport.disconnecting)
        again = h.request(b"GET", b"/down?n=2")
        self.assertEqual(h.answers[again].body, b"dd")
        self.assertEqual(h.errors(), [])

    def test_over_the_limit_page_headers(self) -> None:
        """The 431 page of a browser carries the pages' headers (CSP, no framing); JSON none."""
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        page = h.answers[h.request(b"GET", b"/down?n=1", headers=(
            (b"accept", b"text/html"), (b"cookie", b"c" * 5000)))]
        self.assertEqual(page.status, 431)
        self.assertIn(b"default-src 'none'", page.headers[b"content-security-policy"])
        self.assertEqual(page.headers[b"x-frame-options"], b"DENY")
        api = h.answers[h.request(b"GET", b"/down?n=1", headers=(
            (b"accept", b"application/json"), (b"cookie", b"c" * 5000)))]
        self.assertEqual(api.status, 431)
        self.assertNotIn(b"content-security-policy", api.headers)

    def test_over_the_limit_with_a_body(self) -> None:
        """A POST over the limit never reaches the site; its stream is reset once answered."""
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        stream = h.request(b"POST", b"/up", headers=((b"x-big", b"b" * 5000),), end=False)
        self.assertEqual(h.answers[stream].status, 431)
        self.assertEqual(h.answers[stream].reset, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(h.resource.bodies, [])

    def test_counts_as_rfc_9113(self) -> None:
        """Each field counts its name, its value and 32 (pseudo-headers too)."""
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        base = sum(len(n) + len(v) + 32 for n, v in fields(b"/down?n=1"))
        fits = MAX_HEADERS - base - 32 - len(b"x-pad")
        ok = h.request(b"GET", b"/down?n=1", headers=((b"x-pad", b"p" * fits),))
        over = h.request(b"GET", b"/down?n=1", headers=((b"x-pad", b"p" * (fits + 1)),))
        self.assertEqual((h.answers[ok].status, h.answers[over].status), (200, 431))

    def test_past_twice_the_limit_closes(self) -> None:
        """A header list over twice the limit is not decoded: the connection is closed."""
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        h.request(b"GET", b"/down?n=1", headers=((b"cookie", b"c" * (2 * MAX_HEADERS + 1)),))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def test_proxy_site_uses_its_header_size(self) -> None:
        """The proxy's site advertises its own header limit (16 KiB plus its cookies' room)."""
        config = parse_config({"routes": [
            {"path": "/", "auth": "none", "upstream": "http://up.test"}]}, "t.toml")
        h = H2Harness(self)
        site = build_site(config, h.clock)
        h.site.max_header_size = site.max_header_size
        transport, server = h.connect()
        self.assertIsInstance(server, ProxyH2Connection)
        self.assertEqual(server.conn.local_settings.max_header_list_size, site.max_header_size)
        self.assertGreater(site.max_header_size, 16384)


class RapidResetTests(SynchronousTestCase):
    """CVE-2023-44487: streams opened and reset at once, as fast as the client can."""

    def flood(self, h: H2Harness, count: int, batch: int = 50) -> int:
        """HEADERS + RST_STREAM pairs (by C{batch} per write); how many were written before the close."""
        raw = RawClient(h)
        sent = 0
        while sent < count and not h.transport.disconnecting:
            pairs = []
            for _ in range(batch):
                stream = 2 * sent + 1
                pairs += [raw.headers(stream, b"/hang"), raw.reset(stream)]
                sent += 1
            raw.send(*pairs)
        h.pump()
        return sent

    def test_flood_cut_off(self) -> None:
        """
        A flood is cut off (GOAWAY ENHANCE_YOUR_CALM) after twice the
        stream limit: the site started at most that many requests (Twisted's
        own burst is 1,000; Twisted 25 has none), each of them cancelled.
        """
        h = H2Harness(self, http2_max_streams=100)
        started = time.perf_counter()
        sent = self.flood(h, 100000)
        elapsed = time.perf_counter() - started
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertLessEqual(len(h.resource.waiting), 201)
        self.assertGreaterEqual(len(h.resource.waiting), 200)
        self.assertEqual(len(h.resource.gone), len(h.resource.waiting))
        self.assertLessEqual(sent, 250)
        self.assertLess(elapsed, 5)

    def test_other_connections_unharmed(self) -> None:
        """The flooding connection goes; another client's connection is served."""
        h = H2Harness(self, http2_max_streams=10)
        other = H2Harness(self, http2_max_streams=10)
        self.flood(h, 1000)
        self.assertTrue(h.transport.disconnecting)
        stream = other.request(b"GET", b"/down?n=3")
        self.assertEqual(other.answers[stream].body, b"ddd")

    def test_resets_at_a_steady_rate(self) -> None:
        """A browser cancelling streams now and then (here 20 a second for a minute) is not cut off."""
        h = H2Harness(self, http2_max_streams=10)
        for _ in range(60):
            for _ in range(20):
                stream = h.request(b"GET", b"/hang")
                h.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                h.pump()
            h.clock.advance(1)
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(len(h.resource.gone), 1200)


class ContinuationFloodTests(SynchronousTestCase):
    """CVE-2024-27316 class: a header block that never ends (CONTINUATION after CONTINUATION)."""

    def test_flood_cut_off(self) -> None:
        """
        The connection is closed once the open header block passes twice the
        header limit: a few frames, not the MiB (64 frames) h2 alone holds.
        """
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        raw = RawClient(h)
        raw.send(raw.headers(1, b"/hang", end_headers=False))
        accepted = 0
        started = time.perf_counter()
        while not h.transport.disconnecting and accepted < 10 * 2 ** 20:
            frame = ContinuationFrame(1)
            frame.data = b"\x00" * 1000
            raw.send(frame)
            accepted += len(frame.data)
        elapsed = time.perf_counter() - started
        h.pump()
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertLessEqual(accepted, 2 * MAX_HEADERS + 1000)
        self.assertEqual(h.resource.waiting, [])
        self.assertLess(elapsed, 1)

    def test_empty_frames_cut_off(self) -> None:
        """Empty CONTINUATION frames cost no bytes but count: h2 closes after 64 of them."""
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        raw = RawClient(h)
        raw.send(raw.headers(1, b"/hang", end_headers=False))
        frames = 0
        while not h.transport.disconnecting and frames < 100000:
            raw.send(ContinuationFrame(1))
            frames += 1
        self.assertLessEqual(frames, 65)
        self.assertTrue(h.transport.disconnecting)

    def test_within_the_limit(self) -> None:
        """A header block split into CONTINUATION frames, within the limit, is a request."""
        h = H2Harness(self, max_header_size=MAX_HEADERS)
        raw = RawClient(h)
        first = raw.headers(1, b"/down?n=4", end_headers=False)
        block, first.data = first.data, first.data[:5]
        rest = ContinuationFrame(1)
        rest.data = block[5:]
        rest.flags.add("END_HEADERS")
        raw.send(first, rest)
        h.clock.step()
        self.assertEqual([(e["path"], e["status"], e["bytes"]) for e in h.access()],
                         [("/down", 200, 4)])


class MetricsUnchanged(SynchronousTestCase):
    """The settings reach h2 itself (not only the SETTINGS frame)."""

    def test_local_settings(self) -> None:
        h = H2Harness(self, metrics=Metrics(), max_header_size=MAX_HEADERS, http2_max_streams=9)
        local = h.server.conn.local_settings
        self.assertEqual((local.max_concurrent_streams, local.max_header_list_size),
                         (9, MAX_HEADERS))
        self.assertEqual(h.server.conn.decoder.max_header_list_size, 2 * MAX_HEADERS)
        self.assertEqual(h.server._reset_burst, 18)
        self.assertIsInstance(h.server.conn.local_settings, h2.settings.Settings)
