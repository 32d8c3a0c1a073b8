"""
Headless Chromium logs in over HTTP/2: the real proxy process on an C{ssl:}
listener (certificates from L{tests.pki}), with its sessions in a real
redis-server or in the cookie, in front of the real upstream app, at the real OP of
L{tests.integration.test_login_interop} (C{oidc-provider}).

Chromium is told to accept the test server's certificate by its public key
(C{--ignore-certificate-errors-spki-list}: only that key, not every
certificate error). That the pages came over HTTP/2 is checked twice: by the
browser (the Navigation Timing entry's C{nextHopProtocol}) and by the
proxy's access log (C{proto=HTTP/2} on the login's requests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.redis_server import start_redis
from tests.integration.stack import ALICE, NAVIGATE, PROTECTED, proxy_config, require_op, start_op
from tests.integration.test_http2 import H2Client
from tests.integration.test_login_interop import Browser, header_values, require_chromium
from tests.integration.test_tls import endpoint_path
from tests.pki import make_pki


def spki_hash(cert_path: str) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium's SPKI lists take it."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificates(f.read())[0]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def redis_keys(port: int) -> int:
    """How many keys the redis-server on C{port} holds (DBSIZE)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"DBSIZE\r\n")
        answer = s.recv(64)
    assert answer.startswith(b":"), answer
    return int(answer[1:].strip())


class LoginOverHTTP2Tests(TestCase):
    timeout = 120

    async def test_login_in_chromium_over_h2(self) -> None:
        """
        Chromium asks for a protected page over HTTPS, is sent to the OP,
        logs in as alice and comes back through the callback to the page,
        with alice's identity at the upstream: all of it over h2, the
        session kept in Redis.
        """
        redis = await start_redis(self)
        await self.log_in_over_h2(session={"store": "redis"}, redis={"url": redis.url})
        # The session is in Redis (the cookie holds only its id).
        self.assertGreaterEqual(await deferToThread(redis_keys, redis.port), 1)

    async def test_login_with_cookie_sessions_over_h2(self) -> None:
        """
        The same login over h2 with the default store: the whole session in
        the (encrypted, possibly chunked) cookie the browser sends back over
        h2, where cookies may come in several header fields.
        """
        await self.log_in_over_h2()

    async def log_in_over_h2(self, **settings: Any) -> None:
        """
        Log alice in with Chromium over h2 to a proxy configured with
        C{settings} (tables of L{proxy_config}); check the page, the
        protocol the browser and the access log saw, and no traceback.
        """
        require_chromium()
        require_op()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pki = make_pki(directory)
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        base = f"https://127.0.0.1:{port}"
        op = await start_op(self, [f"{base}/oidc/callback"], [f"{base}/"])
        upstream = await procs.start_upstream(self)
        listen = (f"ssl:{port}:interface=127.0.0.1"
                  f":privateKey={endpoint_path(pki['server_chained_key'])}"
                  f":certKey={endpoint_path(pki['server_chained'])}"
                  f":extraCertChain={endpoint_path(pki['intermediate'])}")
        config = proxy_config(port, op, upstream, public_url=base, **settings)
        config = config.replace(f'listen = ["tcp:{port}:interface=127.0.0.1"]',
                                f"listen = [{json.dumps(listen)}]")
        proxy = await self.start_proxy(reserved, config, pki["ca"])

        browser = await Browser.start(self, extra_args=[
            f"--ignore-certificate-errors-spki-list={spki_hash(pki['server_chained'])}"])
        await browser.get(base + PROTECTED)
        await browser.log_in_at_op(op, "alice")
        echo = await browser.json_page(base + PROTECTED)
        self.assertEqual(header_values(echo, "x-forwarded-user"), [ALICE["login"]])
        self.assertEqual(header_values(echo, "x-forwarded-email"), [ALICE["email"]])

        protocol = await deferToThread(browser.driver.execute_script,
                                       "return performance.getEntriesByType('navigation')[0]"
                                       ".nextHopProtocol")
        self.assertEqual(protocol, "h2")
        log = proxy.stdout() + proxy.stderr()
        for request in ('"GET /oidc/callback" 302', f'"GET {PROTECTED.split("?")[0]}" 200'):
            lines = [line for line in log.splitlines() if request in line]
            self.assertTrue(lines, f"{request} not in the access log:\n{log}")
            self.assertTrue(all(line.endswith("proto=HTTP/2") for line in lines), lines)
        self.assertNotIn("proto=HTTP/1.1", log)
        self.assertNotIn("Traceback", log)

    async def start_proxy(self, reserved: socket.socket, config: str, ca: str) -> procs.Child:
        """Start the proxy on the reserved port; wait until a login starts with a redirect."""
        port = reserved.getsockname()[1]
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config_path = os.path.join(workdir, "oidcproxy.toml")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(config)
        reserved.close()
        child = procs.Child("proxy", procs.twistd_command() + [
            "-n", "--pidfile=", "oidcproxy", "--config", config_path], workdir)
        self.addCleanup(child.stop)

        def redirects() -> Optional[bool]:
            if child.process.poll() is not None:
                raise AssertionError("the proxy died at start")
            try:
                client = H2Client(port, ca)
            except OSError:
                return None
            try:
                answer = client.request("GET", "/oidc/login", [(k.lower(), v) for k, v in NAVIGATE.items()])
            finally:
                client.close()
            return True if answer.status == 302 else None

        async def ready() -> Optional[bool]:
            result: Any = await deferToThread(redirects)
            return result

        try:
            await procs.poll_async(ready, procs.START_DEADLINE, what="the proxy to redirect a login")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{child.describe()}") from None
        return child
