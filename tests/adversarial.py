"""
Shared parts of the adversarial suite (C{tests/test_adv_*.py}): the whole
proxy in memory, generators of hostile inputs, and helpers that name the
input in every failure message.

L{Stack} is the proxy as the service builds it: an L{OIDCGuard} in front of an
L{UpstreamProxy} whose only upstream is a L{RecordingUpstream} (every request's
method, target and headers, repeats included), with a L{HostileIdP} behind a
real L{Provider}, all on one L{Clock}. Requests go in either through a
L{Browser} (treq's in-memory agent) or as raw bytes through a real
L{ProxySite} channel on a L{StringTransport}, where the exact bytes matter
(absolute-form targets, duplicate or odd header names, header limits).

The open-redirect corpus is oauth2-proxy's C{testdata/openredirects.txt} (MIT
licence), read where the workplace keeps it (C{../shared/testdata/} beside
the checkout) rather than copied into this repository; another location can
be given in C{$OIDCPROXY_REDIRECT_CORPUS}.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import OIDCGuard
from oidcproxy.config import Config
from oidcproxy.oidc.login import STATE_PURPOSE, LoginAttempt
from oidcproxy.oidc.provider import ClientAuth, Provider
from oidcproxy.proxy.headers import canonical_header
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.proxy.upstream import UpstreamClient, UpstreamProxy
from oidcproxy.service import body_limit_for, max_header_size
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.web.server import ProxySite

from .fakes import APP, CLIENT_ID, CLIENT_SECRET, SECRET, START, RecordingUpstream, make_config
from .idp import ISSUER, Browser, FakeIdP, Network, Page, public_jwk

__all__ = ["APP", "CLIENT_ID", "CLIENT_SECRET", "ISSUER", "SECRET"]

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_PLACES = [
    os.environ.get("OIDCPROXY_REDIRECT_CORPUS", ""),
    os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "testdata", "openredirects.txt"),
    "/work/shared/testdata/openredirects.txt",
]

PUBLIC_ORIGIN_ROOT = APP + "/"
"""Where every refused redirect lands: the configured public URL's root."""

API = {b"accept": [b"application/json"]}

ROUTES = [
    {"path": "/public", "upstream": "http://up.test", "auth": "none"},
    {"path": "/opt", "upstream": "http://up.test", "auth": "optional"},
    {"path": "/cors", "upstream": "http://up.test", "cors_preflight": True},
    {"path": "/api", "upstream": "http://up.test", "auth": "bearer"},
    {"path": "/mixed", "upstream": "http://up.test", "auth": "session_or_bearer"},
    {"path": "/small", "upstream": "http://up.test", "auth": "none", "max_body_size": 1024},
    {"path": "/", "upstream": "http://up.test"},
]


# -- inputs ------------------------------------------------------------------------------


def corpus() -> List[str]:
    """Every line of the open-redirect corpus (the test is skipped, saying why, without it)."""
    from twisted.trial.unittest import SkipTest

    found = [p for p in CORPUS_PLACES if p and os.path.isfile(p)]
    if not found:
        raise SkipTest("the open-redirect corpus openredirects.txt is not at any of "
                       + ", ".join(p for p in CORPUS_PLACES if p))
    with open(found[0], encoding="utf-8") as f:
        lines = f.read().split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def three_ways(value: str) -> List[Tuple[str, str]]:
    """C{value} raw, percent-decoded once and percent-encoded once, labelled."""
    return [("raw", value), ("decoded", unquote(value)), ("encoded", quote(value, safe=""))]


def casings(word: str, count: int = 12, seed: int = 8) -> List[str]:
    """C{word} in lower, upper, title and C{count} random mixed cases (deterministic)."""
    rng = random.Random(seed)
    out = {word.lower(), word.upper(), word.title(),
           "".join(c.upper() if i % 2 else c for i, c in enumerate(word.lower()))}
    while len(out) < count + 3:
        out.add("".join(c.upper() if rng.random() < 0.5 else c for c in word.lower()))
    return sorted(out)


EVIL = "evil.test"
CONTROLS = ["\t", "\n", "\r", "\x0b", "\x0c", "\x00", " ", "\x7f"]
LOOKALIKE_SLASHES = ["\uff0f", "\u2215", "\u2044", "\u29f8", "\u3031", "\u3035", "\u30fd", "\ufe68",
                     "\uff3c", "\u2216"]
LOOKALIKE_DOTS = ["\u3002", "\uff0e", "\uff61", "\u2024"]


def extra_redirects() -> List[Tuple[str, str]]:
    """
    The open-redirect classes of issue 8 item 1 beyond the corpus, as
    C{(label, target)}: backslashes, control characters at every position,
    userinfo, C{#@} and C{?@}, numeric and IPv6 hosts, look-alike slashes and
    dots, script schemes in any case, over-long targets.
    """
    cases: List[Tuple[str, str]] = []
    for target in ["/\\" + EVIL, "\\\\" + EVIL, "\\/" + EVIL, "/\\/" + EVIL, "//\\" + EVIL,
                   "/%5C" + EVIL, "%5C%5C" + EVIL, "/%5c%5c" + EVIL, "/x/..\\..\\" + EVIL,
                   "https:\\\\" + EVIL, "https:/\\" + EVIL, "/.\\" + EVIL]:
        cases.append(("backslash", target))
    for base in ["//" + EVIL, "/x", "/" + EVIL, "https://" + EVIL]:
        for control in CONTROLS:
            for at in range(len(base) + 1):
                cases.append((f"control {control!r}@{at}", base[:at] + control + base[at:]))
                cases.append((f"encoded control {control!r}@{at}",
                              base[:at] + quote(control, safe="") + base[at:]))
    for allowed in ["app.test", "app.test:443", "www.whitelisteddomain.tld"]:
        for scheme in ["https://", "http://", "//", "/\\", ""]:
            cases += [
                ("userinfo", f"{scheme}{allowed}@{EVIL}"),
                ("userinfo", f"{scheme}{allowed}:pw@{EVIL}/"),
                ("#@", f"{scheme}{allowed}#@{EVIL}"),
                ("?@", f"{scheme}{allowed}?@{EVIL}"),
                ("%40", f"{scheme}{allowed}%40{EVIL}"),
                ("dotted", f"{scheme}{allowed}.{EVIL}"),
            ]
    for host in ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1", "0", "[::1]",
                 "[::ffff:127.0.0.1]", "[0:0:0:0:0:ffff:7f00:1]", "3627734734", "0xd8.0x3a.0xd6.0xce",
                 "[fe80::1%25eth0]"]:
        for scheme in ["http://", "https://", "//", "///", "/\\", "\\\\"]:
            cases.append(("numeric host", scheme + host + "/"))
    for slash in LOOKALIKE_SLASHES:
        cases += [("look-alike slash", slash * 2 + EVIL), ("look-alike slash", "/" + slash + EVIL),
                  ("look-alike slash", slash + "/" + EVIL),
                  ("look-alike slash", "/" + quote(slash) + EVIL)]
    for dot in LOOKALIKE_DOTS:
        cases += [("look-alike dot", "//evil" + dot + "test"),
                  ("look-alike dot", "/x/" + dot + dot + "/" + dot + dot + "//" + EVIL),
                  ("look-alike dot", "/" + dot + "/" + EVIL)]
    for scheme in ["javascript", "data", "vbscript"]:
        for spelled in casings(scheme):
            body = {"javascript": "alert(document.domain)", "vbscript": "msgbox(1)",
                    "data": "text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="}[scheme]
            cases += [("script scheme", f"{spelled}:{body}"),
                      ("script scheme", f" {spelled}:{body}"),
                      ("script scheme", f"\t{spelled}:{body}"),
                      ("script scheme", f"{spelled[:4]}\t{spelled[4:]}:{body}"),
                      ("script scheme", f"{spelled}%3A{body}"),
                      ("script scheme", f"{spelled}&colon;{body}")]
    for size in (2049, 4096, 10_000):
        cases.append(("over-long", "/" + "a" * (size - 1)))
        cases.append(("over-long", "/ok?" + "b" * (size - 4)))
    cases.append(("over-long", "/" + "%61" * 2100))
    return cases


def redirect_inputs() -> List[Tuple[str, str]]:
    """Every redirect target to refuse: the corpus and the extras, each three ways."""
    out: List[Tuple[str, str]] = []
    for number, line in enumerate(corpus(), 1):
        for how, value in three_ways(line):
            out.append((f"corpus line {number} {how}", value))
    for label, target in extra_redirects():
        for how, value in three_ways(target):
            out.append((f"{label} {how}", value))
    # Unique values, first label kept: the same value twice proves nothing more.
    seen: Dict[str, str] = {}
    for label, value in out:
        seen.setdefault(value, label)
    return [(label, value) for value, label in seen.items()]


SAFE_TARGETS = [
    ("/", "/"),
    ("/dashboard", "/dashboard"),
    ("/a/b?x=1&y=2", "/a/b?x=1&y=2"),
    ("/search?q=%2Fetc", None),  # decodes to "/etc" in a query: "/search?q=/etc" is safe too
    ("/" + "a" * 2047, "/" + "a" * 2047),
]
"""Targets that must be kept (C{expected} None: the target itself): the suite is not vacuous."""


MARKUP = [
    "<script>alert(1)</script>",
    "\"><script>alert(1)</script>",
    "'><img src=x onerror=alert(1)>",
    "<svg/onload=alert(1)>",
    "javascript:alert(1)",
    "</title><script>alert(1)</script>",
    "&lt;script&gt;",
    "\" autofocus onfocus=\"alert(1)",
    "<a href='//evil.test'>x</a>",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "<iframe srcdoc='<script>alert(1)</script>'>",
    "{{7*7}}<b>",
]
"""Markup that must never come back unescaped in a page."""

DANGEROUS_FRAGMENTS = ["<script", "<img", "<svg", "<iframe", "<a href", "onerror=", "onload=",
                       "onfocus=", "<b>"]


def reflected_markup(body: bytes) -> List[str]:
    """The dangerous fragments of L{MARKUP} that appear unescaped in C{body}."""
    text = body.decode("utf-8", "replace").lower()
    return [fragment for fragment in DANGEROUS_FRAGMENTS
            if text.count(fragment) > _own_count(fragment, text)]


def _own_count(fragment: str, text: str) -> int:
    """How often the proxy's own page markup holds C{fragment} (its continue links)."""
    if fragment == "<a href":
        return text.count('<a href="https://') + text.count('<a href="/')
    return 0


def spellings(name: str) -> List[str]:
    """
    A header name as a client may send it to get past a filter: cases,
    C{_} and C{.} instead of C{-}, mixed.
    """
    lower = name.lower()
    parts = lower.split("-")
    out = {
        name, lower, name.upper(), name.title(), name.swapcase(),
        "_".join(parts), "_".join(parts).upper(), ".".join(parts),
        ".".join(p.title() for p in parts),
    }
    for i in range(1, len(parts)):
        out.add("-".join(parts[:i]) + "_" + "-".join(parts[i:]))
        out.add("_".join(parts[:i]) + "." + ".".join(parts[i:]))
    rng = random.Random(name)
    for _ in range(4):
        out.add("".join(c.upper() if rng.random() < 0.5 else c for c in lower))
    return sorted(out)


def same_header(name: bytes, wanted: bytes) -> bool:
    """Whether C{name} is C{wanted} to an upstream that folds case, C{_} and C{.}."""
    return canonical_header(name) == canonical_header(wanted)


# -- the IdP ---------------------------------------------------------------------------


class HostileIdP(FakeIdP):
    """
    The fake IdP with hooks for a hostile one: C{forge} replaces the ID
    token it would sign (at login and refresh) with anything; C{extra_keys}
    go into its JWKS beside its own key.
    """

    def __init__(self, clock: Any, client_id: str, client_secret: Optional[str] = None) -> None:
        super().__init__(clock, client_id, client_secret)
        self.forge: Optional[Callable[[Dict[str, Any]], str]] = None
        self.extra_keys: List[Dict[str, Any]] = []
        self.jwks_fetches = 0

    def id_token(self, claims: Any, kid: Optional[str] = None) -> str:
        if self.forge is not None:
            return self.forge(dict(claims))
        return super().id_token(claims) if kid is None else super().id_token(claims, kid)

    def render(self, request: Any) -> Any:
        if request.path == b"/jwks":
            self.jwks_fetches += 1
            return self._json(request, 200, {"keys": [public_jwk(), *self.extra_keys]})
        return super().render(request)


# -- the proxy ---------------------------------------------------------------------------


class Stack:
    """
    The proxy, whole and in memory (see the module docstring).

    @param config: default: L{make_config} with L{ROUTES}.
    @param memory_store: sessions in a L{MemoryStore} (needed for
        back-channel logout); default: the stateless cookie store.
    @param trusted: peers whose forwarding headers are believed (default:
        the configuration's C{trusted_proxies}).
    @param idp_logout: the IdP advertises end_session and revocation endpoints.
    @param jwks_extra: more public JWKs in the IdP's JWKS, beside its own.
    """

    def __init__(self, case: SynchronousTestCase, config: Optional[Config] = None,
                 memory_store: bool = False, trusted: Sequence[str] = (),
                 idp_logout: bool = False, jwks_extra: Sequence[Dict[str, Any]] = ()) -> None:
        self.case = case
        self.clock = Clock()
        self.clock.advance(START)
        self.config = config or make_config(routes=ROUTES)
        self.network = Network()
        self.idp = HostileIdP(self.clock, CLIENT_ID, CLIENT_SECRET)
        self.idp.advertise_logout = idp_logout
        self.idp.extra_keys = list(jwks_extra)
        self.stub = self.network.add(StubTreq(self.idp))
        oidc = self.config.oidc
        assert oidc is not None
        self.provider = Provider(ISSUER, ClientAuth(client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                                 self.stub, self.clock, timeout=oidc.timeout,
                                 jwks_min_refresh=oidc.jwks_min_refresh_interval)
        self.upstream = RecordingUpstream()
        routes = RouteTable(self.config.routes)
        trusted_nets = [ipaddress.ip_network(t) for t in trusted] or list(self.config.trusted_proxies)

        def client_factory(route: Any) -> UpstreamClient:
            agent = self.network.add(RequestTraversalAgent(self.upstream))
            return UpstreamClient(agent, route.settings.max_connections)

        self.proxy = UpstreamProxy(routes, self.clock, trusted_nets, client_factory=client_factory)
        self.store = MemoryStore(self.clock) if memory_store else None
        self.guard = OIDCGuard(self.config, self.proxy, self.clock, provider=self.provider,
                               store=self.store, routes=routes,
                               max_cookie_bytes=self.config.session.max_cookie_chunks * 3800)
        self.site = ProxySite(self.guard, clock=self.clock,
                              body_limit=body_limit_for(routes, self.config.upstream.max_body_size),
                              access_log=False, reactor=self.clock,
                              max_header_size=max_header_size(self.config))
        case.addCleanup(self.guard.stop)
        self.guard.start()
        self.network.pump()
        assert self.provider.ready, "the fake IdP did not load"

    # -- clients

    def browser(self) -> Browser:
        return Browser(self.network, self.guard, APP)

    def login(self, browser: Optional[Browser] = None, path: str = "/", sub: str = "user-1",
              claims: Optional[Dict[str, Any]] = None, **issue: Any) -> Tuple[Browser, Page]:
        """A whole login started by navigating to C{path}: the browser and the callback's page."""
        from urllib.parse import urlencode

        from .idp import authorize_params

        browser = browser or self.browser()
        start = browser.navigate(path)
        self.case.assertEqual(start.code, 302, start.body)
        params = authorize_params(start)
        code = self.idp.issue_code(nonce=params["nonce"], sub=sub, claims=claims,
                                   code_verifier_challenge=params.get("code_challenge"), **issue)
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        return browser, page

    def logged_in(self, sub: str = "user-1", claims: Optional[Dict[str, Any]] = None) -> Browser:
        browser, page = self.login(sub=sub, claims=claims)
        self.case.assertEqual(page.code, 302, page.body)
        return browser

    def raw(self, data: bytes, peer: str = "192.0.2.7") -> bytes:
        """
        Send C{data} on a new connection of the real HTTP channel (from
        C{peer}), let everything settle, and return every byte answered.
        """
        address = IPv4Address("TCP", peer, 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address,
                                    hostAddress=IPv4Address("TCP", "10.0.0.1", 443))
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.network.pump()
        self.clock.advance(0)
        self.network.pump()
        out = transport.value()
        if not transport.disconnecting:
            channel.connectionLost(ConnectionDoneFailure())
        return out

    # -- reading what happened

    def upstream_since(self, count: int) -> List[Dict[str, Any]]:
        return self.upstream.requests[count:]


def ConnectionDoneFailure() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


def parse_response(data: bytes) -> Tuple[int, List[Tuple[bytes, bytes]], bytes]:
    """C{(status, [(lower-case name, value)], body)} of the first response in C{data}."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1."), f"not an HTTP response: {data[:200]!r}"
    status = int(lines[0].split(b" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers, body


def header_of(headers: List[Tuple[bytes, bytes]], name: bytes) -> List[bytes]:
    return [v for n, v in headers if n == name]


def open_state(value: str) -> LoginAttempt:
    """The login attempt inside a state cookie (the test knows the secret)."""
    plain = Sealer([SECRET.encode("ascii")]).unseal(value, STATE_PURPOSE)
    assert plain is not None, "the state cookie does not open"
    attempt = LoginAttempt.from_bytes(plain)
    assert attempt is not None
    return attempt


class Failures:
    """
    Collects the failed cases of a table, so one test reports all of them
    (each naming its input) instead of stopping at the first.
    """

    def __init__(self, case: SynchronousTestCase, what: str) -> None:
        self.case = case
        self.what = what
        self.items: List[str] = []
        self.count = 0

    def check(self, ok: bool, label: str, value: Any, detail: str) -> None:
        self.count += 1
        if not ok:
            self.items.append(f"{label}: {value!r:.200}: {detail}")

    def done(self, at_least: int = 1) -> None:
        self.case.assertGreaterEqual(self.count, at_least, f"{self.what}: too few cases ran")
        if self.items:
            shown = "\n  ".join(self.items[:40])
            more = f"\n  ... and {len(self.items) - 40} more" if len(self.items) > 40 else ""
            self.case.fail(f"{self.what}: {len(self.items)} of {self.count} cases failed:\n  "
                           f"{shown}{more}")


def iter_pairs(values: Sequence[Any], stride: int) -> Iterator[Any]:
    """Every C{stride}-th value (and the last): a sample for the expensive paths."""
    for i, value in enumerate(values):
        if i % stride == 0 or i == len(values) - 1:
            yield value


def json_body(page: Page) -> Any:
    return json.loads(page.body.decode("utf-8"))
