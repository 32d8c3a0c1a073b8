"""
Driving one unit of the guard (an endpoint, the session or bearer path)
directly: its L{GuardState} is a guard's, built the production way by a
L{tests.fakes.GuardStack}, and its requests are real twisted.web requests
made here, answered in memory.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from twisted.internet.address import IPv4Address
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from oidcproxy.web.parts import GuardState

from .fakes import GuardStack


class UnitRequest(Request):
    """A request as the site hands it over, keeping the body it is answered with."""

    def __init__(self, method: bytes, path: bytes, args: Optional[Dict[bytes, List[bytes]]] = None,
                 headers: Optional[Dict[bytes, Sequence[bytes]]] = None,
                 peer: str = "127.0.0.1") -> None:
        channel = DummyChannel()
        channel.transport.peer = IPv4Address("TCP", peer, 4321)  # type: ignore[attr-defined]
        super().__init__(channel, False)
        self.client = IPv4Address("TCP", peer, 4321)
        self.method = method
        self.uri = self.path = path
        self.args = args or {}
        self.clientproto = b"HTTP/1.1"
        self.prepath, self.postpath = [], path[1:].split(b"/")
        for name, values in (headers or {}).items():
            self.requestHeaders.setRawHeaders(name, list(values))
        self.parseCookies()
        self.body = b""

    def write(self, data: bytes) -> None:
        self.body += data
        super().write(data)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.responseHeaders.getRawHeaders(name)
        return values[0] if values else None

    def set_cookies(self) -> List[bytes]:
        return self.responseHeaders.getRawHeaders(b"set-cookie", [])


def state_of(h: GuardStack) -> GuardState:
    """The state the units of C{h}'s guard share."""
    return h.state


def session_cookie(browser: Any) -> Dict[bytes, Sequence[bytes]]:
    """The Cookie header of a browser (its session cookie)."""
    return {b"cookie": [browser.cookie_header()]}
