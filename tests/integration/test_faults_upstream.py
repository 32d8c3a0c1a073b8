"""
The upstream rows of the fault matrix: a real C{twistd oidcproxy} in front
of upstreams that reset, hang, drip, or die in the middle of a response
(L{tests.integration.faults}: the misbehaving servers, an upstream app that
can be killed and started again on its port).

Already covered in L{tests.integration.test_proxy_process}, not repeated:
a refused port (502 HTML and JSON within 2 s), the upstream app's C{/hang}
route (504 after the 1 s route timeout while another route answers), an
upstream that aborts its own connection mid-body (Content-Length and
chunked: the client's response fails), a client that goes away (the upstream
request is closed), 100 MB bodies and a slow client with bounded memory.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any, List, Optional, Tuple

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.faults import (
    Blackhole,
    Drip,
    Resetter,
    RestartableUpstream,
    concurrently,
    open_fds,
    report,
)
from tests.integration.test_proxy_process import (
    BodyDigest,
    RSSMonitor,
    StreamingClient,
    http_client,
    raw_connect,
)
from tests.integration.upstream_app import bytes_sha256

MODULE = "upstream"
MB = 1_000_000
CLIENTS = 100
DRIP_BODY = b"drip.."
"""What the dripping upstream answers, one byte a second."""
RSS_LIMIT = 20 * MB


async def get(client: HTTPClient, url: str, **kwargs: Any) -> Tuple[int, bytes, float]:
    """A GET: its status, body and how long it took."""
    started = time.monotonic()
    response = await client.get(url, timeout=30, **kwargs)
    body = await response.content()
    return response.code, body, time.monotonic() - started


class UpstreamFaultTests(TestCase):
    timeout = 90

    async def proxy(self, *routes: Tuple[str, str, str]) -> procs.Proxy:
        """A proxy with C{(path, upstream URL, timeout)} routes, none authenticated."""
        text = "".join(procs.route_config(url, path, timeout=timeout)
                       for path, url, timeout in routes)
        return await procs.start_proxy(self, procs.config_text(text))

    async def test_reset_is_502_at_once(self) -> None:
        """
        An upstream that resets the connection (RST) after reading the request
        gives 502 at once (not a 504 after the 5 s timeout, not a 500), JSON
        to an API client.
        """
        resetter = Resetter(self)
        proxy = await self.proxy(("/", resetter.url, "5s"))
        client = http_client(self)
        code, body, elapsed = await get(client, proxy.url + "/x",
                                        headers={"Accept": "application/json"})
        report(MODULE, f"reset: {code} after {elapsed:.3f}s")
        self.assertEqual(code, 502, body[:300])
        self.assertIn("error", json.loads(body))
        self.assertLess(elapsed, 1.0)
        self.assertGreaterEqual(resetter.accepted, 1)

    async def test_killed_upstream_is_502_at_once(self) -> None:
        """
        The upstream process killed (SIGKILL) while the proxy holds pooled
        connections to it: the next requests get 502 at once; once it is
        started again on its port, they get 200.
        """
        upstream = RestartableUpstream(self)
        await upstream.start()
        proxy = await self.proxy(("/", upstream.url, "5s"))
        client = http_client(self)
        # Several at once: the proxy pools several connections.
        first = await concurrently([get(client, proxy.url + "/echo") for _ in range(5)])
        self.assertEqual([code for code, _, _ in first], [200] * 5)
        await upstream.kill()
        after = await concurrently([get(client, proxy.url + "/echo") for _ in range(5)])
        codes = [code for code, _, _ in after]
        slowest = max(elapsed for _, _, elapsed in after)
        report(MODULE, f"killed upstream: {codes}, slowest {slowest:.3f}s")
        self.assertEqual(codes, [502] * 5)
        self.assertLess(slowest, 1.0)
        await upstream.start()
        code, body, _ = await get(client, proxy.url + "/echo")
        self.assertEqual(code, 200, body[:300])

    async def test_silent_upstreams_504_other_routes_unaffected(self) -> None:
        """
        An upstream that accepts and never answers, and an upstream process
        stopped with SIGSTOP: 20 requests to each get 504 after their route's
        1 s timeout (not before, not much after), while a route to a working
        upstream answers at once meanwhile.
        """
        hole = Blackhole(self)
        stopped = await procs.start_upstream(self)
        working = await procs.start_upstream(self)
        proxy = await self.proxy(("/hole", hole.url, "1s"), ("/stopped", stopped.url, "1s"),
                                 ("/", working.url, "5s"))
        os.kill(stopped.child.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, stopped.child.pid, signal.SIGCONT)
        client = http_client(self)
        silent = Deferred.fromCoroutine(concurrently(
            [get(client, proxy.url + path) for path in ["/hole"] * 20 + ["/stopped"] * 20]))
        await procs.sleep(0.2)
        others = await concurrently([get(client, proxy.url + "/echo") for _ in range(10)])
        self.assertEqual([code for code, _, _ in others], [200] * 10)
        other_slowest = max(elapsed for _, _, elapsed in others)
        self.assertLess(other_slowest, 0.7)
        results = await silent
        codes = [code for code, _, _ in results]
        times = [elapsed for _, _, elapsed in results]
        report(MODULE, f"silent upstreams: {set(codes)} in {min(times):.2f}..{max(times):.2f}s; "
                       f"other route meanwhile at most {other_slowest:.3f}s")
        self.assertEqual(codes, [504] * 40)
        self.assertGreaterEqual(min(times), 0.9)
        self.assertLess(max(times), 3.0)

    async def test_head_dripping_is_504(self) -> None:
        """
        An upstream that sends its response head one byte every 0.3 s has
        not finished it within the route's 1 s timeout: 504.
        """
        drip = Drip(self, b"never seen", interval=0.3, head_at_once=False)
        proxy = await self.proxy(("/", drip.url, "1s"))
        code, body, elapsed = await get(http_client(self), proxy.url + "/x")
        report(MODULE, f"dripped head: {code} after {elapsed:.2f}s")
        self.assertEqual(code, 504, body[:300])
        self.assertNotIn(b"never seen", body)
        self.assertLess(elapsed, 3.0)

    async def test_dripping_to_100_clients_bounded(self) -> None:
        """
        100 clients at once on an upstream that drips its body one byte a
        second: every client gets the whole body, the proxy's RSS grows by
        no more than 20 MB, its health endpoint answers within 1 s
        meanwhile, and its open file descriptors come back to their baseline.
        """
        drip = Drip(self, DRIP_BODY, interval=1.0)
        working = await procs.start_upstream(self)
        proxy = await self.proxy(("/drip", drip.url, "5s"), ("/", working.url, "5s"))
        client = http_client(self)
        for _ in range(3):  # warm up
            await get(client, proxy.url + "/echo")
        fds_before = open_fds(proxy.pid)
        monitor = RSSMonitor(self, proxy.pid)
        monitor.start()
        clients = Deferred.fromCoroutine(concurrently(
            [get(client, proxy.url + f"/drip/{i}") for i in range(CLIENTS)]))
        health: List[float] = []
        while not clients.called:
            _, _, elapsed = await get(client, proxy.url + "/oidc/health")
            health.append(elapsed)
            await procs.sleep(0.25)
        results = await clients
        monitor.stop()
        rss = monitor.report(f"{CLIENTS} dripping clients")
        await procs.sleep(0.5)
        fds_after = await procs.poll(
            lambda: (lambda n: n if n <= fds_before + 2 else None)(open_fds(proxy.pid)), 10,
            what="the proxy's file descriptors to come back")
        report(MODULE, f"drip to {CLIENTS} clients: {rss}; health at most {max(health):.3f}s "
                       f"over {len(health)} probes; fds {fds_before} -> {fds_after}")
        self.assertEqual([(code, body) for code, body, _ in results],
                         [(200, DRIP_BODY)] * CLIENTS)
        self.assertEqual(drip.accepted, CLIENTS)
        self.assertLessEqual(monitor.growth, RSS_LIMIT, rss)
        self.assertLess(max(health), 1.0)

    async def test_killed_mid_response(self) -> None:
        """
        The upstream process killed while it streams large bodies to 5
        clients: each of those responses fails (never a clean short body) and
        its keep-alive connection to the proxy is closed; after the upstream
        is started again, 100 concurrent requests each get their own answer
        (no byte of another response).
        """
        upstream = RestartableUpstream(self)
        await upstream.start()
        proxy = await self.proxy(("/", upstream.url, "5s"))
        n = 200 * MB
        streams: List[StreamingClient] = []
        for _ in range(5):
            stream = await raw_connect(self, proxy.port, StreamingClient())
            stream.transport.write(f"GET /bytes?n={n} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                   .encode("ascii"))
            streams.append(stream)
        await procs.poll(lambda: all(s.body_length >= MB for s in streams), 10,
                         what="every stream's first megabyte")
        await upstream.kill()
        for stream in streams:
            await stream.wait_closed(5)
        lengths = [s.body_length for s in streams]
        self.assertTrue(all(length < n for length in lengths), lengths)

        await upstream.start()
        client = http_client(self)
        ids = [uuid.uuid4().hex for _ in range(100)]
        answers = await concurrently([get(client, proxy.url + f"/echo?id={i}") for i in ids],
                                     limit=25)
        mixed: List[Optional[str]] = []
        for i, (code, body, _) in zip(ids, answers):
            self.assertEqual(code, 200, body[:300])
            if json.loads(body)["uri"] != f"/echo?id={i}":
                mixed.append(i)
        # The same body, whole, once more after the restart.
        digest = BodyDigest()
        response = await client.get(proxy.url + f"/bytes?n={5 * MB}", timeout=30)
        await treq.collect(response, digest)
        report(MODULE, f"killed mid-response: {len(streams)} streams cut at "
                       f"{min(lengths) / MB:.1f}..{max(lengths) / MB:.1f} MB of {n / MB:.0f} MB; "
                       f"100 requests after the restart, {len(mixed)} mixed")
        self.assertEqual(mixed, [])
        self.assertEqual((digest.length, digest.sha256.hexdigest()),
                         (5 * MB, bytes_sha256(5 * MB)))
