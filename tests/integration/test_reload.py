"""
Reloading the configuration of the real process on SIGHUP: new routes apply,
open client connections stay.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Optional

from tests.integration import procs
from tests.integration.test_proxy_process import ProxyTestCase, raw_connect, read_response


class ReloadTests(ProxyTestCase):
    async def test_sighup_applies_new_route_keeps_connections(self) -> None:
        """
        After SIGHUP a route added to the file answers, and a keep-alive
        client connection opened before still serves requests.
        """
        upstream, proxy = await self.start()
        client = await raw_connect(self, proxy.port)
        client.transport.write(b"GET /echo?i=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, body = await read_response(client)
        self.assertEqual((status, json.loads(body)["uri"]), (200, "/echo?i=0"))
        response = await self.client.get(proxy.url + "/v2/x")
        self.assertEqual(response.code, 404)  # the upstream's: no /v2 endpoint
        await response.content()

        with open(proxy.config_path, "w", encoding="utf-8") as f:
            f.write(procs.config_text(
                procs.route_config(upstream.url + "/echo", "/v2")
                + procs.route_config(upstream.url, timeout="5s")))
        os.kill(proxy.pid, signal.SIGHUP)
        await procs.poll(lambda: "configuration reloaded" in proxy.log() or None, 10,
                         what="the reload")

        response = await self.client.get(proxy.url + "/v2/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await response.content())["uri"], "/echo/v2/x")

        client.received = bytearray()
        client.transport.write(b"GET /echo?i=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, body = await read_response(client)
        self.assertEqual((status, json.loads(body)["uri"]), (200, "/echo?i=1"))
        self.assertFalse(client.closed)

    async def test_sighup_invalid_file_kept(self) -> None:
        """An invalid file on SIGHUP: its problems are logged, the proxy serves on."""
        _, proxy = await self.start()
        with open(proxy.config_path, "a", encoding="utf-8") as f:
            f.write('bogus = 1\n')
        os.kill(proxy.pid, signal.SIGHUP)

        def logged() -> Optional[bool]:
            return "config: routes[0].bogus: unknown key" in proxy.log() or None

        await procs.poll(logged, 10, what="the reload's error")
        response = await self.client.get(proxy.url + "/echo")
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertNotIn("configuration reloaded", proxy.log())
