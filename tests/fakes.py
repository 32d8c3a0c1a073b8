"""
In-memory parts for unit tests: an upstream application that records what
reaches it, and agents that fail or hang the way real upstreams do.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer


class RecordingUpstream(Resource):
    """
    An upstream application: records every request (method, target, headers
    with repeats, body) and answers through C{handler}, or with a JSON echo.
    """

    isLeaf = True

    def __init__(self, handler: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__()
        self.requests: List[Dict[str, Any]] = []
        self.handler = handler

    def render(self, request: Any) -> Any:
        body = request.content.read()
        self.requests.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": [
                    (name.lower(), value)
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                "body": body,
            }
        )
        if self.handler is not None:
            return self.handler(request)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"uri": request.uri.decode("latin-1")}).encode()

    def header(self, name: bytes, index: int = -1) -> List[bytes]:
        """Every value of header C{name} in request C{index}, in order."""
        return [v for n, v in self.requests[index]["headers"] if n == name.lower()]


@implementer(IAgent)
class FailingAgent:
    """An agent whose every request fails with C{error}."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def request(self, method, uri, headers=None, bodyProducer=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        return defer.fail(self.error)


@implementer(IAgent)
class HangingAgent:
    """An agent whose requests never get an answer; records cancellations."""

    def __init__(self) -> None:
        self.pending: List[defer.Deferred] = []
        self.cancelled = 0

    def request(self, method, uri, headers=None, bodyProducer=None):  # type: ignore[no-untyped-def]
        def cancel(d: defer.Deferred) -> None:
            self.cancelled += 1

        d: defer.Deferred = defer.Deferred(cancel)
        self.pending.append(d)
        return d


def never_answer(request: Any) -> Any:
    """A handler for L{RecordingUpstream} that keeps the request open."""
    return NOT_DONE_YET
