"""L{oidcproxy.web.endpoints.forward_auth}: reading the original request another proxy describes."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.context import context
from oidcproxy.web.endpoints.forward_auth import ForwardAuthEndpoint

from .fakes import GuardStack, make_config
from .units import UnitRequest, state_of


class ForwardAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = GuardStack(self, make_config(trusted_proxies=["127.0.0.1"]))
        self.judged: List[Any] = []

        async def route_request(request: Any, match: Any,
                                authorization: Optional[Sequence[bytes]]) -> None:
            self.judged.append((match.path, context(request).method,
                                context(request).forward_auth, authorization))

        self.endpoint = ForwardAuthEndpoint(state_of(self.h), route_request)

    def check(self, headers: Dict[bytes, Sequence[bytes]], peer: str = "127.0.0.1",
              args: Any = None) -> UnitRequest:
        request = UnitRequest(b"GET", b"/oidc/auth", args=args, headers=headers, peer=peer)
        d = Deferred.fromCoroutine(self.endpoint.render(request, [b"Bearer t"]))
        self.successResultOf(d)
        return request

    def test_original_request_judged(self):
        """The described method and URI are judged; ?redirect=1 lets browsers be redirected."""
        self.check({b"x-forwarded-method": [b"POST"], b"x-forwarded-uri": [b"/a/b?c=1"],
                    b"x-forwarded-host": [b"app.test"]}, args={b"redirect": [b"1"]})
        self.assertEqual(self.judged, [("/a/b", b"POST", True, [b"Bearer t"])])

    def test_method_defaults_to_get(self):
        self.check({b"x-original-url": [b"https://app.test/a"]})
        self.assertEqual(self.judged, [("/a", b"GET", False, [b"Bearer t"])])

    def test_untrusted_peer(self):
        request = self.check({b"x-forwarded-uri": [b"/a"]}, peer="192.0.2.9")
        self.assertEqual(request.code, 403)
        self.assertEqual(self.judged, [])

    def test_disagreeing_descriptions(self):
        request = self.check({b"x-forwarded-uri": [b"/a"], b"x-original-uri": [b"/b"]})
        self.assertEqual(request.code, 400)
        request = self.check({b"x-forwarded-method": [b"GET"], b"x-original-method": [b"POST"],
                              b"x-forwarded-uri": [b"/a"]})
        self.assertEqual(request.code, 400)
        self.assertEqual(self.judged, [])

    def test_no_target(self):
        self.assertEqual(self.check({}).code, 400)

    def test_allowed_copies_the_identity_headers(self):
        """The answer of an allowed request carries the identity headers to copy, no others."""
        request = UnitRequest(b"GET", b"/oidc/auth", headers={
            b"x-forwarded-user": [b"alice"], b"x-other": [b"no"]})
        self.endpoint.allowed(request)
        self.assertEqual(request.code, 200)
        self.assertEqual(request.header(b"x-forwarded-user"), b"alice")
        self.assertIsNone(request.header(b"x-other"))
