"""
How the proxy reaches its upstreams: the TLS policy of a route (CA bundle,
client certificate), the Agent's connection endpoints made once per origin,
the endpoints of the WebSocket path (its own connection per upgrade), and a
one-line description of a failed connection. Shared by the streaming proxy
and the WebSocket path.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ..config import RouteConfig, UpstreamSettings
from ..core.tls import ClientCertificatePolicy, client_certificate, describe_tls_error, trust_root


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """
    The Agent's connection endpoints, made once per origin rather than per
    request: Agent asks for one with every request, even when its pool has
    an idle connection, and building a C{HostnameEndpoint} runs the host
    name through IDNA each time. IP literals (C{http://[::1]:8080}) get a
    plain TCP endpoint, which needs neither IDNA nor a resolver.
    """

    def __init__(self, reactor: Any, policy: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self.policy = policy
        self._timeout = connect_timeout
        self._cache: Dict[Tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._cache[key] = self._endpoint(uri.scheme, uri.host, uri.port)
        return endpoint

    def _endpoint(self, scheme: bytes, host: bytes, port: int) -> Any:
        if scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {scheme!r}")
        text = host.decode("ascii")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            endpoint: Any = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        else:
            kind = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
            endpoint = kind(self._reactor, text, port, timeout=self._timeout)
        if scheme == b"https":
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(host, port), endpoint)
        return endpoint


EndpointFactory = Callable[[RouteConfig], IStreamClientEndpoint]
"""Builds the connection to a route's upstream (tests inject their own)."""


class UpstreamEndpoints:
    """
    The WebSocket path's default L{EndpointFactory}: a C{HostnameEndpoint} to the route's
    upstream with its C{connect_timeout}, wrapped in TLS for https upstreams
    with the same trust settings (C{ca_bundle}, client certificate) as the
    route's Agent. The TLS policy is built once per set of settings.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._policies: Dict[Tuple[Optional[str], ...], Any] = {}

    def _policy(self, settings: UpstreamSettings) -> Any:
        key = (settings.ca_bundle, settings.client_cert, settings.client_key)
        if key not in self._policies:
            self._policies[key] = tls_policy(settings)
        return self._policies[key]

    def __call__(self, route: RouteConfig) -> IStreamClientEndpoint:
        parts = urlsplit(route.upstream)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, port, timeout=route.settings.connect_timeout)
        if https:
            creator = self._policy(route.settings).creatorForNetloc(host.encode("idna"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


def tls_policy(settings: UpstreamSettings) -> Any:
    """
    How https upstreams are verified, and the client certificate shown to
    them: C{ca_bundle} (default: the system's CAs), C{client_cert} and
    C{client_key}. Shared by the Agent and the WebSocket path.
    """
    trusted = trust_root(settings.ca_bundle) if settings.ca_bundle else None
    if settings.client_cert and settings.client_key:
        certificate, chain = client_certificate(settings.client_cert, settings.client_key)
        return ClientCertificatePolicy(certificate, chain, trust_root=trusted)
    return client.BrowserLikePolicyForHTTPS(trustRoot=trusted)


def origin(url: str) -> str:
    """C{scheme://host:port} of a URL (the upstream's base path removed)."""
    return "/".join(url.split("/", 3)[:3])


def agent_host(origin_url: bytes) -> bytes:
    """
    The C{Host} value L{client.Agent} sends for a request to C{origin_url}
    when its headers have none: the host, in brackets when it is an IPv6
    address, with the port unless it is the scheme's default. Computed once
    per route and set by the proxy, it spares the Agent a copy of every
    request's headers (it copies them to add C{Host}).
    """
    uri = client.URI.fromBytes(origin_url)
    host = uri.host
    if isIPv6Address(host.decode("ascii")):
        host = b"[" + host + b"]"
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, uri.port)


def describe_failure(failure: Failure) -> str:
    """A one-line reason without URLs, headers or bodies."""
    reasons: List[Failure] = getattr(failure.value, "reasons", None) or [failure]
    parts = []
    for r in reasons:
        value = r.value
        if isinstance(value, CancelledError):
            parts.append("cancelled")
        elif isinstance(value, ierror.ConnectionRefusedError):
            parts.append("connection refused")
        elif isinstance(value, ierror.DNSLookupError):
            parts.append("DNS lookup failed")
        elif isinstance(value, ierror.ConnectError):
            parts.append(f"connect failed ({type(value).__name__})")
        else:
            parts.append(describe_tls_error(value) or type(value).__name__)
    return ", ".join(parts)
