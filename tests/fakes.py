"""
The unit tests' fixture stack: every in-memory part a test needs, built in
one place, in layers that compose (each usable alone).

- the clock: a L{Clock} at L{START} (L{clock_at});
- L{IdPStack}: the clock, the in-memory L{Network} and a fake IdP on it
  (L{tests.idp.FakeIdP}, or any resource made from the clock, such as
  L{HostileIdP}), reached through a C{StubTreq} (C{stub});
- L{ProviderStack}: that, and the IdP client (L{Provider}) on the stub;
- L{GuardStack}: that, and a guard built the production way
  (L{oidcproxy.assemble.OIDCGuard}: every part built from the configuration,
  only the network-facing ones given: the IdP's HTTP client, and the session
  store when asked) in front of an L{App} or any resource;
- L{ProxyStack}: that, with the proxy engine (L{UpstreamProxy} to a
  L{RecordingUpstream}) behind the guard and a L{ProxySite} in front, for
  whole-proxy tests (L{ProxyStack.raw}: bytes over a real HTTP channel);
- L{RefresherStack}: a L{Refresher} over a provider double whose refresh
  grants wait for the test (L{PendingProvider}) and a memory store.

Beside them: the upstream doubles (L{RecordingUpstream}, L{FailingAgent},
L{HangingAgent}), the test configuration (L{make_config}) and readers of what
the guard handed out (L{open_session}, L{state_cookies}, ...).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlencode

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from oidcproxy import identity
from oidcproxy.assemble import OIDCGuard
from oidcproxy.config import Config, parse_config
from oidcproxy.core.context import RequestContext, context
from oidcproxy.oidc.provider import ClientAuth, Provider
from oidcproxy.oidc.refresh import Refresher
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.proxy.upstream import UpstreamClient, UpstreamProxy
from oidcproxy.service import body_limit_for, max_header_size
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.session import Session
from oidcproxy.sessions.stores.cookie import PURPOSE as SESSION_PURPOSE
from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.web.parts import GuardState
from oidcproxy.web.server import ProxySite

from .idp import (
    AUTHORIZATION_ENDPOINT,
    ISSUER,
    Browser,
    FakeIdP,
    Network,
    Page,
    authorize_params,
    public_jwk,
    split_location,
)

__all__ = ["ISSUER"]

APP = "https://app.test"
CLIENT_ID = "app-client"
CLIENT_SECRET = "s3cret-value"
SECRET = "c42dacc28d67d200a5823db137cd1860cc3092b2e09cf874b5dab1201d1d3876"
"""A session secret as the config takes it: 32 random bytes in hex."""
OTHER_SECRET = "ac5129861f4829c394932ecba50aa5fa554f80fe2b688be4c9c6ffb074b5f1b7"
"""A second one (rotation, another deployment)."""
SESSION_COOKIE = "__Host-oidcproxy"
STATE_PREFIX = "__Host-oidcproxy_state_"
START = 1_700_000_000.0
"""The Clock's time when a test begins (epoch seconds)."""

API = {b"accept": [b"application/json"]}
USER_CLAIMS = {
    "preferred_username": "alice",
    "email": "alice@example.test",
    "groups": ["a", "b"],
}

PROXY_ROUTES = [
    {"path": "/public", "upstream": "http://up.test", "auth": "none"},
    {"path": "/opt", "upstream": "http://up.test", "auth": "optional"},
    {"path": "/cors", "upstream": "http://up.test", "cors_preflight": True},
    {"path": "/api", "upstream": "http://up.test", "auth": "bearer"},
    {"path": "/mixed", "upstream": "http://up.test", "auth": "session_or_bearer"},
    {"path": "/small", "upstream": "http://up.test", "auth": "none", "max_body_size": 1024},
    {"path": "/", "upstream": "http://up.test"},
]
"""The routes of L{ProxyStack}'s default configuration: one of each kind."""


def make_config(**changes: Any) -> Config:
    """
    The test configuration, as the TOML file would give it; a table in
    C{changes} is merged into the default one, anything else replaces.
    """
    data: Dict[str, Any] = {
        "public_url": APP,
        "oidc": {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "session": {"secrets": [SECRET]},
        "routes": [
            {"path": "/", "auth": "session", "upstream": "http://up.test"},
            {"path": "/public", "auth": "none", "upstream": "http://up.test"},
        ],
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, "t.toml")


def clock_at(now: float = START) -> Clock:
    """A L{Clock} showing C{now}."""
    clock = Clock()
    clock.advance(now)
    return clock


# -- the upstream side ------------------------------------------------------------------


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


class App(RecordingUpstream):
    """The embedding application: records requests and what L{identity} says."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.identities: List[Any] = []
        self.action: Optional[Callable[[Any], Any]] = None
        """Called with each request before the answer (set by tests)."""

    def _answer(self, request: Any) -> bytes:
        self.identities.append(identity(request))
        if self.action is not None:
            self.action(request)
        request.setHeader(b"content-type", b"text/plain")
        return b"hello from the app"


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


# -- the IdP side -----------------------------------------------------------------------


class HostileIdP(FakeIdP):
    """
    The fake IdP with hooks for a hostile one: C{forge} replaces the ID
    token it would sign (at login and refresh) with anything; C{extra_keys}
    go into its JWKS beside its own key.
    """

    def __init__(self, clock: Any, client_id: str = CLIENT_ID,
                 client_secret: Optional[str] = CLIENT_SECRET) -> None:
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


def fake_idp(clock: Clock) -> FakeIdP:
    """The default IdP of the stacks: L{FakeIdP} at L{ISSUER}, knowing our client."""
    return FakeIdP(clock, CLIENT_ID, CLIENT_SECRET)


class IdPStack:
    """
    The bottom of the stack: a Clock at C{now}, the in-memory network, and an
    IdP on it reached through C{stub} (a C{StubTreq} the network pumps).

    @param idp: makes the IdP (any resource) from the Clock; default L{fake_idp}.
    """

    def __init__(self, idp: Callable[[Clock], Any] = fake_idp, now: float = START) -> None:
        self.clock = clock_at(now)
        self.network = Network()
        self.idp = idp(self.clock)
        self.stub = self.network.add(StubTreq(self.idp))

    def pump(self) -> None:
        """Let every in-memory connection settle."""
        self.network.pump()


class ProviderStack(IdPStack):
    """
    The IdP client alone: a L{Provider} for C{issuer} and C{client} on the
    stack's stub and Clock, with any more of its arguments.

    @param start: start it (discovery, keys) and let the network settle.
    """

    def __init__(self, idp: Callable[[Clock], Any] = fake_idp, *, issuer: str = ISSUER,
                 client: Optional[ClientAuth] = None, start: bool = True, now: float = START,
                 **provider_kwargs: Any) -> None:
        super().__init__(idp, now)
        self.issuer = issuer
        self.client = client or ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET)
        self.provider = Provider(issuer, self.client, self.stub, self.clock, **provider_kwargs)
        if start:
            self.provider.start()
            self.flush()

    def flush(self) -> None:
        self.network.pump()

    def run(self, coroutine: Any) -> defer.Deferred:
        """Run C{coroutine} (of the provider, usually) and let the network settle."""
        d = defer.Deferred.fromCoroutine(coroutine)
        self.flush()
        return d


class GuardStack(IdPStack):
    """
    A guard (with its IdP, IdP client and Clock) and a way to make browsers.

    The guard is L{oidcproxy.assemble.OIDCGuard}, built from C{config} as the
    service builds it; only the IdP's HTTP client (the stack's stub) and,
    when asked, the session store are given.

    @param config: default: L{make_config}.
    @param wrapped: the guarded resource (default: an L{App}, C{app}).
    @param build: makes the guarded resource from the stack (its Clock,
        network and configuration), instead of C{wrapped}.
    @param idp: makes the IdP from the Clock (default: L{fake_idp}).
    @param memory_store: keep sessions in a L{MemoryStore} (default: what
        the configuration says, the stateless cookie store unless told).
    @param store: makes the session store from the Clock (instead of
        C{memory_store}).
    @param iss_parameter_supported: the IdP advertises RFC 9207.
    @param discovery_status: the IdP's discovery endpoint answers this.
    @param start: start the guard (loads discovery and keys) as the service does.
    @param guard_kwargs: more arguments of the L{OIDCGuard} (C{metrics},
        C{routes}, C{bearer_keys_http}, ...).
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        config: Optional[Config] = None,
        *,
        wrapped: Any = None,
        build: Optional[Callable[[Any], Any]] = None,
        idp: Callable[[Clock], Any] = fake_idp,
        memory_store: bool = False,
        store: Optional[Callable[[Clock], Any]] = None,
        iss_parameter_supported: bool = False,
        discovery_status: int = 200,
        start: bool = True,
        **guard_kwargs: Any,
    ) -> None:
        super().__init__(idp)
        self.case = case
        self.idp.iss_parameter_supported = iss_parameter_supported
        self.idp.discovery_status = discovery_status
        self.config = config or make_config()
        self.app = App()
        if build is not None:
            wrapped = build(self)
        self.store = store(self.clock) if store is not None else \
            MemoryStore(self.clock) if memory_store else None
        self.guard = OIDCGuard(self.config, wrapped if wrapped is not None else self.app,
                               self.clock, idp_http=self.stub, store=self.store, **guard_kwargs)
        provider = self.guard.parts.provider
        assert provider is not None
        self.provider: Provider = provider
        self.metrics = self.guard.parts.metrics
        case.addCleanup(self.guard.stop)
        if start:
            self.start()

    def start(self) -> None:
        """Start the guard as the service does, and let discovery and keys load."""
        self.guard.start()
        self.network.pump()

    @property
    def state(self) -> GuardState:
        """What the guard's units share (for driving one unit directly)."""
        state: GuardState = self.guard._state
        return state

    # -- clients

    def browser(self) -> Browser:
        return Browser(self.network, self.guard, APP)

    def authorize(self, browser: Browser, path: str = "/") -> Dict[str, str]:
        """Navigate to C{path} and return the parameters of the IdP redirect."""
        page = browser.navigate(path)
        self.case.assertEqual(page.code, 302, page.body)
        base, _ = split_location(page)
        self.case.assertEqual(base, AUTHORIZATION_ENDPOINT)
        return authorize_params(page)

    def login(self, browser: Browser, path: str = "/", sub: str = "user-1",
              claims: Optional[Dict[str, Any]] = None, **issue: Any) -> Page:
        """A whole login started at C{path}; the callback's answer."""
        params = self.authorize(browser, path)
        code = self.idp.issue_code(
            nonce=params["nonce"], sub=sub, claims=claims,
            code_verifier_challenge=params["code_challenge"], **issue)
        return browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))

    def logged_in(self, sub: str = "user-1", claims: Optional[Dict[str, Any]] = None) -> Browser:
        """A browser with a session (checked)."""
        browser = self.browser()
        page = self.login(browser, sub=sub, claims=claims)
        self.case.assertEqual(page.code, 302, page.body)
        self.case.assertIn(SESSION_COOKIE, browser.jar)
        return browser


class ProxyStack(GuardStack):
    """
    The proxy, whole and in memory, as L{oidcproxy.service.build_site} puts
    it together: the guard in front of an L{UpstreamProxy} whose upstreams are
    reached through C{agent} (default: the L{RecordingUpstream} C{upstream}),
    one route table for both, behind a L{ProxySite} (C{site}). Requests go in
    through a browser or as raw bytes (L{raw}).

    @param config: default: L{make_config} with L{PROXY_ROUTES}.
    @param idp: default: a L{HostileIdP}.
    @param idp_logout: the IdP advertises end_session and revocation endpoints.
    @param jwks_extra: more public JWKs in the IdP's JWKS, beside its own.
    @param agent: the upstreams' agent.
    @param metrics: where the guard, the proxy and the site count (default:
        the guard's own; the proxy and the site count nowhere).
    @param proxy_kwargs: more arguments of the L{UpstreamProxy} (C{sockets},
        C{endpoints}).
    @param body_limit: the site's default body limit (default: C{upstream.max_body_size}).
    @param access_log: the site writes the access log.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        config: Optional[Config] = None,
        *,
        idp: Callable[[Clock], Any] = HostileIdP,
        idp_logout: bool = False,
        jwks_extra: Any = (),
        agent: Any = None,
        metrics: Any = None,
        proxy_kwargs: Optional[Dict[str, Any]] = None,
        body_limit: Optional[int] = None,
        access_log: bool = False,
        start: bool = True,
        **guard_options: Any,
    ) -> None:
        config = config or make_config(routes=PROXY_ROUTES)
        self.upstream = RecordingUpstream()
        self.routes = RouteTable(config.routes)
        counted = {} if metrics is None else {"metrics": metrics}

        def build(stack: GuardStack) -> UpstreamProxy:
            def client_factory(route: Any) -> UpstreamClient:
                upstream_agent = agent if agent is not None else \
                    stack.network.add(RequestTraversalAgent(self.upstream))
                return UpstreamClient(upstream_agent, route.settings.max_connections)

            return UpstreamProxy(self.routes, stack.clock, list(config.trusted_proxies),
                                 client_factory=client_factory, **counted, **(proxy_kwargs or {}))

        super().__init__(case, config, build=build, idp=idp, start=False, routes=self.routes,
                         max_cookie_bytes=config.session.max_cookie_chunks * 3800,
                         **counted, **guard_options)
        self.idp.advertise_logout = idp_logout
        self.idp.extra_keys = list(jwks_extra)
        self.site = ProxySite(
            self.guard, clock=self.clock,
            body_limit=body_limit_for(self.routes, body_limit if body_limit is not None
                                      else config.upstream.max_body_size),
            access_log=access_log, reactor=self.clock, max_header_size=max_header_size(config),
            **counted)
        if start:
            self.start()
            assert self.provider.ready, "the fake IdP did not load"

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
            channel.connectionLost(Failure(ConnectionDone()))
        return out

    def upstream_since(self, count: int) -> List[Dict[str, Any]]:
        return self.upstream.requests[count:]


# -- the refresher ----------------------------------------------------------------------


class PendingProvider:
    """The provider double of L{RefresherStack}: each refresh grant waits until answered."""

    def __init__(self) -> None:
        self.pending: List[defer.Deferred] = []
        self.refresh_tokens: List[str] = []

    def refresh(self, refresh_token: str) -> defer.Deferred:
        self.refresh_tokens.append(refresh_token)
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    def keys_for(self, kid: Optional[str]) -> defer.Deferred:
        return defer.succeed("keys")


class NoLockStore(MemoryStore):
    """A store that cannot lock (like the cookie store): single-process coordination only."""

    lock = None  # type: ignore[assignment]


class LockingStore(MemoryStore):
    """A MemoryStore with the Redis store's cross-process lock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.locks: Dict[str, str] = {}

    def lock(self, name: str, lease: float) -> defer.Deferred:
        if name in self.locks:
            return defer.succeed(None)
        self.locks[name] = "token"
        return defer.succeed("token")

    def unlock(self, name: str, token: str) -> defer.Deferred:
        if self.locks.get(name) == token:
            del self.locks[name]
        return defer.succeed(None)


class RefresherStack:
    """
    A L{Refresher} alone: on a Clock at C{now}, over a L{PendingProvider}
    (C{provider}) and a store made from the Clock (default: L{NoLockStore}),
    validating refreshed ID tokens with C{validate}.
    """

    def __init__(self, validate: Callable[[str, Any], Dict[str, Any]],
                 store: Callable[[Clock], Any] = NoLockStore, now: float = START,
                 **refresher_kwargs: Any) -> None:
        self.clock = clock_at(now)
        self.provider = PendingProvider()
        self.store = store(self.clock)
        self.refresher = Refresher(self.provider, validate, self.store, self.clock,  # type: ignore[arg-type]
                                   **refresher_kwargs)

    def answer(self, index: int = -1, **tokens: Any) -> None:
        """The IdP answers refresh grant C{index} with new tokens (C{tokens} added)."""
        body = {"access_token": "at-2", "token_type": "Bearer", "expires_in": 300}
        body.update(tokens)
        self.provider.pending[index].callback(body)


# -- reading what the guard handed out --------------------------------------------------


def state_cookies(browser: Browser) -> List[str]:
    return sorted(name for name in browser.jar if name.startswith(STATE_PREFIX))


def session_cookie_names(browser: Browser) -> List[str]:
    return sorted(n for n in browser.jar if n.startswith(SESSION_COOKIE) and not n.startswith(STATE_PREFIX))


def open_session(value: str) -> Session:
    """The session inside a session cookie value (the test knows the secret)."""
    plain = Sealer([SECRET.encode("ascii")]).unseal(value, SESSION_PURPOSE)
    assert plain is not None
    session = Session.from_bytes(plain)
    assert session is not None
    return session


class GuardStandIn(Resource):
    """
    Fills each request's context (C{fill(context)}) as a guard in front
    would, then hands the request to C{proxy}; keeps the contexts it filled.
    """

    isLeaf = True

    def __init__(self, proxy: Any, fill: Callable[[RequestContext], Any]) -> None:
        super().__init__()
        self.proxy = proxy
        self.fill = fill
        self.contexts: List[RequestContext] = []

    def render(self, request: Any) -> Any:
        found = context(request)
        self.fill(found)
        self.contexts.append(found)
        return self.proxy.render(request)
