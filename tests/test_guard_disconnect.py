"""
Tests for L{oidcproxy.web.guard.OIDCGuard} when the client goes away while the
guard waits (for the session store, a refresh, the IdP's introspection or
token endpoint): the wait is cancelled, the wrapped resource is never
rendered, nothing is written, and nothing is logged as an error.

The guard is served by a real L{ProxySite} on an in-memory transport, so the
test can close the client's connection at the moment it chooses.
"""

from __future__ import annotations

import json
from typing import Any, Callable, List
from urllib.parse import urlencode

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.web.server import ProxySite

from .fakes import CLIENT_ID, GuardStack, make_config
from .idp import ISSUER
from .test_guard_session import NEAR_EXPIRY
from .test_server import large_limit


class Client:
    """One client connection to the guard, through a L{ProxySite}."""

    def __init__(self, case: SynchronousTestCase, h: GuardStack) -> None:
        self.h = h
        self.site = ProxySite(h.guard, clock=h.clock, body_limit=large_limit, reactor=h.clock)
        self.events: List[Any] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        peer = IPv4Address("TCP", "192.0.2.7", 5555)
        self.channel = self.site.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.channel.makeConnection(self.transport)

    def send(self, target: str, *headers: bytes, method: bytes = b"GET") -> None:
        self.channel.dataReceived(
            method + b" " + target.encode("ascii") + b" HTTP/1.1\r\nHost: app.test\r\n" +
            b"".join(h + b"\r\n" for h in headers) + b"\r\n")
        self.h.network.pump()

    def leave(self) -> None:
        """The client closes its connection."""
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.h.network.pump()

    def errors(self) -> List[Any]:
        return [e for e in self.events
                if e.get("log_failure") is not None or
                e.get("log_level") in (LogLevel.error, LogLevel.critical)]


def cookie(browser: Any) -> bytes:
    return b"Cookie: " + browser.cookie_header()


def hold_introspection(h: GuardStack) -> List[Any]:
    """
    Make the fake IdP advertise an introspection endpoint that never
    answers; the list of the requests it holds.
    """
    held: List[Any] = []
    document, render = h.idp.discovery_document, h.idp.render

    def render_holding(request: Any) -> Any:
        if request.path == b"/introspect":
            held.append(request)
            return NOT_DONE_YET
        return render(request)

    h.idp.discovery_document = lambda: {  # type: ignore[method-assign]
        **document(), "introspection_endpoint": ISSUER + "/introspect"}
    h.idp.render = render_holding  # type: ignore[method-assign]
    return held


def finished(request: Any) -> List[Any]:
    """What C{request}'s notifyFinish fired with, once it does."""
    outcome: List[Any] = []
    request.notifyFinish().addBoth(outcome.append)
    return outcome


class LeavingTestCase(SynchronousTestCase):
    def assertNothingAfterLeaving(self, h: GuardStack, client: Client, rendered: int) -> None:
        self.assertEqual(len(h.app.requests), rendered, "the wrapped resource was rendered")
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(client.errors(), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(client.site.open_connections, 0)


class ClientGoneTests(LeavingTestCase):
    def test_store_load(self):
        """A session load still pending when the client leaves is cancelled; nothing follows."""
        h = GuardStack(self, memory_store=True)
        browser = h.logged_in()
        rendered = len(h.app.requests)
        cancelled: List[Deferred] = []
        pending: Deferred = Deferred(cancelled.append)
        h.store.load = lambda value: pending  # type: ignore[method-assign,union-attr]
        client = Client(self, h)
        client.send("/x", cookie(browser))
        self.assertEqual(client.transport.value(), b"")
        client.leave()
        self.assertEqual(cancelled, [pending])
        self.assertNothingAfterLeaving(h, client, rendered)

    def test_refresh(self):
        """
        A refresh waiting for the IdP when the client leaves: the request's
        wait is cancelled, and when the IdP answers at last, the wrapped
        resource is still not rendered for the gone client.
        """
        h = GuardStack(self)
        browser = h.logged_in()
        rendered = len(h.app.requests)
        h.clock.advance(NEAR_EXPIRY)
        h.idp.hold_token_requests = True
        client = Client(self, h)
        client.send("/x", cookie(browser))
        self.assertEqual(len(h.idp.held), 1)
        client.leave()
        self.assertNothingAfterLeaving(h, client, rendered)
        # The IdP fails the refresh now: the access token is still valid, so
        # the request would have been served had the client stayed.
        h.idp.release_held(503)
        h.network.pump()
        self.assertNothingAfterLeaving(h, client, rendered)

    def test_bearer_introspection(self):
        """
        An API client that leaves while its token is introspected: when the
        IdP answers "active" at last, the wrapped resource is not rendered.
        (The introspection itself goes on: other requests with the same
        token may be waiting for it.)
        """
        config = make_config(
            routes=[{"path": "/api", "auth": "bearer", "upstream": "http://up.test"}],
            bearer={"introspection": True})
        h = GuardStack(self, config, start=False)
        held = hold_introspection(h)
        h.guard.start()
        h.network.pump()
        client = Client(self, h)
        client.send("/api/x", b"Authorization: Bearer opaque-token-8Zk2")
        self.assertEqual(len(held), 1)
        client.leave()
        self.assertNothingAfterLeaving(h, client, 0)
        answer = {"active": True, "iss": ISSUER, "aud": CLIENT_ID, "client_id": CLIENT_ID,
                  "sub": "svc-1", "exp": int(h.clock.seconds()) + 3600}
        held[0].setHeader(b"content-type", b"application/json")
        held[0].write(json.dumps(answer).encode("ascii"))
        held[0].finish()
        h.network.pump()
        self.assertNothingAfterLeaving(h, client, 0)
        # The same token from a client that stays is served (the answer was good).
        other = Client(self, h)
        other.send("/api/x", b"Authorization: Bearer opaque-token-8Zk2")
        self.assertTrue(other.transport.value().startswith(b"HTTP/1.1 200 "),
                        other.transport.value()[:200])

    def test_token_exchange_at_callback(self):
        """A code exchange in flight when the browser leaves the callback is cancelled at the IdP."""
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"],
                                code_verifier_challenge=params["code_challenge"])
        h.idp.hold_token_requests = True
        client = Client(self, h)
        client.send("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}),
                    cookie(browser), b"Accept: text/html")
        self.assertEqual(len(h.idp.held), 1)
        at_idp = finished(h.idp.held[0])
        client.leave()
        self.assertEqual(len(at_idp), 1)
        self.assertIsInstance(at_idp[0], Failure)
        self.assertNothingAfterLeaving(h, client, 0)

    def test_answered_request_not_cancelled(self):
        """A request the guard answered is not touched when its connection closes later."""
        h = GuardStack(self)
        client = Client(self, h)
        client.send("/public/x")
        self.assertTrue(client.transport.value().startswith(b"HTTP/1.1 200 "))
        client.leave()
        self.assertEqual(len(h.app.requests), 1)
        self.assertEqual(client.errors(), [])


def holding(cancelled: List[Deferred]) -> Callable[..., Deferred]:
    """A store method that never answers; its Deferreds go to C{cancelled} when cancelled."""
    def method(*args: Any, **kwargs: Any) -> Deferred:
        return Deferred(cancelled.append)
    return method


class MoreWaitingPointsTests(LeavingTestCase):
    """The other places where the guard waits for the store or the IdP."""

    def test_revocation_list(self):
        """A revocation check still pending when the client leaves is cancelled."""
        h = GuardStack(self, start=False)
        revocations = MemoryStore(h.clock)
        h.guard.parts.revocations = revocations
        h.guard.start()
        h.network.pump()
        browser = h.logged_in()
        rendered = len(h.app.requests)
        cancelled: List[Deferred] = []
        revocations.revoked_at = holding(cancelled)  # type: ignore[method-assign]
        client = Client(self, h)
        client.send("/x", cookie(browser))
        client.leave()
        self.assertEqual(len(cancelled), 1)
        self.assertNothingAfterLeaving(h, client, rendered)

    def test_session_save_at_callback(self):
        """The new session's save, pending when the browser leaves the callback, is cancelled."""
        h = GuardStack(self, memory_store=True)
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"],
                                code_verifier_challenge=params["code_challenge"])
        cancelled: List[Deferred] = []
        h.store.save = holding(cancelled)  # type: ignore[method-assign,union-attr]
        client = Client(self, h)
        client.send("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}),
                    cookie(browser), b"Accept: text/html")
        self.assertEqual(client.transport.value(), b"")
        client.leave()
        self.assertEqual(len(cancelled), 1)
        self.assertNothingAfterLeaving(h, client, 0)

    def test_userinfo_at_callback(self):
        """The IdP's UserInfo call at the callback, pending when the browser leaves, is cancelled."""
        h = GuardStack(self, make_config(oidc={"userinfo": True}))
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"],
                                code_verifier_challenge=params["code_challenge"])
        held: List[Any] = []
        render = h.idp.render

        def render_holding(request: Any) -> Any:
            if request.path.endswith(b"/userinfo"):
                held.append(request)
                return NOT_DONE_YET
            return render(request)

        h.idp.render = render_holding  # type: ignore[method-assign]
        client = Client(self, h)
        client.send("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}),
                    cookie(browser), b"Accept: text/html")
        self.assertEqual(len(held), 1)
        at_idp = finished(held[0])
        client.leave()
        self.assertEqual(len(at_idp), 1)
        self.assertIsInstance(at_idp[0], Failure)
        self.assertNothingAfterLeaving(h, client, 0)

    def test_logout_delete(self):
        """A logout whose session delete is pending when the browser leaves: cancelled."""
        h = GuardStack(self, memory_store=True)
        browser = h.logged_in()
        rendered = len(h.app.requests)
        cancelled: List[Deferred] = []
        h.store.delete = holding(cancelled)  # type: ignore[method-assign,union-attr]
        client = Client(self, h)
        client.send("/oidc/logout", cookie(browser), b"Origin: https://app.test",
                    b"Content-Length: 0", method=b"POST")
        client.leave()
        self.assertEqual(len(cancelled), 1)
        self.assertNothingAfterLeaving(h, client, rendered)

    def test_ready_ping(self):
        """A readiness check waiting for Redis's PING when the client leaves: cancelled."""
        h = GuardStack(self)
        cancelled: List[Deferred] = []

        class Revocations:
            ping = staticmethod(holding(cancelled))

        h.guard.parts.revocations = Revocations()
        client = Client(self, h)
        client.send("/oidc/ready")
        client.leave()
        self.assertEqual(len(cancelled), 1)
        self.assertNothingAfterLeaving(h, client, 0)

