"""
A small real upstream HTTP server for the integration tests, run as its own
process: C{python tests/integration/upstream_app.py}.

It listens on a free loopback port and prints C{PORT <n>} on stdout once it
is listening. Every request except C{/events} is recorded (method, target,
arrival, and whether it finished or its connection went away), so a test can
ask C{/events} what reached the upstream and what happened to it.

Endpoints:
  - C{/echo}: JSON of the request as received (method, target, headers with
    repeats, body length and SHA-256).
  - C{/bytes?n=N[&chunked=1]}: N deterministic bytes (L{stream_bytes}),
    produced with back-pressure; C{Content-Length} unless C{chunked=1}.
  - C{/upload}: JSON C{{length, sha256}} of the request body.
  - C{/hang}: never answers.
  - C{/events}: the records, as a JSON list.
  - C{/cookies}: two C{Set-Cookie} headers and a repeated C{X-Multi}.
  - C{/status?code=N[&type=none]}: that status (no body for 1xx, 204 and
    304), with no Content-Type at all when C{type=none}.
  - C{/hop-headers}: C{Connection: X-Hop} with an C{X-Hop} header, a
    C{Proxy-Authenticate} and an end-to-end C{X-End-To-End}.
  - C{/abort-mid-body[?chunked=1]}: promises 1,000,000 bytes (or sends a
    chunked body), sends some, aborts the TCP connection.
  - C{/step-up}: an application that needs the sign-in level C{gold}: the
    answer of C{/echo} when the request's C{X-Forwarded-Acr} is C{gold},
    otherwise the RFC 9470 challenge (L{STEP_UP_CHALLENGE}): 401 with
    C{WWW-Authenticate: Bearer error="insufficient_user_authentication",
    acr_values="gold"} and a JSON body (L{STEP_UP_BODY}).
  - C{/unsatisfied}: that challenge always, whatever the request says (an
    application that a step-up never satisfies).
  - C{/form?action=PATH}: an HTML page with a form that POSTs a field
    C{amount} to C{PATH}.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
import socket
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

BLOCK_SIZE = 64 * 1024
BLOCK = random.Random(20240607).getrandbits(BLOCK_SIZE * 8).to_bytes(BLOCK_SIZE, "big")
"""The 64 KiB block that C{/bytes} repeats: cheap to send, not trivially compressible."""

ABORT_PROMISED = 1_000_000
ABORT_SENT = 20_000

STEP_UP_CHALLENGE = (b'Bearer error="insufficient_user_authentication", '
                     b'error_description="A sign-in at level gold is required", '
                     b'acr_values="gold"')
"""The C{WWW-Authenticate} of C{/step-up}'s 401 (RFC 9470, section 3)."""
STEP_UP_BODY = {"error": "insufficient_user_authentication", "needs": "gold"}


def stream_bytes(n: int) -> Iterator[bytes]:
    """The body of C{/bytes?n=N}: L{BLOCK} repeated, cut at C{n} bytes."""
    full, rest = divmod(n, BLOCK_SIZE)
    for _ in range(full):
        yield BLOCK
    if rest:
        yield BLOCK[:rest]


_digests: Dict[int, str] = {}


def bytes_sha256(n: int) -> str:
    """The hex SHA-256 of the body of C{/bytes?n=N}."""
    if n not in _digests:
        h = hashlib.sha256()
        for block in stream_bytes(n):
            h.update(block)
        _digests[n] = h.hexdigest()
    return _digests[n]


def _arg(request: Any, name: bytes, default: Optional[bytes] = None) -> Optional[bytes]:
    values = request.args.get(name)
    return values[0] if values else default


def _json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode("utf-8")


def _body_digest(request: Any) -> Dict[str, Any]:
    """Length and SHA-256 of the request body, read in chunks (it may be a 100 MB file)."""
    h = hashlib.sha256()
    length = 0
    content = request.content
    if content is not None:
        content.seek(0, 0)
        while True:
            chunk = content.read(BLOCK_SIZE)
            if not chunk:
                break
            length += len(chunk)
            h.update(chunk)
    return {"length": length, "sha256": h.hexdigest()}


def main() -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.interfaces import IPullProducer
    from twisted.web import server
    from twisted.web.resource import Resource
    from zope.interface import implementer

    records: List[Dict[str, Any]] = []

    @implementer(IPullProducer)
    class BytesProducer:
        """Writes one block each time the connection asks for more."""

        def __init__(self, request: Any, n: int) -> None:
            self._request = request
            self._blocks = stream_bytes(n)
            self._stopped = False

        def resumeProducing(self) -> None:
            if self._stopped:
                return
            block = next(self._blocks, None)
            if block is None:
                self._stopped = True
                self._request.unregisterProducer()
                self._request.finish()
                return
            self._request.write(block)

        def stopProducing(self) -> None:
            self._stopped = True

    class Upstream(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            path = request.path
            if path == b"/events":
                return _json(request, records)
            record: Dict[str, Any] = {
                "method": request.method.decode("ascii", "replace"),
                "uri": request.uri.decode("ascii", "replace"),
                "arrived": time.time(),
                "finished": False,
                "closed": None,
            }
            records.append(record)

            def finished(_: Any) -> None:
                record["finished"] = True

            def lost(reason: Any) -> None:
                record["closed"] = time.time()
                record["reason"] = type(reason.value).__name__

            request.notifyFinish().addCallbacks(finished, lost)
            first = path.decode("ascii", "replace").split("/")[1]
            handler = getattr(self, "do_" + first.replace("-", "_"), None)
            if handler is None:
                return _json(request, {"error": "no such endpoint"}, 404)
            return handler(request)

        def do_echo(self, request: Any) -> Any:
            info = _body_digest(request)
            headers = [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ]
            return _json(request, {
                "method": request.method.decode("ascii", "replace"),
                "uri": request.uri.decode("ascii", "replace"),
                "path": request.path.decode("ascii", "replace"),
                "headers": headers,
                "body_length": info["length"],
                "body_sha256": info["sha256"],
            })

        def do_step_up(self, request: Any) -> Any:
            if request.getHeader(b"x-forwarded-acr") == b"gold":
                return self.do_echo(request)
            return self.do_unsatisfied(request)

        def do_form(self, request: Any) -> Any:
            action = (_arg(request, b"action", b"/") or b"/").decode("utf-8", "replace")
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return (
                "<!DOCTYPE html><html><head><title>Form</title></head><body><main>"
                f'<form method="post" action="{html.escape(action)}">'
                '<input name="amount" value="100"><button type="submit">Send</button>'
                "</form></main></body></html>"
            ).encode()

        def do_unsatisfied(self, request: Any) -> Any:
            request.setHeader(b"www-authenticate", STEP_UP_CHALLENGE)
            return _json(request, STEP_UP_BODY, 401)

        def do_bytes(self, request: Any) -> Any:
            n = int(_arg(request, b"n", b"0") or b"0")
            chunked = _arg(request, b"chunked") == b"1"
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"x-body-length", str(n).encode("ascii"))
            if not chunked:
                request.setHeader(b"content-length", str(n).encode("ascii"))
            if request.method == b"HEAD":
                return b""
            request.registerProducer(BytesProducer(request, n), False)
            return server.NOT_DONE_YET

        def do_upload(self, request: Any) -> Any:
            return _json(request, _body_digest(request))

        def do_hang(self, request: Any) -> Any:
            return server.NOT_DONE_YET

        def do_slow(self, request: Any) -> Any:
            """Answer after C{?s=} seconds (a request still in flight at shutdown)."""
            seconds = float(_arg(request, b"s", b"1") or b"1")

            def answer() -> None:
                if not request.finished and not request._disconnected:
                    request.write(_json(request, {"slept": seconds}))
                    request.finish()

            reactor.callLater(seconds, answer)
            return server.NOT_DONE_YET

        def do_cookies(self, request: Any) -> Any:
            headers = request.responseHeaders
            headers.addRawHeader(b"set-cookie", b"a=1; Path=/; HttpOnly")
            headers.addRawHeader(b"set-cookie", b"b=2; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
            headers.addRawHeader(b"x-multi", b"one")
            headers.addRawHeader(b"x-multi", b"two")
            request.setHeader(b"content-type", b"text/plain")
            return b"cookies\n"

        def do_status(self, request: Any) -> Any:
            code = int(_arg(request, b"code", b"200") or b"200")
            request.setResponseCode(code)
            # Twisted would add "Content-Type: text/html" on its own.
            request.defaultContentType = None
            if code in (204, 304) or code < 200:
                return b""
            if _arg(request, b"type") != b"none":
                request.setHeader(b"content-type", b"text/plain")
            return f"status {code}\n".encode("ascii")

        def do_hop_headers(self, request: Any) -> Any:
            headers = request.responseHeaders
            headers.setRawHeaders(b"connection", [b"X-Hop"])
            headers.setRawHeaders(b"x-hop", [b"upstream-only"])
            headers.setRawHeaders(b"proxy-authenticate", [b"Basic realm=upstream"])
            headers.setRawHeaders(b"x-end-to-end", [b"kept"])
            request.setHeader(b"content-type", b"text/plain")
            return b"hop\n"

        def do_abort_mid_body(self, request: Any) -> Any:
            if _arg(request, b"chunked") != b"1":
                request.setHeader(b"content-length", str(ABORT_PROMISED).encode("ascii"))
            request.setHeader(b"content-type", b"application/octet-stream")
            request.write(BLOCK[:ABORT_SENT])
            transport = request.channel.transport
            reactor.callLater(0.2, transport.abortConnection)
            return server.NOT_DONE_YET

    site = server.Site(Upstream())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]

    def listening(port: Any) -> None:
        sys.stdout.write(f"PORT {port.getHost().port}\n")
        sys.stdout.flush()

    def failed(failure: Any) -> None:
        sys.stderr.write(f"upstream_app: cannot listen: {failure.value}\n")
        reactor.stop()

    if len(sys.argv) == 3 and sys.argv[1] == "--fd":
        # A listening socket bound by the parent, which so knows the port
        # before this process is up and can start the proxy meanwhile.
        fd = int(sys.argv[2])
        # The reactor accepts until EAGAIN: a blocking socket would hang it.
        os.set_blocking(fd, False)
        port = reactor.adoptStreamPort(fd, socket.AF_INET, site)
        os.close(fd)
        listening(port)
    else:
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        endpoint.listen(site).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
