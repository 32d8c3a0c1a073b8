"""L{oidcproxy.web.endpoints.backchannel}: the IdP's logout tokens, on their own."""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.web.endpoints.backchannel import BackchannelLogoutEndpoint

from .fakes import CLIENT_ID, GuardStack
from .idp import ISSUER
from .units import UnitRequest, state_of

EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


class BackchannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = GuardStack(self, memory_store=True)
        self.closed: List[Dict[str, Any]] = []
        self.endpoint = BackchannelLogoutEndpoint(state_of(self.h),
                                                  lambda **w: self.closed.append(w))

    def token(self, **claims: Any) -> bytes:
        now = int(self.h.clock.seconds())
        body = {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "jti": "j-1", "events": EVENT,
                **claims}
        return self.h.idp.id_token(body).encode()

    def post(self, tokens: List[bytes], method: bytes = b"POST") -> UnitRequest:
        request = UnitRequest(method, b"/oidc/backchannel-logout", args={b"logout_token": tokens})
        d = Deferred.fromCoroutine(self.endpoint.render(request))
        self.h.network.pump()
        self.successResultOf(d)
        return request

    def test_by_sub(self):
        """A valid token ends the sub's sessions and closes their sockets: 200."""
        self.h.logged_in(sub="alice")
        request = self.post([self.token(sub="alice")])
        self.assertEqual(request.code, 200, request.body)
        self.assertEqual(len(self.h.store), 0)  # type: ignore[arg-type]
        self.assertEqual(self.closed, [{"sub": "alice", "provider": ""}])

    def test_replayed(self):
        """The same jti twice: the second is refused."""
        token = self.token(sub="alice")
        self.assertEqual(self.post([token]).code, 200)
        self.assertEqual(self.post([token]).code, 400)

    def test_not_one_token(self):
        self.assertEqual(self.post([]).code, 400)
        self.assertEqual(self.post([b"a", b"b"]).code, 400)

    def test_invalid_token(self):
        self.assertEqual(self.post([self.token(sub="alice", aud="other")]).code, 400)
        self.assertEqual(self.closed, [])

    def test_post_only(self):
        self.assertEqual(self.post([], method=b"GET").code, 405)

    def test_needs_redis(self):
        """Cookie sessions without a revocation list: 501."""
        h = GuardStack(self)
        request = UnitRequest(b"POST", b"/oidc/backchannel-logout")
        endpoint = BackchannelLogoutEndpoint(state_of(h), lambda **w: None)
        self.successResultOf(Deferred.fromCoroutine(endpoint.render(request)))
        self.assertEqual(request.code, 501)
