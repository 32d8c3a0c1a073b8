"""
Adversarial suite, class 2: identity-header spoofing.

Every header the proxy sets (the identity headers, the access and ID token
headers, the forwarding headers) is sent by the client under every spelling
of L{spellings} (case, C{_}, C{.}), twice, and as a comma list, as raw bytes on
the real HTTP channel, on protected, public, optional, preflight, bearer and
mixed routes and on the proxy's own endpoints. The upstream records every
request: under any spelling it must see exactly the proxy's value, or
nothing. Headers that override the URL or the client address (C{X-Original-URL},
C{X-Rewrite-URL}, C{X-Forwarded-*}, C{Forwarded}) from untrusted peers never
change the route or the auth decision.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.proxy.headers import UNTRUSTED_OVERRIDES, canonical_header

from .adversarial import (
    CLIENT_ID,
    ISSUER,
    ROUTES,
    Failures,
    header_of,
    parse_response,
    spellings,
)
from .fakes import ProxyStack, make_config

PEER = "192.0.2.7"
PROXY_PEER = "192.0.2.99"
AUTH_TIME = 1_700_000_000
CLAIMS = {"preferred_username": "alice", "email": "alice@example.test", "groups": ["a", "b"],
          "acr": "gold", "auth_time": AUTH_TIME}
IDENTITY = {
    b"x-forwarded-user": [b"alice"],
    b"x-forwarded-email": [b"alice@example.test"],
    b"x-forwarded-groups": [b"a,b"],
    # The sign-in's, from [step_up] (step-up authentication).
    b"x-forwarded-acr": [b"gold"],
    b"x-forwarded-auth-time": [b"%d" % AUTH_TIME],
}
TOKEN_HEADERS = (b"x-forwarded-access-token", b"x-forwarded-id-token")
FORWARDING = {
    b"x-forwarded-for": [PEER.encode()],
    b"x-forwarded-proto": [b"http"],
    b"x-forwarded-host": [b"app.test"],
    b"forwarded": [b'for=' + PEER.encode() + b';proto=http;host="app.test"'],
}
MANAGED = [*IDENTITY, *TOKEN_HEADERS]
SPOOF = b"mallory"


def config(**changes: Any) -> Any:
    return make_config(routes=ROUTES, oidc={"pass_access_token": "header", "pass_id_token": True},
                       trusted_proxies=[PROXY_PEER], **changes)


def spoofing_lines(name: bytes) -> bytes:
    """Every spelling of C{name} with a spoofed value, a duplicate and a comma list."""
    lines = []
    for spelled in spellings(name.decode("ascii")):
        lines.append(spelled.encode("ascii") + b": " + SPOOF)
    lines.append(name + b": " + SPOOF + b", admin")
    lines.append(name + b": " + SPOOF)
    return b"\r\n".join(lines) + b"\r\n"


def request(method: bytes, target: str, cookie: Optional[bytes], extra: bytes = b"",
            more: Sequence[bytes] = ()) -> bytes:
    head = method + b" " + target.encode("ascii") + b" HTTP/1.1\r\nHost: app.test\r\n"
    if cookie:
        head += b"Cookie: " + cookie + b"\r\n"
    for line in more:
        head += line + b"\r\n"
    return head + extra + b"\r\n"


def seen(upstream_request: Dict[str, Any], name: bytes) -> List[Tuple[bytes, bytes]]:
    """Every (name, value) the upstream got whose name folds to C{name}."""
    return [(n, v) for n, v in upstream_request["headers"]
            if canonical_header(n) == canonical_header(name)]


def access_token(stack: ProxyStack, **claims: Any) -> str:
    now = int(stack.clock.seconds())
    body = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now, "exp": now + 300,
            "scope": "read", "preferred_username": "alice", "email": "alice@example.test",
            "groups": ["a", "b"], "acr": "gold", "auth_time": AUTH_TIME}
    body.update(claims)
    return stack.idp.id_token(body)


class Fixture:
    """A stack, a logged-in session's cookie and a bearer token."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.stack = ProxyStack(case, config=config())
        browser = self.stack.logged_in(claims=CLAIMS)
        cookie = browser.cookie_header()
        assert cookie is not None
        self.cookie = cookie
        self.bearer = b"Authorization: Bearer " + access_token(self.stack).encode("ascii")
        session_tokens = self.stack.idp.issued[-1]
        self.tokens = {b"x-forwarded-access-token": [session_tokens["access_token"].encode()],
                       b"x-forwarded-id-token": [session_tokens["id_token"].encode()]}

    def send(self, data: bytes, peer: str = PEER) -> Tuple[int, List[Tuple[bytes, bytes]],
                                                            Optional[Dict[str, Any]]]:
        before = len(self.stack.upstream.requests)
        out = self.stack.raw(data, peer)
        status, headers, _ = parse_response(out)
        after = self.stack.upstream.requests[before:]
        assert len(after) <= 1, after
        return status, headers, after[0] if after else None


# (label, method, target, with cookie, extra lines, identity expected upstream, tokens expected)
SCENARIOS = [
    ("protected", b"GET", "/app/x", True, (), True, True),
    ("public", b"GET", "/public/x", True, (), False, False),
    ("public anonymous", b"GET", "/public/x", False, (), False, False),
    ("optional anonymous", b"GET", "/opt/x", False, (), False, False),
    ("optional with session", b"GET", "/opt/x", True, (), True, True),
    ("preflight", b"OPTIONS", "/cors/x", False,
     (b"Origin: https://other.test", b"Access-Control-Request-Method: POST"), False, False),
    ("preflight with session", b"OPTIONS", "/cors/x", True,
     (b"Origin: https://other.test", b"Access-Control-Request-Method: POST"), False, False),
    ("bearer", b"GET", "/api/x", False, ("bearer",), True, False),
    ("mixed with session", b"POST", "/mixed/x", True, (b"Content-Length: 0",), True, True),
    ("mixed with bearer", b"GET", "/mixed/x", False, ("bearer",), True, False),
]


def check_upstream(failures: Failures, label: str, got: Dict[str, Any], identity: bool,
                   tokens: bool, fixture: Fixture, spoofed: Sequence[bytes]) -> None:
    """The upstream got exactly the proxy's value of each of C{spoofed}, or nothing."""
    for name in spoofed:
        expected: List[bytes] = []
        if name in IDENTITY and identity:
            expected = IDENTITY[name]
        elif name in TOKEN_HEADERS and tokens:
            expected = fixture.tokens[name]
        elif name in FORWARDING:
            expected = FORWARDING[name]
        found = seen(got, name)
        ok = [v for _, v in found] == expected and all(n == name for n, _ in found)
        failures.check(ok, label, name, f"upstream got {found}, expected {expected}")


class SpoofingTests(SynchronousTestCase):
    def check_upstream(self, failures: Failures, label: str, got: Dict[str, Any],
                       identity: bool, tokens: bool, fixture: Fixture,
                       spoofed: Sequence[bytes]) -> None:
        check_upstream(failures, label, got, identity, tokens, fixture, spoofed)

    def test_every_spelling_on_every_route(self):
        """
        Every managed and forwarding header, all spellings at once, on every
        kind of route: the upstream sees exactly the proxy's value or nothing.
        """
        fixture = Fixture(self)
        failures = Failures(self, "header spoofing")
        for label, method, target, with_cookie, extra, identity, tokens in SCENARIOS:
            # The string "bearer" stands for the fixture's Authorization line.
            more = [fixture.bearer if isinstance(line, str) else line for line in extra]
            for name in [*MANAGED, *FORWARDING]:
                status, _, got = fixture.send(request(
                    method, target, fixture.cookie if with_cookie else None,
                    spoofing_lines(name), more))
                if got is None:
                    failures.check(False, label, name, f"{status}: never reached the upstream")
                    continue
                self.check_upstream(failures, label, got, identity, tokens, fixture, [name])
        failures.done(len(SCENARIOS) * 9)

    def test_each_spelling_alone(self):
        """One spelling per request (no correct spelling beside it to hide behind)."""
        fixture = Fixture(self)
        failures = Failures(self, "single spelling")
        for name in [*MANAGED, *FORWARDING]:
            for spelled in spellings(name.decode("ascii")):
                line = spelled.encode("ascii") + b": " + SPOOF + b"\r\n"
                for label, target, cookie, identity in (
                        ("protected", "/app/x", fixture.cookie, True),
                        ("public", "/public/x", None, False)):
                    _, _, got = fixture.send(request(b"GET", target, cookie, line))
                    assert got is not None
                    self.check_upstream(failures, f"{label} {spelled}", got, identity, identity,
                                        fixture, [name])
        failures.done(100)

    def test_trusted_peer_forwarding_kept_identity_not(self):
        """
        From a trusted proxy the forwarding headers are extended, never
        replaced; identity headers are still the proxy's own.
        """
        fixture = Fixture(self)
        _, _, got = fixture.send(request(
            b"GET", "/app/x", fixture.cookie,
            b"X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-User: mallory\r\n"
            b"X_Forwarded_User: mallory\r\n"), peer=PROXY_PEER)
        assert got is not None
        self.assertEqual(seen(got, b"x-forwarded-for"),
                         [(b"x-forwarded-for", b"198.51.100.1, " + PROXY_PEER.encode())])
        self.assertEqual(seen(got, b"x-forwarded-user"), [(b"x-forwarded-user", b"alice")])

    def test_cookie_header_spellings(self):
        """The proxy's cookies never reach the upstream, in one Cookie line or several."""
        fixture = Fixture(self)
        session = fixture.cookie
        for lines in ([b"Cookie: " + session + b"; theme=dark"],
                      [b"Cookie: theme=dark", b"Cookie: " + session],
                      [b"Cookie: " + session + b";theme=dark;" + session]):
            _, _, got = fixture.send(request(b"GET", "/app/x", None, b"", lines))
            assert got is not None
            cookies = b"; ".join(v for n, v in got["headers"] if n == b"cookie")
            self.assertNotIn(b"oidcproxy", cookies, lines)
            self.assertIn(b"theme=dark", cookies, lines)


class EndpointTests(SynchronousTestCase):
    def test_forward_auth_answers_only_the_proxys_values(self):
        """
        The forward-auth endpoint copies identity headers into its answer:
        only the proxy's, never the client's (any spelling), for public and
        protected originals.
        """
        fixture = Fixture(self)
        failures = Failures(self, "forward auth")
        for uri, cookie, expected in (("/public/x", None, {}),
                                      ("/app/x", fixture.cookie, IDENTITY)):
            for name in MANAGED:
                data = request(b"GET", "/oidc/auth", cookie, spoofing_lines(name), [
                    b"X-Forwarded-Method: GET", b"X-Forwarded-Host: app.test",
                    b"X-Forwarded-Uri: " + uri.encode()])
                status, headers, got = fixture.send(data, peer=PROXY_PEER)
                self.assertIsNone(got)
                values = [(n, v) for n, v in headers if canonical_header(n) == name]
                want = [(name, v) for v in expected.get(name, [])]
                if name in TOKEN_HEADERS and cookie:
                    want = [(name, v) for v in fixture.tokens[name]]
                failures.check(status == 200 and values == want, uri, name,
                               f"{status} answered {values}")
        failures.done(10)

    def test_forward_auth_untrusted_peer(self):
        """From an untrusted peer the forward-auth endpoint refuses, whatever it claims."""
        fixture = Fixture(self)
        status, _, got = fixture.send(request(b"GET", "/oidc/auth", fixture.cookie, b"", [
            b"X-Forwarded-Uri: /app/x", b"X-Forwarded-For: " + PROXY_PEER.encode(),
            b"Forwarded: for=" + PROXY_PEER.encode(), b"X-Real-IP: " + PROXY_PEER.encode()]))
        self.assertEqual((status, got), (403, None))

    def test_own_endpoints_ignore_identity_headers(self):
        """Spoofed identity headers do not make the proxy's own endpoints think anyone is logged in."""
        fixture = Fixture(self)
        for target in ("/oidc/userinfo", "/oidc/logout"):
            status, _, got = fixture.send(request(b"GET", target, None, spoofing_lines(
                b"x-forwarded-user"), [b"Accept: application/json"]))
            self.assertIsNone(got)
            self.assertIn(status, (200, 401), target)
            if target == "/oidc/userinfo":
                self.assertEqual(status, 401)


OVERRIDES = sorted(UNTRUSTED_OVERRIDES) + [b"forwarded", b"x-forwarded-host", b"x-forwarded-proto"]


class OverrideTests(SynchronousTestCase):
    def test_overrides_never_route(self):
        """
        URL and address overrides naming a public path, from an untrusted
        peer: the protected request is still refused (401) and nothing
        reaches the upstream; on a public route they are dropped.
        """
        fixture = Fixture(self)
        failures = Failures(self, "overrides")
        values = [b"/public/x", b"https://app.test/public/x", b"127.0.0.1", b"https",
                  b"for=127.0.0.1;host=public.test;proto=https", b"public.test"]
        for name in OVERRIDES:
            for spelled in spellings(name.decode("ascii"))[:6]:
                lines = b"".join(spelled.encode() + b": " + v + b"\r\n" for v in values)
                status, _, got = fixture.send(request(b"GET", "/app/x", None, lines,
                                                      [b"Accept: application/json"]))
                failures.check(status == 401 and got is None, "protected", spelled,
                               f"{status}, upstream {'reached' if got else 'not reached'}")
                status, _, got = fixture.send(request(b"GET", "/public/x", None, lines))
                if got is None:
                    failures.check(False, "public", spelled, f"{status}: not forwarded")
                    continue
                if name in UNTRUSTED_OVERRIDES:
                    failures.check(seen(got, name) == [], "public", spelled,
                                   f"upstream got {seen(got, name)}")
                else:
                    failures.check([v for _, v in seen(got, name)] == FORWARDING[name],
                                   "public", spelled, f"upstream got {seen(got, name)}")
                failures.check(got["uri"] == b"/public/x", "public", spelled,
                               f"upstream target {got['uri']!r}")
        failures.done(100)

    def test_host_routes_follow_host_only(self):
        """
        A host-specific public route is chosen by the Host header alone:
        X-Forwarded-Host, X-Host, X-Original-Host or Forwarded naming it do
        not open the protected route.
        """
        routes = [{"host": "public.test", "path": "/", "upstream": "http://up.test", "auth": "none"},
                  *ROUTES]
        stack = ProxyStack(self, config=make_config(routes=routes))
        for line in (b"X-Forwarded-Host: public.test", b"X-Host: public.test",
                     b"X-Original-Host: public.test", b"Forwarded: host=public.test",
                     b"X_Forwarded_Host: public.test"):
            out = stack.raw(b"GET /app/x HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n"
                            + line + b"\r\n\r\n")
            status, _, _ = parse_response(out)
            self.assertEqual(status, 401, line)
        self.assertEqual(stack.upstream.requests, [])
        out = stack.raw(b"GET /app/x HTTP/1.1\r\nHost: public.test\r\n\r\n")
        self.assertEqual(parse_response(out)[0], 200)

    def test_duplicate_host_refused(self):
        """Two Host headers (or two spellings a folding upstream would merge) are refused with 400."""
        stack = ProxyStack(self)
        for lines in (b"Host: app.test\r\nHost: public.test\r\n",
                      b"Host: app.test\r\nhost: app.test\r\n"):
            out = stack.raw(b"GET /public/x HTTP/1.1\r\n" + lines + b"\r\n")
            status, headers, _ = parse_response(out)
            self.assertEqual(status, 400, lines)
            self.assertEqual(header_of(headers, b"location"), [])
        self.assertEqual(stack.upstream.requests, [])


ADMIN = "admin.example.test"
WWW = "www.example.test"
HOST_ROUTES = [
    {"host": ADMIN, "path": "/", "upstream": "http://up.test", "auth": "session"},
    {"host": ADMIN, "path": "/passed", "upstream": "http://up.test", "auth": "session",
     "pass_host_header": True},
    {"path": "/passed", "upstream": "http://up.test", "auth": "none", "pass_host_header": True},
    {"path": "/", "upstream": "http://up.test", "auth": "none"},
]


class AuthorityTests(SynchronousTestCase):
    """
    One authority per request (RFC 9112 3.2.2): an absolute-form target's
    authority replaces the client's Host, so the host that chose the route
    is the one every header sent upstream names.
    """

    def stack(self) -> ProxyStack:
        return ProxyStack(self, config=make_config(routes=HOST_ROUTES, trusted_proxies=[PROXY_PEER]))

    def send(self, stack: ProxyStack, target: str, host: str, extra: bytes = b"",
             peer: str = PEER) -> Tuple[int, Optional[Dict[str, Any]]]:
        before = len(stack.upstream.requests)
        out = stack.raw(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                        + b"\r\nAccept: application/json\r\n" + extra + b"\r\n", peer)
        status = parse_response(out)[0]
        after = stack.upstream.requests[before:]
        return status, after[0] if after else None

    def test_absolute_form_authority_is_forwarded(self):
        """
        GET http://www.../secret with Host: admin... is routed to www's
        public route, and the upstream hears of www only: X-Forwarded-Host,
        Forwarded host=, not the Host the client sent.
        """
        stack = self.stack()
        status, got = self.send(stack, f"http://{WWW}/secret", ADMIN)
        self.assertEqual(status, 200)
        assert got is not None
        self.assertEqual(seen(got, b"x-forwarded-host"), [(b"x-forwarded-host", WWW.encode())])
        self.assertEqual([v for _, v in seen(got, b"forwarded")],
                         [b"for=" + PEER.encode() + b';proto=http;host="' + WWW.encode() + b'"'])
        self.assertEqual([v for _, v in seen(got, b"host")], [b"up.test"])
        self.assertNotIn(ADMIN.encode(), b" ".join(v for _, v in got["headers"]))

    def test_absolute_form_to_the_protected_host(self):
        """The other way round: the target's admin host needs a login whatever Host says."""
        stack = self.stack()
        status, got = self.send(stack, f"http://{ADMIN}/secret", WWW)
        self.assertEqual((status, got), (401, None))

    def test_pass_host_header_sends_the_routed_authority(self):
        """With pass_host_header the upstream's Host is the target's authority, port and all."""
        stack = self.stack()
        status, got = self.send(stack, f"http://{WWW}:8443/passed/x", ADMIN)
        self.assertEqual(status, 200)
        assert got is not None
        self.assertEqual([v for _, v in seen(got, b"host")], [WWW.encode() + b":8443"])
        self.assertEqual([v for _, v in seen(got, b"x-forwarded-host")],
                         [WWW.encode() + b":8443"])

    def test_origin_form_unchanged(self):
        """An origin-form request keeps its Host: routed and forwarded by it."""
        stack = self.stack()
        status, got = self.send(stack, "/passed/x", WWW)
        self.assertEqual(status, 200)
        assert got is not None
        self.assertEqual([v for _, v in seen(got, b"host")], [WWW.encode()])
        self.assertEqual(self.send(stack, "/secret", ADMIN), (401, None))

    def test_malformed_authority_refused(self):
        """An absolute-form authority that is no host name is a 400, before anything else."""
        stack = self.stack()
        for target in (f"http://user@{WWW}/x", f"http://{WWW}:x/x", "http://[::1/x"):
            self.assertEqual(self.send(stack, target, WWW), (400, None), target)

    def test_forward_auth_original_url_authority_routes(self):
        """
        Forward auth with nginx's absolute X-Original-URL and no
        X-Forwarded-Host: the URL's host chooses the route, not the Host of
        the auth request itself.
        """
        stack = self.stack()
        status, got = self.send(stack, "/oidc/auth", "oidcproxy.internal",
                                f"X-Original-URL: http://{ADMIN}/secret\r\n".encode(),
                                peer=PROXY_PEER)
        self.assertEqual((status, got), (401, None))
        status, _ = self.send(stack, "/oidc/auth", "oidcproxy.internal",
                              f"X-Original-URL: http://{WWW}/secret\r\n".encode(),
                              peer=PROXY_PEER)
        self.assertEqual(status, 200)

    def test_forward_auth_authorities_must_agree(self):
        """
        X-Forwarded-Host and the authority of an absolute original URI
        (X-Original-URL, X-Forwarded-Uri, X-Original-URI) naming different
        hosts: 400, whichever of them names the public one. The same host
        with another port or case agrees.
        """
        stack = self.stack()
        failures = Failures(self, "forward-auth authorities")
        for lines in (
                f"X-Forwarded-Host: {ADMIN}\r\nX-Original-URL: http://{WWW}/secret\r\n",
                f"X-Forwarded-Host: {WWW}\r\nX-Original-URL: http://{ADMIN}/secret\r\n",
                f"X-Forwarded-Host: {ADMIN}\r\nX-Forwarded-Uri: http://{WWW}/secret\r\n",
                f"X-Forwarded-Host: {ADMIN}\r\nX-Original-URI: https://{WWW}/secret\r\n",
                f"X-Original-URL: http://{ADMIN}/secret\r\nX-Forwarded-Uri: http://{WWW}/secret\r\n"):
            status, _ = self.send(stack, "/oidc/auth", "oidcproxy.internal", lines.encode(),
                                  peer=PROXY_PEER)
            failures.check(status == 400, "disagree", lines, f"answered {status}")
        for lines in (
                f"X-Forwarded-Host: {ADMIN}\r\nX-Original-URL: http://{ADMIN.upper()}:8443/secret\r\n",
                f"X-Forwarded-Host: {ADMIN}:443\r\nX-Forwarded-Uri: /secret\r\n"):
            status, _ = self.send(stack, "/oidc/auth", "oidcproxy.internal", lines.encode(),
                                  peer=PROXY_PEER)
            failures.check(status == 401, "agree", lines, f"answered {status}")
        failures.done(7)


class ConnectionTests(SynchronousTestCase):
    """
    Headers a client names in Connection are hop-by-hop for the client's
    copies only: naming the proxy's own headers there never removes them.
    """

    def connection_lines(self, names: Sequence[bytes], casing: str) -> bytes:
        spelled = [getattr(n.decode("ascii"), casing)().encode("ascii") for n in names]
        return (b"Connection: keep-alive, " + b", ".join(spelled) + b", X-Private\r\n"
                + b"X-Private: secret\r\nX-Kept: 1\r\n")

    def test_managed_headers_named_in_connection(self):
        """
        Every identity, token and forwarding header named in Connection
        (lower, upper, title case; one Connection line or several) still
        reaches the upstream with the proxy's value, on every kind of route;
        the client's own X-Private named there does not, X-Kept does.
        """
        fixture = Fixture(self)
        failures = Failures(self, "Connection-named managed headers")
        names = [*MANAGED, *FORWARDING]
        for label, method, target, with_cookie, extra, identity, tokens in SCENARIOS:
            more = [fixture.bearer if isinstance(line, str) else line for line in extra]
            for casing in ("lower", "upper", "title"):
                lines = self.connection_lines(names, casing)
                _, _, got = fixture.send(request(method, target, fixture.cookie if with_cookie
                                                 else None, lines, more))
                if got is None:
                    failures.check(False, label, casing, "never reached the upstream")
                    continue
                check_upstream(failures, f"{label} {casing}", got, identity, tokens, fixture, names)
                failures.check(seen(got, b"x-private") == [], label, casing,
                               f"X-Private went upstream: {seen(got, b'x-private')}")
                failures.check(seen(got, b"x-kept") == [(b"x-kept", b"1")], label, casing,
                               f"X-Kept: {seen(got, b'x-kept')}")
        failures.done(len(SCENARIOS) * 3 * 3)

    def test_authorization_named_in_connection(self):
        """
        With pass_access_token = "authorization" the proxy's Authorization
        (the session's access token) reaches the upstream although the
        client named Authorization in Connection.
        """
        stack = ProxyStack(self, config=make_config(routes=ROUTES,
                                               oidc={"pass_access_token": "authorization"}))
        cookie = stack.logged_in(claims=CLAIMS).cookie_header()
        assert cookie is not None
        token = stack.idp.issued[-1]["access_token"].encode()
        for value in (b"Authorization", b"authorization", b"AUTHORIZATION, close"):
            before = len(stack.upstream.requests)
            stack.raw(request(b"GET", "/app/x", cookie, b"Connection: " + value + b"\r\n"
                              b"Authorization: Bearer mallory\r\n"))
            [got] = stack.upstream.requests[before:]
            self.assertEqual([v for _, v in seen(got, b"authorization")], [b"Bearer " + token],
                             value)
