"""
Tests for a guard with two providers: C{[oidc]} (the default IdP at
C{https://idp.test}) and C{[providers.corp]} (another IdP at
C{https://corp.test}, another client), each route served end to end by its
own (login, callback, refresh, logout, userinfo), and the IdP mix-up refused.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.assemble import OIDCGuard
from oidcproxy.config import parse_config
from oidcproxy.core.encoding import b64url_decode
from oidcproxy.proxy.websocket import SocketRegistry
from oidcproxy.sessions.session import DEFAULT_PROVIDER
from oidcproxy.sessions.stores.memory import MemoryStore

from .fakes import (
    API,
    APP,
    SECRET,
    SESSION_COOKIE,
    STATE_PREFIX,
    App,
    GuardStack,
    clock_at,
    make_config,
    open_session,
)
from .idp import (
    AUTHORIZATION_ENDPOINT,
    ISSUER,
    KEY_ID,
    Browser,
    FakeIdP,
    Network,
    authorize_params,
    split_location,
)

CORP = "https://corp.test"
CORP_CLIENT = "corp-client"
CORP_SECRET = "corp-s3cret"
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
"""A key no IdP here publishes."""
CORP_COOKIE = SESSION_COOKIE + "-corp"
"""corp's session cookie (the default provider's keeps its name)."""
NEAR_EXPIRY = 300 - 60 + 1
"""Seconds after login when the 300 s access token is within the 60 s leeway."""


class Stack:
    """
    A guard with [oidc] and [providers.corp], a route of each, and both IdPs.

    @param routes: more routes, before those.
    @param config: more of the configuration.
    """

    def __init__(self, case: SynchronousTestCase, *, corp_discovery_status: int = 200,
                 advertise_logout: bool = False, disable_login: bool = False,
                 corp_table: Any = None, routes: Any = (), config: Any = None,
                 **stack: Any) -> None:
        self.corp = FakeIdP(Clock(), CORP_CLIENT, CORP_SECRET, issuer=CORP)
        self.corp.discovery_status = corp_discovery_status
        self.corp.advertise_logout = advertise_logout
        stub = StubTreq(self.corp)
        config = make_config(
            providers={"corp": {"issuer": CORP, "client_id": CORP_CLIENT,
                                "client_secret": CORP_SECRET, "disable_login": disable_login,
                                **(corp_table or {})}},
            routes=[*routes,
                    {"path": "/", "upstream": "http://up.test"},
                    {"path": "/staff", "upstream": "http://up.test", "provider": "corp"},
                    {"path": "/maybe", "upstream": "http://up.test", "auth": "optional"}],
            **(config or {}))
        self.h = h = GuardStack(case, config, start=False, providers_http={"corp": stub}, **stack)
        h.idp.advertise_logout = advertise_logout
        self.corp.clock = h.clock
        h.network.add(stub)
        h.start()
        self.case = case

    def corp_login(self, browser: Any, path: str = "/staff", sub: str = "worker-1",
                   **issue: Any) -> Any:
        """A login at corp started at C{path}; the callback's answer."""
        params = self.corp_authorize(browser, path)
        code = self.corp.issue_code(nonce=params["nonce"], sub=sub,
                                    code_verifier_challenge=params["code_challenge"], **issue)
        return browser.navigate("/oidc/callback/corp?" + urlencode(
            {"code": code, "state": params["state"]}))

    def corp_authorize(self, browser: Any, path: str = "/staff") -> Dict[str, str]:
        page = browser.navigate(path)
        self.case.assertEqual(page.code, 302, page.body)
        self.case.assertEqual(split_location(page)[0], CORP + "/authorize")
        return authorize_params(page)


class RouteProviderTests(SynchronousTestCase):
    """Each route logs its users in with its own provider, and serves only its sessions."""

    def test_route_sends_to_its_provider(self) -> None:
        """A browser on a corp route goes to corp, as corp's client, back to corp's callback."""
        s = Stack(self)
        params = s.corp_authorize(s.h.browser())
        self.assertEqual((params["client_id"], params["redirect_uri"]),
                         (CORP_CLIENT, APP + "/oidc/callback/corp"))

    def test_corp_login_end_to_end(self) -> None:
        """
        A login through corp makes a corp session (corp's claims, corp's
        tokens) that the corp route serves.
        """
        s = Stack(self)
        browser = s.h.browser()
        page = s.corp_login(browser)
        self.assertEqual((page.code, page.location), (302, APP + "/staff"))
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        session = open_session(browser.jar[CORP_COOKIE])
        self.assertEqual((session.provider, session.sub, session.claims["iss"]),
                         ("corp", "worker-1", CORP))
        self.assertEqual(session.access_token, s.corp.issued[-1]["access_token"])
        self.assertEqual(browser.get("/staff/x", headers=API).code, 200)
        self.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"worker-1"])
        token_request = s.corp.token_requests[-1]
        self.assertEqual(token_request.field("redirect_uri"), APP + "/oidc/callback/corp")
        self.assertEqual(s.h.idp.token_requests, [])

    def test_tokens_passed_as_the_sessions_provider_says(self) -> None:
        """
        pass_access_token and pass_id_token are the session's provider's:
        corp's session passes its tokens where corp's table says; [oidc]'s,
        which passes none, passes none.
        """
        s = Stack(self, corp_table={"pass_access_token": "authorization", "pass_id_token": True})
        corp = s.h.browser()
        s.corp_login(corp)
        self.assertEqual(corp.get("/staff/x", headers=API).code, 200)
        issued = s.corp.issued[-1]
        self.assertEqual(s.h.app.header(b"authorization"), [b"Bearer " + issued["access_token"].encode()])
        self.assertEqual(s.h.app.header(b"x-forwarded-id-token"), [issued["id_token"].encode()])
        default = s.h.logged_in()
        self.assertEqual(default.get("/x", headers=API).code, 200)
        self.assertEqual(s.h.app.header(b"authorization"), [])
        self.assertEqual(s.h.app.header(b"x-forwarded-id-token"), [])

    def test_corp_session_on_default_route(self) -> None:
        """A corp session is no session on a route of [oidc]: 401, a login there; its cookie stays."""
        s = Stack(self)
        browser = s.h.browser()
        s.corp_login(browser)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        page = browser.navigate("/x")
        self.assertEqual(split_location(page)[0], AUTHORIZATION_ENDPOINT)
        self.assertIn(CORP_COOKIE, browser.jar)
        self.assertEqual(browser.get("/staff", headers=API).code, 200)

    def test_default_session_on_corp_route(self) -> None:
        """The other way: an [oidc] session on the corp route is sent to corp."""
        s = Stack(self)
        browser = s.h.logged_in()
        self.assertEqual(browser.get("/staff", headers=API).code, 401)
        s.corp_authorize(browser)
        self.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_optional_route_anonymous_with_other_provider(self) -> None:
        """An optional route of [oidc] does not take a corp session's identity: anonymous."""
        s = Stack(self)
        browser = s.h.browser()
        s.corp_login(browser)
        self.assertEqual(browser.get("/maybe", headers=API).code, 200)
        self.assertEqual(s.h.app.header(b"x-forwarded-user"), [])

    def test_refresh_at_the_sessions_provider(self) -> None:
        """A corp session's tokens are refreshed at corp, never at [oidc]'s IdP."""
        s = Stack(self)
        browser = s.h.browser()
        s.corp_login(browser)
        s.h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.get("/staff", headers=API).code, 200)
        self.assertEqual((s.corp.refresh_count, s.h.idp.refresh_count), (1, 0))
        session = open_session(browser.jar[CORP_COOKIE])
        self.assertEqual((session.provider, session.access_token),
                         ("corp", s.corp.issued[-1]["access_token"]))

    def test_logout_at_the_sessions_provider(self) -> None:
        """Logout of a corp session revokes its tokens at corp and goes to corp's logout."""
        s = Stack(self, advertise_logout=True)
        browser = s.h.browser()
        s.corp_login(browser)
        page = browser.request(b"POST", "/oidc/logout?rd=/bye", headers={b"origin": [APP.encode()]})
        self.assertEqual(page.code, 303)
        self.assertTrue(page.location.startswith(CORP + "/logout?"), page.location)
        self.assertEqual(len(s.corp.revoked), 2)
        self.assertEqual(s.h.idp.revoked, [])
        self.assertNotIn(CORP_COOKIE, browser.jar)

    def test_userinfo_of_the_sessions_provider(self) -> None:
        s = Stack(self)
        browser = s.h.browser()
        s.corp_login(browser)
        page = browser.get("/oidc/userinfo", headers=API)
        self.assertEqual(page.code, 200)
        document = json.loads(page.body)
        self.assertEqual((document["sub"], document["claims"]["iss"]), ("worker-1", CORP))

    def test_login_endpoint_with_provider(self) -> None:
        """/oidc/login?provider=corp starts a corp login; an unknown provider: 404."""
        s = Stack(self)
        browser = s.h.browser()
        page = browser.navigate("/oidc/login?provider=corp&rd=/staff")
        self.assertEqual(split_location(page)[0], CORP + "/authorize")
        self.assertEqual(browser.navigate("/oidc/login?provider=nope").code, 404)

    def test_named_provider_disable_login(self) -> None:
        """A provider with disable_login: its routes answer 401, its login endpoint 404."""
        s = Stack(self, disable_login=True)
        browser = s.h.browser()
        self.assertEqual(browser.navigate("/staff").code, 401)
        self.assertEqual(browser.navigate("/oidc/login?provider=corp").code, 404)
        self.assertEqual(split_location(browser.navigate("/x"))[0], AUTHORIZATION_ENDPOINT)

    def test_ready_reports_each_provider(self) -> None:
        """/oidc/ready checks each provider: ready when both are, 503 naming the one that is not."""
        page = Stack(self).h.browser().get("/oidc/ready")
        self.assertEqual(json.loads(page.body)["checks"], {"idp": "ok", "idp:corp": "ok"})
        page = Stack(self, corp_discovery_status=500).h.browser().get("/oidc/ready")
        self.assertEqual((page.code, json.loads(page.body)["not_ready"]), (503, ["idp:corp"]))


class ClosableSocket:
    """What the socket registry closes: it records why."""

    def __init__(self) -> None:
        self.closed: List[str] = []

    def close(self, why: str) -> None:
        self.closed.append(why)


class BackchannelTests(SynchronousTestCase):
    """
    Back-channel logout serves every provider at one endpoint: the token's
    iss says whose it is, its keys and client check it, and only that
    provider's sessions end.
    """

    def logout_token(self, s: Stack, issuer: str, audience: str, jti: str,
                     signer: Any = None) -> str:
        return (signer or s.corp).id_token({
            "iss": issuer, "aud": audience, "iat": int(s.h.clock.seconds()), "jti": jti,
            "sub": "user-1", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})

    def post(self, s: Stack, token: str) -> Any:
        return s.h.browser().request(
            b"POST", "/oidc/backchannel-logout",
            headers={b"content-type": [b"application/x-www-form-urlencoded"]},
            body=urlencode({"logout_token": token}).encode())

    def both(self, **stack: Any) -> Any:
        """A stack, a browser with corp's session of user-1 and one with [oidc]'s."""
        s = Stack(self, **stack)
        corp_browser = s.h.browser()
        s.corp_login(corp_browser, sub="user-1")
        return s, corp_browser, s.h.logged_in(sub="user-1")

    def test_named_providers_token(self) -> None:
        """corp's logout token ends corp's session of that sub; [oidc]'s session of it lives on."""
        s, corp_browser, default_browser = self.both(memory_store=True)
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        page = self.post(s, self.logout_token(s, CORP, CORP_CLIENT, "j1"))
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(corp_browser.get("/staff", headers=API).code, 401)
        self.assertEqual(default_browser.get("/x", headers=API).code, 200)
        lines = [formatEvent(e) for e in events if "session(s) ended" in e.get("log_format", "")]
        self.assertEqual(lines, ["back-channel logout: 1 session(s) ended (provider corp)"])

    def test_named_providers_token_revocation_list(self) -> None:
        """The same with cookie sessions and a revocation list: corp's revoked, [oidc]'s not."""
        s, corp_browser, default_browser = self.both()
        s.h.guard.parts.revocations = MemoryStore(s.h.clock)
        page = self.post(s, self.logout_token(s, CORP, CORP_CLIENT, "j1"))
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(corp_browser.get("/staff", headers=API).code, 401)
        self.assertEqual(default_browser.get("/x", headers=API).code, 200)

    def test_named_providers_token_closes_its_sockets_only(self) -> None:
        """
        A back-channel logout (by sub) closes the WebSockets of that
        provider's user only: another provider's user with the same sub
        keeps theirs, both ways.
        """
        app = App()
        app.sockets = sockets = SocketRegistry()  # type: ignore[attr-defined]
        default_socket, corp_socket = ClosableSocket(), ClosableSocket()
        sockets.add(default_socket, "session-a", None, "user-1", DEFAULT_PROVIDER)
        sockets.add(corp_socket, "session-b", None, "user-1", "corp")
        s, _, _ = self.both(memory_store=True, wrapped=app)
        self.assertEqual(self.post(s, self.logout_token(s, CORP, CORP_CLIENT, "j1")).code, 200)
        self.assertEqual((default_socket.closed, corp_socket.closed), ([], ["logout"]))
        token = self.logout_token(s, ISSUER, s.h.idp.client_id, "j2", signer=s.h.idp)
        self.assertEqual(self.post(s, token).code, 200)
        self.assertEqual(default_socket.closed, ["logout"])

    def test_named_token_checked_with_keys(self) -> None:
        """A token with corp's iss signed with a key not in corp's JWKS: 400, nothing ends."""
        s, corp_browser, _ = self.both(memory_store=True)
        forged = self.logout_token(s, CORP, CORP_CLIENT, "j1").split(".")
        other = jwt.encode(json.loads(b64url_decode(forged[1])), OTHER_KEY, algorithm="RS256",
                           headers={"kid": KEY_ID})
        page = self.post(s, other)
        self.assertEqual(page.code, 400)
        self.assertEqual(corp_browser.get("/staff", headers=API).code, 200)

    def test_named_token_for_another_client(self) -> None:
        """corp's token for [oidc]'s client id: 400 (its audience is not corp's client)."""
        s, corp_browser, _ = self.both(memory_store=True)
        page = self.post(s, self.logout_token(s, CORP, s.h.idp.client_id, "j1"))
        self.assertEqual(page.code, 400)
        self.assertEqual(corp_browser.get("/staff", headers=API).code, 200)

    def test_unknown_issuer(self) -> None:
        """A token of an issuer no provider has: 400, counted as bad_iss."""
        s, corp_browser, _ = self.both(memory_store=True)
        page = self.post(s, self.logout_token(s, "https://other.test", CORP_CLIENT, "j1"))
        self.assertEqual(page.code, 400)
        self.assertEqual(s.h.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "oidcproxy_token_validation_failures_total",
            {"token": "logout_token", "reason": "bad_iss"}), 1.0)

    def test_named_token_replayed(self) -> None:
        """corp's logout token a second time: 400."""
        s, _, _ = self.both(memory_store=True)
        token = self.logout_token(s, CORP, CORP_CLIENT, "j1")
        self.assertEqual(self.post(s, token).code, 200)
        self.assertEqual(self.post(s, token).code, 400)

    def test_default_logout_leaves_named_session(self) -> None:
        """[oidc]'s logout of a sub ends its session, not corp's session of the same sub."""
        s, corp_browser, default_browser = self.both(memory_store=True)
        page = self.post(s, self.logout_token(s, ISSUER, s.h.idp.client_id, "j2",
                                              signer=s.h.idp))
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(default_browser.get("/x", headers=API).code, 401)
        self.assertEqual(corp_browser.get("/staff", headers=API).code, 200)


class MixUpTests(SynchronousTestCase):
    """
    A code or token of one provider presented to another's callback is
    refused: the state is bound to the provider that started the login,
    and the RFC 9207 iss and the ID token's iss must be that provider's.
    """

    def failed(self, s: Stack, reason: str, provider: str = "corp") -> float:
        """The failed logins of C{reason} counted for C{provider} (whose callback it was)."""
        return s.h.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "oidcproxy_logins_failed_total", {"reason": reason, "provider": provider}) or 0.0

    def test_corp_state_at_default_callback(self) -> None:
        """corp's login attempt answered at [oidc]'s callback: refused, no code exchanged."""
        s = Stack(self)
        browser = s.h.browser()
        params = s.corp_authorize(browser)
        code = s.corp.issue_code(nonce=params["nonce"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code,
                                                               "state": params["state"]}))
        self.assertEqual(page.code, 401)
        self.assertEqual(self.failed(s, "state_other_provider", ""), 1.0)
        self.assertEqual((s.corp.token_requests, s.h.idp.token_requests), ([], []))
        self.assertNotIn(SESSION_COOKIE, browser.jar)

    def test_default_state_at_corp_callback(self) -> None:
        """[oidc]'s login attempt answered at corp's callback: refused."""
        s = Stack(self)
        browser = s.h.browser()
        params = s.h.authorize(browser, "/x")
        code = s.h.idp.issue_code(nonce=params["nonce"])
        page = browser.navigate("/oidc/callback/corp?" + urlencode({"code": code,
                                                                    "state": params["state"]}))
        self.assertEqual(page.code, 401)
        self.assertEqual(self.failed(s, "state_other_provider"), 1.0)
        self.assertEqual((s.corp.token_requests, s.h.idp.token_requests), ([], []))
        self.assertFalse([n for n in browser.jar if n.startswith(STATE_PREFIX)])

    def test_iss_parameter_of_another_issuer(self) -> None:
        """RFC 9207: corp's callback with the iss of [oidc]'s IdP is refused before any exchange."""
        s = Stack(self)
        browser = s.h.browser()
        params = s.corp_authorize(browser)
        code = s.corp.issue_code(nonce=params["nonce"])
        page = browser.navigate("/oidc/callback/corp?" + urlencode(
            {"code": code, "state": params["state"], "iss": ISSUER}))
        self.assertEqual(page.code, 401)
        self.assertEqual(self.failed(s, "bad_callback_iss"), 1.0)
        self.assertEqual(s.corp.token_requests, [])

    def test_iss_parameter_of_its_issuer(self) -> None:
        """corp's own iss at corp's callback passes."""
        s = Stack(self)
        browser = s.h.browser()
        params = s.corp_authorize(browser)
        code = s.corp.issue_code(nonce=params["nonce"],
                                 code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback/corp?" + urlencode(
            {"code": code, "state": params["state"], "iss": CORP}))
        self.assertEqual(page.code, 302, page.body)

    def test_id_token_of_another_issuer(self) -> None:
        """An ID token naming [oidc]'s issuer from corp's token endpoint: refused, no session."""
        s = Stack(self)
        browser = s.h.browser()
        page = s.corp_login(browser, iss=ISSUER)
        self.assertEqual(page.code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(len(s.corp.token_requests), 1)


class DefaultUnchangedTests(SynchronousTestCase):
    def test_default_login_is_default(self) -> None:
        """Beside a named provider, [oidc]'s logins make sessions of the default provider."""
        s = Stack(self)
        browser = s.h.logged_in()
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).provider, DEFAULT_PROVIDER)


class OnlyNamedProvidersTests(SynchronousTestCase):
    """Without [oidc]: every route names its provider, and is served by it."""

    def test_only_named(self) -> None:
        clock = clock_at()
        network = Network()
        corp = FakeIdP(clock, CORP_CLIENT, CORP_SECRET, issuer=CORP)
        stub = network.add(StubTreq(corp))
        config = parse_config({
            "public_url": APP, "session": {"secrets": [SECRET]},
            "providers": {"corp": {"issuer": CORP, "client_id": CORP_CLIENT,
                                   "client_secret": CORP_SECRET}},
            "routes": [{"path": "/", "upstream": "http://up.test", "provider": "corp"}]},
            "t.toml")
        guard = OIDCGuard(config, App(), clock, providers_http={"corp": stub})
        self.addCleanup(guard.stop)
        self.assertIsNone(guard.parts.provider)
        guard.start()
        network.pump()
        browser = Browser(network, guard, APP)
        page = browser.navigate("/x")
        self.assertEqual(split_location(page)[0], CORP + "/authorize")
        params = authorize_params(page)
        code = corp.issue_code(nonce=params["nonce"], sub="worker-1",
                               code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback/corp?" + urlencode(
            {"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 302, page.body)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(browser.navigate("/oidc/callback?code=c&state=s").code, 404)
