"""
Properties of the Host/authority parser (L{oidcproxy.proxy.routes.request_host}),
on generated values.
"""

from __future__ import annotations

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.proxy.routes import BadRequestTarget, request_host

from .props import given

PIECES = ["a", "B", "app", "test", "xn--bcher-kva", "0", "127", "-", ".", "..", ":", ":80", ":8080",
          ":", ":x", "[", "]", "[::1]", "::", "[fe80::1]", "%25eth0", "@", "_", " ", "\t", "\x00",
          "\xe9", "/", "?", "#", "\\"]
HOSTS = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=8).map(lambda p: "".join(p).encode("utf-8")),
    st.binary(max_size=30),
    st.text(alphabet="ab.-:[]19", max_size=20).map(lambda t: t.encode("ascii")),
)


class RequestHostTests(SynchronousTestCase):
    @given(HOSTS)
    def test_parses_or_refuses(self, raw: bytes) -> None:
        """
        request_host answers None (no value), a lower-case name without port
        and without a trailing dot, or raises BadRequestTarget; nothing else.
        """
        try:
            host = request_host(raw)
        except BadRequestTarget as e:
            self.assertTrue(e.reason)
            return
        if host is None:
            self.assertFalse(raw)
            return
        self.assertTrue(host)
        self.assertEqual(host, host.lower())
        self.assertTrue(host.isascii())
        self.assertFalse(host.endswith("."), host)
        self.assertFalse(host.startswith("."), host)
        self.assertNotIn("..", host)
        if host.startswith("["):
            self.assertTrue(host.endswith("]"), host)
            self.assertNotIn("[", host[1:])
            self.assertEqual(host.count("]"), 1, host)
        else:
            self.assertNotIn(":", host)
            self.assertFalse(set(host) & set("[]"), host)
        self.assertTrue(set(host) <= set("abcdefghijklmnopqrstuvwxyz0123456789-.:[]"), host)

    @given(HOSTS)
    def test_idempotent(self, raw: bytes) -> None:
        """Its own answer, given back as a Host, comes back unchanged."""
        try:
            host = request_host(raw)
        except BadRequestTarget:
            return
        if host is not None:
            self.assertEqual(request_host(host.encode("ascii")), host)

    @given(HOSTS, st.integers(0, 65535))
    def test_port_ignored(self, raw: bytes, port: int) -> None:
        """A port on an accepted host without one changes nothing."""
        try:
            host = request_host(raw)
        except BadRequestTarget:
            return
        if host is not None and raw.decode("ascii").lower() in (host, host + "."):
            self.assertEqual(request_host(raw + b":%d" % (port,)), host)
