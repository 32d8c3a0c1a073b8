"""
The HTTP client the provider is talked to with: a treq client over an Agent
with a persistent connection pool, https verified (or mutual TLS), no
redirects followed (the transport asks for none) and no cookies kept.
"""

from __future__ import annotations

from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any, Optional, Sequence

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.web import client as webclient

from ..core.httpclient import BytesProducer, QuietPool
from ..core.tls import ClientCertificatePolicy, UnverifiedPolicy, client_certificate, trust_root

__all__ = ["make_http_client"]


class _RefuseAllCookies(DefaultCookiePolicy):
    """A cookie policy that accepts no cookie and sends none."""

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def _bytes_producer(data: bytes) -> Any:
    if not isinstance(data, bytes):
        raise TypeError("request bodies must be bytes")
    return BytesProducer(data)


def _client_over(agent: Any) -> HTTPClient:
    """A treq client over C{agent} whose cookie jar keeps nothing."""
    return HTTPClient(
        agent,
        cookiejar=IndexableCookieJar(policy=_RefuseAllCookies()),
        data_to_body_producer=_bytes_producer,
    )


def make_http_client(
    reactor: Any,
    ca_bundle: Optional[str] = None,
    timeout_connect: float = 5.0,
    *,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
    insecure_skip_verify: bool = False,
) -> HTTPClient:
    """
    The HTTP client for talking to the provider: a treq L{HTTPClient} over an
    L{Agent} with a persistent connection pool, https certificates verified
    (against the system's roots, or only the PEM certificates in
    C{ca_bundle}), and a cookie jar that keeps nothing, so no cookie set by
    one answer is ever sent with another request.

    @param client_cert: with C{client_key}, the client certificate presented
        to a provider that asks for one (mutual TLS); see
        L{oidcproxy.core.tls.client_certificate}.
    @param insecure_skip_verify: accept any server certificate (for tests
        against a provider with a self-signed certificate only).
    @raise ValueError: C{ca_bundle} holds no certificate; a bad client
        certificate or key.
    @raise OSError: a file cannot be read.
    """
    pool = QuietPool(reactor, persistent=True)
    trusted = trust_root(ca_bundle) if ca_bundle is not None else None
    certificate: Any = None
    chain: Sequence[Any] = ()
    if client_cert is not None and client_key is not None:
        certificate, chain = client_certificate(client_cert, client_key)
    policy: Any
    if insecure_skip_verify:
        policy = UnverifiedPolicy(certificate, chain)
    elif certificate is not None:
        policy = ClientCertificatePolicy(certificate, chain, trust_root=trusted)
    else:
        policy = webclient.BrowserLikePolicyForHTTPS(trustRoot=trusted)
    agent = webclient.Agent(reactor, contextFactory=policy, connectTimeout=timeout_connect, pool=pool)
    return _client_over(agent)
