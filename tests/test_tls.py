"""
Tests for L{oidcproxy.core.tls}: loading a client certificate, the policy that
presents it (with the server's chain and name still verified), and the log
wording of TLS failures. In memory: handshakes run over memory BIOs.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, List, Optional

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS

from oidcproxy.config import UpstreamSettings
from oidcproxy.core.tls import ClientCertificatePolicy, client_certificate, describe_tls_error
from oidcproxy.proxy.upstream import UpstreamClient

from .pki import make_pki

_PKI: Optional[dict] = None


def pki(testcase: SynchronousTestCase) -> dict:
    """The test PKI, made once per test run (key generation is not free on PyPy)."""
    global _PKI
    if _PKI is None:
        directory = os.path.abspath(testcase.mktemp())
        os.makedirs(directory)
        _PKI = make_pki(directory)
    return _PKI


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def digest(path: str) -> bytes:
    return ssl.Certificate.loadPEM(read(path)).digest("sha256")


class FakeTLSProtocol:
    """What Twisted's client connection creators need of the TLS protocol."""

    def __init__(self) -> None:
        self.verification_failures: List[Failure] = []
        # Newer Twisted asks the wrapped factory for ALPN protocols.
        self.factory = SimpleNamespace(wrappedFactory=object())

    def failVerification(self, reason: Failure) -> None:
        self.verification_failures.append(reason)


def server_connection(files: dict, require_client_certificate: bool) -> SSL.Connection:
    """The server side of a handshake: the "server" certificate (for localhost)."""
    kwargs: dict = {}
    if require_client_certificate:
        kwargs["trustRoot"] = ssl.Certificate.loadPEM(read(files["ca"]))
    private = ssl.PrivateCertificate.loadPEM(read(files["server"]) + read(files["server_key"]))
    options = ssl.CertificateOptions(privateKey=private.privateKey.original,
                                     certificate=private.original, **kwargs)
    connection = SSL.Connection(options.getContext(), None)
    connection.set_accept_state()
    return connection


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run a TLS handshake between two memory-BIO connections; SSL.Error if it fails."""
    client.set_connect_state()
    for _ in range(20):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
        for src, dst in ((client, server), (server, client)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
        if done == 2:
            # TLS 1.3: the server checks the client's certificate after the
            # client thinks it is done; its alert arrives with the next read.
            try:
                client.recv(1)
            except SSL.WantReadError:
                pass
            return
    raise AssertionError("the handshake did not finish")


class ClientCertificateTests(SynchronousTestCase):
    def test_certificate_and_key(self) -> None:
        """The certificate comes with its key; nothing else in the file means no chain."""
        files = pki(self)
        private, chain = client_certificate(files["client"], files["client_key"])
        self.assertEqual(private.digest("sha256"), digest(files["client"]))
        self.assertTrue(private.privateKey.original is not None)
        self.assertEqual(chain, [])

    def test_one_file(self) -> None:
        """Certificate and key may be one PEM file."""
        files = pki(self)
        private, _ = client_certificate(files["client_bundle"], files["client_bundle"])
        self.assertEqual(private.digest("sha256"), digest(files["client"]))

    def test_chain(self) -> None:
        """Certificates after the first are the chain sent along."""
        files = pki(self)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(read(files["client"]) + read(files["intermediate"]))
        private, chain = client_certificate(path, files["client_key"])
        self.assertEqual(private.digest("sha256"), digest(files["client"]))
        self.assertEqual([c.digest("sha256") for c in chain], [digest(files["intermediate"])])

    def test_refused(self) -> None:
        """Another certificate's key, an encrypted key, or files without PEM are refused clearly."""
        files = pki(self)
        cases = [
            (files["client"], files["other_client_key"], "does not belong to the certificate"),
            (files["client"], files["encrypted_key"], "is encrypted"),
            (files["client_key"], files["client_key"], "holds no PEM certificate"),
            (files["client"], files["client"], "holds no PEM private key"),
        ]
        for cert, key, message in cases:
            e = self.assertRaises(ValueError, client_certificate, cert, key)
            self.assertIn(message, str(e))
        self.assertRaises(OSError, client_certificate, files["client"], "/nonexistent/key.pem")


class ClientCertificatePolicyTests(SynchronousTestCase):
    def policy(self, **kw: Any) -> ClientCertificatePolicy:
        files = pki(self)
        private, chain = client_certificate(files["client"], files["client_key"])
        return ClientCertificatePolicy(private, chain, **kw)

    def test_policy_carries_the_certificate(self) -> None:
        """Every connection the policy creates presents the client certificate."""
        files = pki(self)
        policy = self.policy()
        self.assertTrue(IPolicyForHTTPS.providedBy(policy))
        creator = policy.creatorForNetloc(b"localhost", 443)
        connection = creator.clientConnectionForTLS(FakeTLSProtocol())
        certificate = connection.get_certificate()
        assert certificate is not None
        self.assertEqual(ssl.Certificate(certificate).digest("sha256"), digest(files["client"]))

    def test_mutual_handshake(self) -> None:
        """A server that requires a client certificate from the CA gets it and accepts it."""
        files = pki(self)
        policy = self.policy(trust_root=ssl.Certificate.loadPEM(read(files["ca"])))
        protocol = FakeTLSProtocol()
        client = policy.creatorForNetloc(b"localhost", 443).clientConnectionForTLS(protocol)
        server = server_connection(files, require_client_certificate=True)
        handshake(client, server)
        peer = server.get_peer_certificate()
        assert peer is not None
        self.assertEqual(ssl.Certificate(peer).digest("sha256"), digest(files["client"]))
        self.assertEqual(protocol.verification_failures, [])

    def test_server_name_still_verified(self) -> None:
        """With a client certificate the server's name is still checked: 127.0.0.1 is not localhost."""
        files = pki(self)
        policy = self.policy(trust_root=ssl.Certificate.loadPEM(read(files["ca"])))
        protocol = FakeTLSProtocol()
        client = policy.creatorForNetloc(b"127.0.0.1", 443).clientConnectionForTLS(protocol)
        server = server_connection(files, require_client_certificate=True)
        try:
            handshake(client, server)
        except SSL.Error:
            pass
        self.assertEqual(len(protocol.verification_failures), 1)
        self.assertEqual(describe_tls_error(protocol.verification_failures[0].value),
                         "TLS: hostname mismatch (the certificate is not valid for 127.0.0.1)")

    def test_server_chain_still_verified(self) -> None:
        """With a client certificate, a server certificate from an untrusted CA is refused."""
        files = pki(self)
        policy = self.policy(trust_root=ssl.Certificate.loadPEM(read(files["other_ca"])))
        client = policy.creatorForNetloc(b"localhost", 443).clientConnectionForTLS(FakeTLSProtocol())
        server = server_connection(files, require_client_certificate=False)
        e = self.assertRaises(SSL.Error, handshake, client, server)
        self.assertIn("certificate verify failed", describe_tls_error(e) or "")

    def test_upstream_client_uses_it(self) -> None:
        """UpstreamClient.build presents client_cert/client_key, trusting ca_bundle."""
        files = pki(self)
        settings = UpstreamSettings(client_cert=files["client"], client_key=files["client_key"],
                                    ca_bundle=files["ca"])
        c = UpstreamClient.build(MemoryReactorClock(), settings)
        assert c.endpoints is not None
        policy = c.endpoints.policy
        self.assertIsInstance(policy, ClientCertificatePolicy)
        self.assertEqual(policy.certificate.digest("sha256"), digest(files["client"]))
        self.assertIsNotNone(policy.trust_root)

        plain = UpstreamClient.build(MemoryReactorClock(), UpstreamSettings())
        assert plain.endpoints is not None
        self.assertIsInstance(plain.endpoints.policy, BrowserLikePolicyForHTTPS)

    def test_upstream_client_refuses_bad_pair(self) -> None:
        """A key that is not the certificate's stops the set-up with a ValueError naming the files."""
        files = pki(self)
        settings = UpstreamSettings(client_cert=files["client"], client_key=files["other_client_key"])
        e = self.assertRaises(ValueError, UpstreamClient.build, MemoryReactorClock(), settings)
        self.assertIn(files["other_client_key"], str(e))


class DescribeTLSErrorTests(SynchronousTestCase):
    def test_wording(self) -> None:
        """Each kind of TLS failure says what went wrong."""
        from service_identity.exceptions import DNSMismatch, IPAddressMismatch, VerificationError
        from service_identity.hazmat import DNS_ID, IPAddress_ID

        cases = [
            (SSL.Error([("SSL routines", "", "certificate verify failed")]),
             "TLS: certificate verify failed (unknown CA, or an expired or otherwise invalid "
             "certificate)"),
            (VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("example.com"))]),
             "TLS: hostname mismatch (the certificate is not valid for example.com)"),
            (VerificationError(errors=[IPAddressMismatch(mismatched_id=IPAddress_ID("127.0.0.1"))]),
             "TLS: hostname mismatch (the certificate is not valid for 127.0.0.1)"),
            (SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]),
             "TLS: the server requires a client certificate (tlsv13 alert certificate required)"),
            (SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]),
             "TLS: the server refused the client certificate (tlsv1 alert unknown ca)"),
            (SSL.Error([("SSL routines", "", "sslv3 alert handshake failure")]),
             "TLS: the server refused the handshake (sslv3 alert handshake failure)"),
            (SSL.Error([("SSL routines", "", "wrong version number")]),
             "TLS: wrong version number"),
            (SSL.SysCallError(-1, "Unexpected EOF"), "TLS: handshake failed (Unexpected EOF)"),
            (ValueError("x"), None),
            (None, None),
        ]
        for error, expected in cases:
            self.assertEqual(describe_tls_error(error), expected, repr(error))

    def test_upstream_log_reason(self) -> None:
        """The upstream's 502 log line carries the TLS reason inside Agent's wrapper."""
        from oidcproxy.proxy.connect import describe_failure

        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        failure = Failure(ResponseNeverReceived([Failure(error)]))
        self.assertEqual(
            describe_failure(failure),
            "TLS: certificate verify failed (unknown CA, or an expired or otherwise invalid certificate)",
        )

    def test_provider_reason(self) -> None:
        """Failures talking to the IdP name the TLS problem too."""
        from oidcproxy.oidc.transport import describe_failure

        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertTrue(
            describe_failure(ResponseNeverReceived([Failure(error)])).startswith(
                "ResponseNeverReceived: TLS: certificate verify failed")
        )
