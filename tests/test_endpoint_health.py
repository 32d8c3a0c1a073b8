"""L{oidcproxy.web.endpoints.health}: liveness and readiness, on their own."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.session import SessionStoreUnavailable
from oidcproxy.web.endpoints.health import HealthEndpoints

from .fakes import GuardStack
from .units import UnitRequest, state_of


class Pinged:
    """A store that answers PING with what it is given."""

    def __init__(self, answer: Deferred[None]) -> None:
        self.answer = answer

    def ping(self) -> Deferred[None]:
        return self.answer


class HealthTests(SynchronousTestCase):
    def test_ok_with_the_worker(self):
        """/health is 200 with the worker number, never cached."""
        h = GuardStack(self)
        state = state_of(h)
        state.worker_id = 3
        request = UnitRequest(b"GET", b"/oidc/health")
        HealthEndpoints(state).health(request)
        self.assertEqual((request.code, request.json()), (200, {"status": "ok", "worker": 3}))
        self.assertEqual(request.header(b"cache-control"), b"no-store")

    def test_get_only(self):
        request = UnitRequest(b"POST", b"/oidc/health")
        HealthEndpoints(state_of(GuardStack(self))).health(request)
        self.assertEqual((request.code, request.header(b"allow")), (405, b"GET, HEAD"))


class ReadyTests(SynchronousTestCase):
    def ready(self, h: GuardStack) -> UnitRequest:
        request = UnitRequest(b"GET", b"/oidc/ready")
        self.successResultOf(Deferred.fromCoroutine(HealthEndpoints(state_of(h)).ready(request)))
        return request

    def test_ready(self):
        """The IdP's metadata and keys loaded, Redis answering: 200."""
        h = GuardStack(self)
        h.guard.parts.revocations = Pinged(succeed(None))
        request = self.ready(h)
        self.assertEqual(request.code, 200)
        self.assertEqual(request.json()["checks"], {"idp": "ok", "redis": "ok"})

    def test_not_ready(self):
        """Keys not loaded and Redis silent: 503 naming both."""
        h = GuardStack(self, start=False)
        h.guard.parts.revocations = Pinged(fail(SessionStoreUnavailable("down")))
        request = self.ready(h)
        self.assertEqual(request.code, 503)
        self.assertEqual(request.json()["not_ready"], ["idp", "redis"])
