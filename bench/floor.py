"""
The floor of our own stack (scenario F of the benchmark): a bare streaming
reverse proxy on Twisted's C{Agent} with a persistent connection pool, and
nothing else -- no routes, no authentication, no access log, no header
rewriting beyond what HTTP requires of a proxy.

    python bench/floor.py --upstream http://127.0.0.1:9000 [--port 0]
        [--tls-cert CERT.pem --tls-key KEY.pem]

It listens on 127.0.0.1 (port 0: any free port) and prints C{PORT <n>} on
stdout once it listens. It stops on SIGTERM or SIGINT. With C{--tls-cert}
and C{--tls-key} it listens with TLS instead and offers C{h2} and
C{http/1.1} in the handshake (ALPN), as oidcproxy's C{ssl:} listeners do:
Twisted's C{Site} then serves HTTP/2 to clients that choose it, when the
C{h2} package is installed (the floor of the HTTP/2 scenarios, C{bench/run
--h2}).

What it does per request is what a proxy cannot avoid: copy the end-to-end
headers of the request, send it upstream on a pooled keep-alive connection,
copy the status and end-to-end headers of the answer and stream its body
back, pausing the upstream while the client's transport is full. Request
bodies are streamed from Twisted's spool. Oidcproxy does all this plus its
own work, so P/F, C/F, ... measure what that own work costs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
"""Headers not copied across (plus Host and Content-Length, which Agent sets)."""


def end_to_end(headers: Headers) -> Headers:
    copied = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in HOP_BY_HOP:
            copied.setRawHeaders(name, values)
    return copied


class _Relay(protocol.Protocol):
    """Writes the upstream body to the client, with back-pressure both ways."""

    def __init__(self, request: Request, finished: Deferred) -> None:
        self.request = request
        self.finished = finished

    def connectionMade(self) -> None:
        # The client's transport pauses and resumes the upstream connection.
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.request.unregisterProducer()
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.request.finish()
        else:
            transport: Any = self.request.channel.transport if self.request.channel else None
            if transport is not None:
                transport.abortConnection()
        self.finished.callback(None)


class FloorProxy(Resource):
    isLeaf = True

    def __init__(self, agent: Agent, upstream: bytes) -> None:
        super().__init__()
        self.agent = agent
        self.upstream = upstream.rstrip(b"/")

    def render(self, request: Request) -> Any:
        body: Optional[FileBodyProducer] = None
        length = request.getHeader(b"content-length")
        if length not in (None, b"0") or request.getHeader(b"transfer-encoding"):
            content: Any = request.content
            content.seek(0)
            body = FileBodyProducer(content)
        d = self.agent.request(request.method, self.upstream + request.uri,
                               end_to_end(request.requestHeaders), body)
        d.addCallbacks(self._respond, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    def _respond(self, response: IResponse, request: Request) -> Deferred:
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP or name.lower() == b"content-length":
                request.responseHeaders.setRawHeaders(name, values)
        finished: Deferred = Deferred()
        response.deliverBody(_Relay(request, finished))
        return finished

    def _failed(self, failure: Any, request: Request) -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"bad gateway\n")
        request.finish()


def tls_options(cert_path: str, key_path: str) -> Any:
    """TLS server options offering C{h2} (when Twisted can serve it) and C{http/1.1}."""
    from twisted.internet.ssl import CertificateOptions, PrivateCertificate
    from twisted.web.http import H2_ENABLED

    with open(cert_path, "rb") as f:
        pem = f.read()
    with open(key_path, "rb") as f:
        pem += b"\n" + f.read()
    pair = PrivateCertificate.loadPEM(pem)
    protocols = [b"h2", b"http/1.1"] if H2_ENABLED else [b"http/1.1"]
    return CertificateOptions(privateKey=pair.privateKey.original, certificate=pair.original,
                              acceptableProtocols=protocols)


def main(argv: List[str]) -> None:
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", default=None, help="PEM certificate: listen with TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 256
    pool.retryAutomatically = False
    agent = Agent(reactor, pool=pool)
    site = Site(FloorProxy(agent, args.upstream.encode("ascii")))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log
    port: Any
    if args.tls_cert:
        port = reactor.listenSSL(args.port, site, tls_options(args.tls_cert, args.tls_key),  # type: ignore[attr-defined]
                                 backlog=1024, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(args.port, site, backlog=1024,  # type: ignore[arg-type]
                                 interface="127.0.0.1")
    sys.stdout.write(f"PORT {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
