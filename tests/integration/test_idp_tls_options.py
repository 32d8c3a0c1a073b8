"""
Integration tests for the IdP client's TLS options, against a real https
server in this process (L{tests.integration.test_tls}): C{insecure_skip_verify}
reaches an IdP whose certificate no configured CA vouches for (and another
name), where the default client refuses; C{client_cert}/C{client_key} are
presented to an IdP that requires a client certificate.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import reactor

from oidcproxy.oidc.provider import ClientAuth, Provider, ProviderError, make_http_client
from tests.integration.test_tls import VERIFY_FAILED, PKITestCase, start_tls_server


class IdPTLSOptionTests(PKITestCase):
    def provider(self, issuer: str, **tls: Any) -> Provider:
        http = make_http_client(reactor, **tls)
        self.addCleanup(http._agent._pool.closeCachedConnections)  # type: ignore[attr-defined]
        return Provider(
            issuer, ClientAuth("client", client_secret="secret"), http, reactor,
            discovery=False,
            endpoints={"authorization_endpoint": issuer + "/authorize",
                       "token_endpoint": issuer + "/token", "jwks_uri": issuer + "/jwks",
                       "userinfo_endpoint": issuer + "/userinfo"},
        )

    async def test_insecure_skip_verify(self) -> None:
        """Unknown CA and another name: refused by default, accepted with insecure_skip_verify."""
        idp = start_tls_server(self, self.pki)
        with self.assertRaises(ProviderError) as caught:
            await self.provider(idp.url("127.0.0.1")).userinfo("token")
        self.assertEqual(caught.exception.reason, "unreachable")
        self.assertIn("TLS: ", caught.exception.detail)
        with self.assertRaises(ProviderError) as caught:
            await self.provider(idp.url()).userinfo("token")
        self.assertIn(VERIFY_FAILED, caught.exception.detail)
        insecure = self.provider(idp.url("127.0.0.1"), insecure_skip_verify=True)
        self.assertEqual(await insecure.userinfo("token"), {"sub": "alice"})

    async def test_client_certificate(self) -> None:
        """An IdP requiring a client certificate accepts client_cert/client_key, refuses without."""
        idp = start_tls_server(self, self.pki, client_ca="ca")
        tls: Any = {"ca_bundle": self.pki["ca"]}
        with self.assertRaises(ProviderError):
            await self.provider(idp.url(), **tls).userinfo("token")
        client: Optional[Provider] = self.provider(
            idp.url(), client_cert=self.pki["client"], client_key=self.pki["client_key"], **tls)
        assert client is not None
        self.assertEqual(await client.userinfo("token"), {"sub": "alice"})
