"""
Integration tests for TLS, with certificates made by the test (L{tests.pki}):

  - the real proxy process listening with an C{ssl:} endpoint (and
    C{extraCertChain=} for an intermediate CA), and the protocol floor it
    enforces;
  - https upstreams (a small Twisted TLS server in this process): a chain to
    the route's C{ca_bundle} is accepted; an unknown CA or a certificate for
    another name is refused with 502 and a log line naming the route, the
    upstream and the TLS problem;
  - mutual TLS: an upstream that requires a client certificate from the test
    CA accepts the proxy with C{client_cert}/C{client_key} and refuses it
    without;
  - verified TLS to the IdP: L{make_http_client} with a C{ca_bundle}, in
    process.
"""

from __future__ import annotations

import json
import os
import socket
import ssl as stdlib_ssl
import warnings
from http.cookiejar import CookieJar
from typing import Any, Dict, List, Optional, Tuple

from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
)
from twisted.web.resource import Resource

from oidcproxy.oidc.provider import ClientAuth, Provider, ProviderError, make_http_client
from tests.helpers import missing
from tests.integration import procs
from tests.pki import make_pki

VERIFY_FAILED = "TLS: certificate verify failed (unknown CA, or an expired or otherwise invalid certificate)"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def endpoint_path(path: str) -> str:
    """A file name escaped for an endpoint string (':' and '=' are syntax there)."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


# -- an https server in this process ----------------------------------------------------


class _Echo(Resource):
    """
    JSON of what arrived: the path, the client certificate's common name (or
    None), and X-Forwarded-Proto. C{/userinfo} answers like a UserInfo endpoint.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/userinfo":
            return json.dumps({"sub": "alice"}).encode()
        peer = request.channel.transport.getPeerCertificate()
        common_name = None
        if peer is not None:
            common_name = peer.get_subject().CN
        proto = request.requestHeaders.getRawHeaders(b"x-forwarded-proto", [b""])[0]
        return json.dumps({"path": request.path.decode(), "client": common_name,
                           "proto": proto.decode()}).encode()


class TLSServer:
    """A Twisted https server on 127.0.0.1 in the test's own reactor."""

    def __init__(self, port: Any, connections: WrappingFactory) -> None:
        self._port = port
        self._connections = connections
        self.port: int = port.getHost().port

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}"

    async def stop(self) -> None:
        for protocol in list(self._connections.protocols):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        await procs.poll(lambda: not self._connections.protocols, 5,
                         what="the test server's connections to close")
        await self._port.stopListening()


def start_tls_server(testcase: TestCase, files: Dict[str, str], cert: str = "server",
                     key: str = "server_key", client_ca: Optional[str] = None) -> TLSServer:
    """
    Listen with C{files[cert]}/C{files[key]}; with C{client_ca}, require a
    client certificate signed by that CA (mutual TLS).
    """
    private = ssl.PrivateCertificate.loadPEM(read(files[cert]) + read(files[key]))
    kwargs: Dict[str, Any] = {}
    if client_ca is not None:
        kwargs["trustRoot"] = ssl.Certificate.loadPEM(read(files[client_ca]))
    options = ssl.CertificateOptions(privateKey=private.privateKey.original,
                                     certificate=private.original, **kwargs)
    site = server.Site(_Echo())
    site.log = lambda request: None  # type: ignore[method-assign]
    wrapper = WrappingFactory(site)
    port = reactor.listenSSL(0, wrapper, options, interface="127.0.0.1")  # type: ignore[attr-defined]
    tls_server = TLSServer(port, wrapper)
    testcase.addCleanup(tls_server.stop)
    return tls_server


# -- clients ------------------------------------------------------------------------------


def https_client(testcase: TestCase, ca: Optional[str]) -> HTTPClient:
    """A treq client trusting only C{ca} (or the platform's CAs), with no pool left behind."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    policy = BrowserLikePolicyForHTTPS(
        trustRoot=ssl.Certificate.loadPEM(read(ca)) if ca is not None else None)
    agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=5)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(agent, cookiejar=CookieJar())


async def get(client: HTTPClient, url: str) -> Tuple[int, bytes]:
    response = await client.get(url, timeout=10)
    return response.code, await response.content()


# -- the proxy ----------------------------------------------------------------------------


async def start_proxy(testcase: TestCase, config: str,
                      listen: str = "tcp:0:interface=127.0.0.1") -> Tuple[procs.Child, int]:
    """
    C{twistd -n oidcproxy} with the configuration text C{config}, listening
    on C{listen} (any endpoint string); the child and its port.
    """
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    config_path = os.path.join(workdir, "oidcproxy.toml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(config)
    port_file = os.path.join(workdir, "proxy.port")
    args = procs.twistd_command() + [
        "-n", "--pidfile=", "oidcproxy", "--config", config_path,
        "--listen", listen, "--port-file", port_file,
    ]
    child = procs.Child("proxy", args, workdir)
    testcase.addCleanup(child.stop)
    return child, await procs.listening_port(child, port_file)


async def log_line(child: procs.Child, *parts: str) -> str:
    """Wait for the proxy to log a line holding every one of C{parts}; that line."""
    def find() -> Optional[str]:
        for line in (child.stdout() + child.stderr()).splitlines():
            if all(p in line for p in parts):
                return line
        return None

    try:
        return await procs.poll(find, 10, what=f"a log line with {parts!r}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{child.describe()}") from None


class PKITestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.pki = make_pki(directory)


# -- the proxy listening with ssl: ----------------------------------------------------------


class ListenTLSTests(PKITestCase):
    """The proxy serves https on an C{ssl:} endpoint."""

    def ssl_endpoint(self, chain: bool = True) -> str:
        files = self.pki
        text = (f"ssl:0:interface=127.0.0.1:privateKey={endpoint_path(files['server_chained_key'])}"
                f":certKey={endpoint_path(files['server_chained'])}")
        if chain:
            text += f":extraCertChain={endpoint_path(files['intermediate'])}"
        return text

    async def start(self, chain: bool = True) -> int:
        upstream = await procs.start_upstream(self)
        config = procs.config_text(procs.route_config(upstream.url))
        _, port = await start_proxy(self, config, listen=self.ssl_endpoint(chain))
        return port

    async def test_proxied_over_tls(self) -> None:
        """A client trusting only the root CA gets the proxied answer over https, chain and all."""
        port = await self.start()
        code, body = await get(https_client(self, self.pki["ca"]), f"https://127.0.0.1:{port}/echo")
        self.assertEqual(code, 200)
        echo = json.loads(body)
        self.assertEqual(echo["path"], "/echo")
        headers = {n.lower(): v for n, v in echo["headers"]}
        self.assertEqual(headers["x-forwarded-proto"], "https")

    async def test_chain_needed(self) -> None:
        """Without extraCertChain the intermediate is not sent: that client cannot verify the proxy."""
        port = await self.start(chain=False)
        client = https_client(self, self.pki["ca"])
        with self.assertRaises(ResponseNeverReceived) as caught:
            await get(client, f"https://127.0.0.1:{port}/echo")
        self.assertIn("certificate verify failed", str(caught.exception.reasons[0].value))

    async def test_protocol_floor(self) -> None:
        """TLS 1.3 and 1.2 are served; TLS 1.1 is refused by the proxy (a protocol_version alert)."""
        port = await self.start()
        ca = self.pki["ca"]

        def handshake(version: Any) -> str:
            context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(ca)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
                context.minimum_version = version
                context.maximum_version = version
            if version < stdlib_ssl.TLSVersion.TLSv1_2:
                # Let this client offer the old protocol at all.
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return str(tls.version())

        self.assertEqual(await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_3), "TLSv1.3")
        self.assertEqual(await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_2), "TLSv1.2")
        with self.assertRaises(stdlib_ssl.SSLError) as caught:
            await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_1)
        if "NO_PROTOCOLS_AVAILABLE" in str(caught.exception).upper():
            raise missing("this Python's OpenSSL cannot offer TLS 1.1 at all, so the proxy's "
                          "refusal of it cannot be seen (Debian's OpenSSL 3 offers it at SECLEVEL=0)")
        # The proxy's alert, not a refusal by this client.
        self.assertIn("ALERT_PROTOCOL_VERSION", str(caught.exception).upper())


# -- https upstreams -------------------------------------------------------------------------


class UpstreamTLSTests(PKITestCase):
    """The proxy verifies https upstreams: chain to the trusted CAs, and the host name."""

    async def proxy(self, routes: str, upstream_table: str = "") -> Tuple[procs.Child, HTTPClient, str]:
        text = procs.config_text((upstream_table + "\n" if upstream_table else "") + routes)
        child, port = await start_proxy(self, text)
        return child, procs_client(self), f"http://127.0.0.1:{port}"

    async def test_trusted_chain(self) -> None:
        """A certificate for the URL's host from the route's ca_bundle: the proxied answer."""
        upstream = start_tls_server(self, self.pki)
        _, client, base = await self.proxy(procs.route_config(upstream.url(), ca_bundle=self.pki["ca"]))
        code, body = await get(client, base + "/hello")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["path"], "/hello")

    async def test_unknown_ca(self) -> None:
        """
        No ca_bundle (the platform's CAs) or another CA's bundle: 502, and a
        log line naming the route, the upstream and the failed verification.
        """
        upstream = start_tls_server(self, self.pki)
        routes = (procs.route_config(upstream.url(), path="/platform")
                  + procs.route_config(upstream.url(), path="/other", ca_bundle=self.pki["other_ca"]))
        child, client, base = await self.proxy(routes)
        for path, route in (("/platform", "routes[0]"), ("/other", "routes[1]")):
            code, body = await get(client, base + path)
            self.assertEqual(code, 502, body)
            line = await log_line(child, f"upstream {upstream.url()} of {route} failed:")
            self.assertIn(f"failed: {VERIFY_FAILED}", line)

    async def test_wrong_hostname(self) -> None:
        """A trusted certificate for localhost, reached as 127.0.0.1: 502, 'hostname mismatch'."""
        upstream = start_tls_server(self, self.pki)
        url = upstream.url("127.0.0.1")
        child, client, base = await self.proxy(procs.route_config(url, ca_bundle=self.pki["ca"]))
        code, body = await get(client, base + "/")
        self.assertEqual(code, 502, body)
        line = await log_line(child, f"upstream {url} of routes[0] failed:")
        self.assertIn("failed: TLS: hostname mismatch (the certificate is not valid for 127.0.0.1)", line)

    async def test_mutual_tls(self) -> None:
        """
        An upstream requiring a client certificate from the test CA accepts
        the proxy's client_cert/client_key and refuses it without one, or with
        one from another CA (502 with the reason logged). The upstream's name
        is still verified with a client certificate.
        """
        files = self.pki
        upstream = start_tls_server(self, files, client_ca="ca")
        url = upstream.url()
        ip_url = upstream.url("127.0.0.1")
        routes = (
            procs.route_config(url, path="/with", client_cert=files["client"],
                               client_key=files["client_key"])
            + procs.route_config(url, path="/without")
            + procs.route_config(url, path="/other", client_cert=files["other_client"],
                                 client_key=files["other_client_key"])
            + procs.route_config(ip_url, path="/by-ip", client_cert=files["client"],
                                 client_key=files["client_key"])
        )
        child, client, base = await self.proxy(routes, f'[upstream]\nca_bundle = "{files["ca"]}"\n')

        code, body = await get(client, base + "/with/x")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["client"], "oidcproxy client")

        code, body = await get(client, base + "/without/x")
        self.assertEqual(code, 502, body)
        line = await log_line(child, f"upstream {url} of routes[1] failed:")
        self.assertIn("failed: TLS: the server requires a client certificate", line)

        code, body = await get(client, base + "/other/x")
        self.assertEqual(code, 502, body)
        line = await log_line(child, f"upstream {url} of routes[2] failed:")
        self.assertIn("failed: TLS: the server refused the client certificate (", line)

        code, body = await get(client, base + "/by-ip/x")
        self.assertEqual(code, 502, body)
        line = await log_line(child, f"upstream {ip_url} of routes[3] failed:")
        self.assertIn("failed: TLS: hostname mismatch (the certificate is not valid for 127.0.0.1)", line)

    async def test_bad_client_key_stops_start(self) -> None:
        """A client_key that is not client_cert's: --check fails naming the files."""
        files = self.pki
        text = procs.config_text(procs.route_config(
            "https://localhost:1", client_cert=files["client"], client_key=files["other_client_key"]))
        config = procs.write_config(self, text)
        from twisted.internet.utils import getProcessOutputAndValue

        out, err, code = await getProcessOutputAndValue(
            procs.twistd_command()[0],
            procs.twistd_command()[1:] + ["--pidfile=", "oidcproxy", "--config", config, "--check"],
            env=procs.child_env(),
        )
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"does not belong to the certificate", out + err)
        self.assertIn(files["other_client_key"].encode(), out + err)


def procs_client(testcase: TestCase) -> HTTPClient:
    """A plain-http treq client toward the proxy."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool, connectTimeout=5)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(agent, cookiejar=CookieJar())


# -- the IdP ---------------------------------------------------------------------------------


class ProviderTLSTests(PKITestCase):
    """make_http_client verifies the IdP: against ca_bundle, or the platform's CAs."""

    def provider(self, issuer: str, ca_bundle: Optional[str]) -> Provider:
        http = make_http_client(reactor, ca_bundle)
        self.addCleanup(http._agent._pool.closeCachedConnections)  # type: ignore[attr-defined]
        return Provider(
            issuer, ClientAuth("client", client_secret="secret"), http, reactor,
            discovery=False,
            endpoints={"authorization_endpoint": issuer + "/authorize",
                       "token_endpoint": issuer + "/token", "jwks_uri": issuer + "/jwks",
                       "userinfo_endpoint": issuer + "/userinfo"},
        )

    async def test_trusted(self) -> None:
        """The IdP's certificate from ca_bundle, for its host name: the answer arrives."""
        idp = start_tls_server(self, self.pki)
        provider = self.provider(idp.url(), self.pki["ca"])
        self.assertEqual(await provider.userinfo("token"), {"sub": "alice"})

    async def test_refused(self) -> None:
        """Unknown CA (platform trust, or another CA) or another name: 502 unreachable, saying why."""
        idp = start_tls_server(self, self.pki)
        cases: List[Tuple[str, Optional[str], str]] = [
            (idp.url(), None, VERIFY_FAILED),
            (idp.url(), self.pki["other_ca"], VERIFY_FAILED),
            (idp.url("127.0.0.1"), self.pki["ca"],
             "TLS: hostname mismatch (the certificate is not valid for 127.0.0.1)"),
        ]
        for issuer, ca_bundle, reason in cases:
            provider = self.provider(issuer, ca_bundle)
            with self.assertRaises(ProviderError) as caught:
                await provider.userinfo("token")
            error = caught.exception
            self.assertEqual((error.status, error.reason), (502, "unreachable"), str(error))
            self.assertIn(reason, error.detail)
