"""
Upstream-driven step-up (issue 20, RFC 9470): the upstream's 401 with
C{error="insufficient_user_authentication"} on a route with C{step_up =
true}, answered to a browser's navigation on a session with a step-up login
(C{GET}) or the step-up page (other methods); passed on unchanged to
everyone else. The whole proxy in memory (L{ProxyStack}), its upstream an
agent whose answers and bodies the tests see (L{ScriptedAgent}).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from oidcproxy.core.assurance import Requirement, challenge
from oidcproxy.core.context import RequestContext, context
from oidcproxy.sessions.session import Session
from oidcproxy.web.endpoints.login import LoginEndpoint
from oidcproxy.web.step_up import UpstreamStepUp

from .fakes import (
    SESSION_COOKIE,
    START,
    STATE_PREFIX,
    GuardStack,
    GuardStandIn,
    ProxyStack,
    make_config,
)
from .idp import AUTHORIZATION_ENDPOINT, NAVIGATE_HEADERS, Browser, Page
from .test_guard_bearer import bearer, rs256
from .test_guard_multi import Stack
from .test_upstream import ProxyHarness, route
from .units import UnitRequest

CHALLENGE = (b'Bearer error="insufficient_user_authentication", '
             b'error_description="A stronger sign-in is required", '
             b'acr_values="gold silver", max_age=300')
BODY = b'{"error": "insufficient_user_authentication"}'

ROUTES = [
    {"path": "/pay", "upstream": "http://up.test", "step_up": True},
    {"path": "/mixed", "upstream": "http://up.test", "auth": "session_or_bearer",
     "step_up": True},
    {"path": "/plain", "upstream": "http://up.test"},
    {"path": "/", "upstream": "http://up.test", "auth": "none"},
]

FORM = {b"accept": NAVIGATE_HEADERS[b"accept"], b"sec-fetch-mode": [b"navigate"],
        b"content-type": [b"application/x-www-form-urlencoded"]}
"""A form posted by a browser (a navigation, not a GET)."""

FETCH = {b"accept": [b"*/*"], b"sec-fetch-mode": [b"cors"]}
"""A script's fetch: not a navigation."""


class BodyTransport:
    """The transport a response body is delivered over: records whether it was stopped."""

    def __init__(self) -> None:
        self.stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IResponse)
class ScriptedResponse:
    """An upstream answer: its body delivered in full, unless its reader stops it first."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, headers: Dict[bytes, List[bytes]], body: bytes) -> None:
        self.code = code
        self.phrase = b"Unauthorized" if code == 401 else b"OK"
        self.headers = Headers(headers)
        self.length = len(body)
        self.body = body
        self.transport = BodyTransport()
        self.read: Optional[bool] = None
        """None: nobody took the body; True: read to its end; False: stopped unread."""

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self.transport)
        if self.transport.stopped:
            self.read = False
            return
        protocol.dataReceived(self.body)
        self.read = True
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        pass


@implementer(IAgent)
class ScriptedAgent:
    """
    The upstream: answers a path starting with C{/pay/ok} 200, anything else
    401 with C{challenge} (None: with no C{WWW-Authenticate}).
    """

    def __init__(self) -> None:
        self.challenge: Optional[bytes] = CHALLENGE
        self.responses: List[ScriptedResponse] = []
        self.requests: List[Tuple[bytes, bytes, Headers]] = []

    def request(self, method: bytes, uri: bytes, headers: Optional[Headers] = None,
                bodyProducer: Any = None) -> defer.Deferred:
        self.requests.append((method, uri, headers or Headers()))
        if urlsplit(uri).path.startswith(b"/pay/ok"):
            response = ScriptedResponse(200, {b"content-type": [b"text/plain"]}, b"paid")
        else:
            headers_out = {b"content-type": [b"application/json"],
                           b"set-cookie": [b"app=1; Path=/"]}
            if self.challenge is not None:
                headers_out[b"www-authenticate"] = [self.challenge]
            response = ScriptedResponse(401, headers_out, BODY)
        self.responses.append(response)
        return defer.succeed(response)


class Harness:
    """The proxy in front of a L{ScriptedAgent}, and a browser signed in (C{acr} bronze)."""

    def __init__(self, case: SynchronousTestCase, **config: Any) -> None:
        self.case = case
        self.agent = ScriptedAgent()
        self.stack = ProxyStack(case, make_config(routes=ROUTES, **config), agent=self.agent)
        self.contexts: List[RequestContext] = []
        guard = self.stack.guard
        render = guard.render

        def recording(request: Any) -> Any:
            self.contexts.append(context(request))
            return render(request)

        case.patch(guard, "render", recording)
        self.browser = self.signed_in()

    def decision(self) -> Optional[str]:
        """What the guard decided on the last request (the access log's C{auth})."""
        return self.contexts[-1].decision

    def signed_in(self) -> Browser:
        stack = self.stack
        browser = stack.browser()
        page = stack.login(browser, "/plain/start",
                           claims={"acr": "bronze", "auth_time": int(stack.clock.seconds())})
        self.case.assertEqual(page.code, 302, page.body)
        return browser

    def slots_free(self) -> bool:
        """Whether every upstream connection slot is free again."""
        clients = self.stack.guard._wrapped._clients.values()
        return all(c.slots.free == c.slots.slots for c in clients)

    def released(self) -> None:
        """The last upstream answer was read or discarded, and its slot given back."""
        self.case.assertIsNotNone(self.agent.responses[-1].read)
        self.case.assertTrue(self.slots_free())

    def passed_on(self, page: Page) -> None:
        """C{page} is the upstream's 401, headers and body as they came."""
        self.case.assertEqual(page.code, 401)
        self.case.assertEqual(page.headers.getRawHeaders(b"www-authenticate"),
                              [self.agent.challenge] if self.agent.challenge else None)
        self.case.assertEqual(page.body, BODY)
        self.case.assertEqual(page.header(b"content-type"), b"application/json")
        self.case.assertIn(b"app=1; Path=/", page.headers.getRawHeaders(b"set-cookie", []))
        self.case.assertTrue(self.agent.responses[-1].read)
        self.case.assertTrue(self.slots_free())


def query_of(url: str) -> Dict[str, List[str]]:
    return parse_qs(urlsplit(url).query)


def capture_log(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class NavigationTests(SynchronousTestCase):
    """A browser's navigation on a session, on a route with step_up: the proxy steps up."""

    def test_get_steps_up(self) -> None:
        """
        A GET: to the IdP asking for the challenge's acr_values and max_age,
        to come back to the same URL; the session cookie is kept, the
        upstream's answer (and its Set-Cookie) not passed on.
        """
        h = Harness(self)
        page = h.browser.navigate("/pay/invoice?id=7")
        self.assertEqual(page.code, 302, page.body)
        self.assertTrue(page.location.startswith(AUTHORIZATION_ENDPOINT))
        query = query_of(page.location)
        self.assertEqual(query["acr_values"], ["gold silver"])
        self.assertEqual(query["max_age"], ["300"])
        self.assertIsNone(page.header(b"www-authenticate"))
        self.assertNotIn(BODY, page.body)
        names = [c.name for c in page.set_cookies]
        self.assertTrue(names and all(n.startswith(STATE_PREFIX) for n in names), names)
        self.assertIn(SESSION_COOKIE, h.browser.jar)
        self.assertFalse(h.agent.responses[-1].read)
        self.assertEqual(h.decision(), "step_up")
        h.released()

    def test_get_comes_back_to_the_same_url(self) -> None:
        """The step-up login, done, lands on the page first asked for."""
        h = Harness(self)
        page = h.browser.navigate("/pay/invoice?id=7")
        params = {k: v[0] for k, v in query_of(page.location).items()}
        stack = h.stack
        code = stack.idp.issue_code(
            nonce=params["nonce"], sub="user-1",
            claims={"acr": "gold", "auth_time": int(stack.clock.seconds())},
            code_verifier_challenge=params["code_challenge"])
        back = h.browser.navigate("/oidc/callback?" + urlencode(
            {"code": code, "state": params["state"]}))
        self.assertEqual(back.code, 302, back.body)
        self.assertEqual(back.location, "https://app.test/pay/invoice?id=7")

    def test_over_the_proxy_site(self) -> None:
        """
        The same over the proxy's own HTTP channel (its request class, which
        applies the guard's answer itself): the redirect and the state cookie.
        """
        h = Harness(self)
        out = h.stack.raw(b"GET /pay/x HTTP/1.1\r\nHost: app.test\r\nAccept: text/html\r\n"
                          b"Sec-Fetch-Mode: navigate\r\nCookie: " + h.browser.cookie_header()
                          + b"\r\n\r\n")
        head = out.split(b"\r\n\r\n", 1)[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 302 "), out)
        self.assertIn(b"\r\nLocation: " + AUTHORIZATION_ENDPOINT.encode(), head)
        self.assertIn(b"\r\nSet-Cookie: " + STATE_PREFIX.encode(), head)
        self.assertNotIn(b"WWW-Authenticate", head)
        self.assertNotIn(b"app=1", head)
        h.released()

    def test_unexpected_error(self) -> None:
        """A bug on the way is logged and answered 500, not left hanging."""
        h = Harness(self)

        def broken(*args: Any) -> Any:
            raise RuntimeError("bug")

        self.patch(LoginEndpoint, "step_up_now", broken)
        page = h.browser.navigate("/pay/x")
        self.assertEqual(page.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        h.released()

    def test_head_steps_up(self) -> None:
        """A HEAD navigation too."""
        h = Harness(self)
        page = h.browser.request(b"HEAD", "/pay/x", headers=NAVIGATE_HEADERS)
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(AUTHORIZATION_ENDPOINT))
        h.released()

    def test_logged(self) -> None:
        """One info line names the route and what was asked; no token, no cookie."""
        events = capture_log(self)
        h = Harness(self)
        h.browser.navigate("/pay/x")
        lines = [e for e in events if e.get("log_format", "").startswith("upstream of route")]
        self.assertEqual(len(lines), 1)
        line = lines[0]
        self.assertEqual(line["log_level"].name, "info")
        self.assertEqual(line["route"], "routes[0]")
        self.assertIn("acr gold or silver", line["requirement"])
        self.assertIn("300s", line["requirement"])
        text = repr(line)
        for value in h.browser.jar.values():
            self.assertNotIn(value, text)

    def test_post_gets_the_step_up_page(self) -> None:
        """
        A form posted: 401, the step-up page (the pages' headers), whose
        button starts a login asking for the challenge, back to the page the
        form was on (its same-origin Referer).
        """
        h = Harness(self)
        headers = dict(FORM, referer=[b"https://app.test/pay/cart?step=2"])
        page = h.browser.request(b"POST", "/pay/submit", headers=headers, body=b"amount=5")
        self.assertEqual(page.code, 401, page.body)
        self.assertEqual(page.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertEqual(page.header(b"x-frame-options"), b"DENY")
        self.assertIn(b"frame-ancestors 'none'", page.header(b"content-security-policy"))
        self.assertEqual(page.header(b"www-authenticate"),
                         challenge(Requirement(("gold", "silver"), 300.0)))
        self.assertIn(b"A stronger sign-in is needed", page.body)
        self.assertNotIn(BODY, page.body)
        self.assertFalse([c for c in page.set_cookies if c.name == "app"])
        button = re.search(rb'<a href="([^"]*)" class="button">Sign in again</a>', page.body)
        assert button is not None, page.body
        url = button.group(1).decode("ascii").replace("&amp;", "&")
        self.assertEqual(urlsplit(url).path, "/oidc/login")
        self.assertEqual(query_of(url), {"rd": ["/pay/cart?step=2"],
                                         "acr_values": ["gold silver"], "max_age": ["300"]})
        self.assertIn(SESSION_COOKIE, h.browser.jar)
        self.assertEqual(h.decision(), "step_up")
        h.released()
        # The button starts the step-up login back to that page.
        login = h.browser.navigate(url)
        self.assertEqual(login.code, 302)
        asked = query_of(login.location)
        self.assertEqual((asked["acr_values"], asked["max_age"]), (["gold silver"], ["300"]))

    def test_post_in_german(self) -> None:
        """The page speaks the browser's language."""
        h = Harness(self, pages={"language": "auto"})
        headers = dict(FORM, **{"accept-language": [b"de-DE,de;q=0.9"]})
        page = h.browser.request(b"POST", "/pay/submit", headers=headers, body=b"x=1")
        self.assertEqual(page.code, 401)
        self.assertIn("Eine stärkere Anmeldung ist nötig".encode(), page.body)
        self.assertIn(b'<html lang="de">', page.body)

    def test_post_without_a_safe_referer(self) -> None:
        """A Referer of another site, or none: the button comes back to the request's path."""
        h = Harness(self)
        for referer in ([b"https://evil.test/pay/cart"], [b"https://app.test//evil.test/x"], None):
            headers = dict(FORM)
            if referer is not None:
                headers[b"referer"] = referer
            page = h.browser.request(b"POST", "/pay/submit?x=1", headers=headers, body=b"x=1")
            self.assertEqual(page.code, 401)
            button = re.search(rb'<a href="([^"]*)" class="button">Sign in again</a>', page.body)
            assert button is not None, page.body
            url = button.group(1).decode("ascii").replace("&amp;", "&")
            self.assertEqual(query_of(url)["rd"], ["/pay/submit"], referer)

    def test_only_what_is_asked(self) -> None:
        """A challenge of max_age alone asks for no acr_values."""
        h = Harness(self)
        h.agent.challenge = b'Bearer error="insufficient_user_authentication", max_age=60'
        query = query_of(h.browser.navigate("/pay/x").location)
        self.assertEqual((query.get("acr_values"), query["max_age"]), (None, ["60"]))

    def test_loop_bound(self) -> None:
        """
        An upstream that asks again after every step-up: after
        [step_up].max_attempts step-up logins for the page, the login-failed
        page (401), not another redirect.
        """
        h = Harness(self, step_up={"max_attempts": 2})
        stack = h.stack
        for _ in range(2):
            page = h.browser.navigate("/pay/x")
            self.assertEqual(page.code, 302, page.body)
            params = {k: v[0] for k, v in query_of(page.location).items()}
            code = stack.idp.issue_code(
                nonce=params["nonce"], sub="user-1",
                claims={"acr": "gold", "auth_time": int(stack.clock.seconds())},
                code_verifier_challenge=params["code_challenge"])
            back = h.browser.navigate("/oidc/callback?" + urlencode(
                {"code": code, "state": params["state"]}))
            self.assertEqual(back.code, 302, back.body)
        page = h.browser.navigate("/pay/x")
        self.assertEqual(page.code, 401, page.body)
        self.assertIsNone(page.location)
        self.assertIn(b"The sign-in did not work", page.body)
        self.assertEqual(h.decision(), "step_up_failed")
        h.released()


class PassedOnTests(SynchronousTestCase):
    """Everyone else gets the upstream's 401 as it came, and its connection is released."""

    def test_api_client(self) -> None:
        """A script's fetch on the same session: not a navigation."""
        h = Harness(self)
        h.passed_on(h.browser.get("/pay/x", headers=FETCH))
        self.assertEqual(h.decision(), "session")

    def test_xhr_post(self) -> None:
        """A POST that is not a navigation (an XHR)."""
        h = Harness(self)
        headers = {b"accept": [b"application/json"], b"x-requested-with": [b"XMLHttpRequest"]}
        h.passed_on(h.browser.request(b"POST", "/pay/x", headers=headers, body=b"{}"))

    def test_bearer(self) -> None:
        """A request admitted on a bearer token, even with a browser's headers."""
        h = Harness(self)
        headers = dict(NAVIGATE_HEADERS)
        headers[b"authorization"] = bearer(rs256(h.stack))[b"authorization"]
        h.passed_on(h.stack.browser().get("/mixed/x", headers=headers))
        self.assertEqual(h.decision(), "bearer")

    def test_route_without_step_up(self) -> None:
        """A route without step_up: the browser gets the challenge."""
        h = Harness(self)
        h.passed_on(h.browser.navigate("/plain/x"))

    def test_anonymous(self) -> None:
        """A public route (nobody signed in): passed on, even with step_up elsewhere."""
        h = Harness(self)
        h.passed_on(h.stack.browser().navigate("/x"))

    def test_malformed_challenge(self) -> None:
        """A challenge parse_challenge refuses (or none at all) is passed on."""
        h = Harness(self)
        for value in (b'Bearer error="insufficient_user_authentication", max_age=soon',
                      b'Bearer error="invalid_token"',
                      b'Bearer error="insufficient_user_authentication"',
                      None):
            h.agent.challenge = value
            h.passed_on(h.browser.navigate("/pay/x"))

    def test_other_status(self) -> None:
        """A 200 goes its usual way (the check looks at 401s only)."""
        h = Harness(self)
        page = h.browser.navigate("/pay/ok")
        self.assertEqual((page.code, page.body), (200, b"paid"))
        self.assertTrue(h.agent.responses[-1].read)


class ExchangeTests(SynchronousTestCase):
    """
    The proxy engine alone (L{oidcproxy.proxy.exchange}), a stand-in guard
    in front that gives the request a step-up hook or not.
    """

    def proxy(self, step_up: bool, hook: bool) -> Tuple[ProxyHarness, ScriptedAgent,
                                                          List[Tuple[Any, Requirement]]]:
        agent = ScriptedAgent()
        h = ProxyHarness([route(step_up=step_up)], agent=agent)
        called: List[Tuple[Any, Requirement]] = []

        def answer(request: Request, requirement: Requirement) -> None:
            called.append((request, requirement))
            request.setResponseCode(299)
            request.write(b"stepped up")
            request.finish()

        def fill(found: RequestContext) -> None:
            if hook:
                found.step_up = answer

        h.client = StubTreq(GuardStandIn(h.proxy, fill))
        return h, agent, called

    def free(self, h: ProxyHarness) -> bool:
        return all(c.slots.free == c.slots.slots for c in h.proxy._clients.values())

    def test_hook_answers(self) -> None:
        """
        A 401 with the challenge, on a route with step_up, to a request
        with a hook: the hook answers with the requirement asked; the
        upstream's body is discarded and its slot given back.
        """
        h, agent, called = self.proxy(step_up=True, hook=True)
        response, body = h.fetch(self, url="http://proxy.test/pay")
        self.assertEqual((response.code, body), (299, b"stepped up"))
        self.assertEqual([r for _, r in called], [Requirement(("gold", "silver"), 300.0)])
        self.assertIsNone(response.headers.getRawHeaders(b"www-authenticate"))
        self.assertIs(agent.responses[0].read, False)
        self.assertTrue(self.free(h))

    def test_route_without_step_up(self) -> None:
        """A hook on a route without step_up is not called: the 401 goes on as it came."""
        h, agent, called = self.proxy(step_up=False, hook=True)
        response, body = h.fetch(self, url="http://proxy.test/pay")
        self.assertEqual((response.code, body), (401, BODY))
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [CHALLENGE])
        self.assertEqual(called, [])
        self.assertTrue(agent.responses[0].read)
        self.assertTrue(self.free(h))

    def test_no_hook(self) -> None:
        """Without a hook (not a session's navigation) the 401 goes on as it came."""
        h, agent, called = self.proxy(step_up=True, hook=False)
        response, body = h.fetch(self, url="http://proxy.test/pay")
        self.assertEqual((response.code, body), (401, BODY))
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [CHALLENGE])
        self.assertTrue(agent.responses[0].read)

    def test_other_answers(self) -> None:
        """Another status (or a 401 without the challenge) never calls the hook."""
        h, agent, called = self.proxy(step_up=True, hook=True)
        response, body = h.fetch(self, url="http://proxy.test/pay/ok")
        self.assertEqual((response.code, body), (200, b"paid"))
        agent.challenge = b'Bearer realm="app"'
        response, body = h.fetch(self, url="http://proxy.test/pay")
        self.assertEqual((response.code, body), (401, BODY))
        self.assertEqual(called, [])


class AnswerTests(SynchronousTestCase):
    """L{UpstreamStepUp.answer} alone, for the session's own provider and where logins start."""

    def answer(self, h: GuardStack, provider: str = "", method: bytes = b"POST",
               path: bytes = b"/staff/x") -> UnitRequest:
        request = UnitRequest(method, path, headers=FORM)
        ctx = context(request)
        ctx.session = Session(id="sid-1", sub="user-1", claims={"sub": "user-1"},
                              created=START - 100, last_seen=START - 10, expires=START + 3600,
                              provider=provider)
        ctx.provider = provider or None
        ctx.match = h.state.routes.match(b"app.test", path)
        ctx.route = ctx.match.route
        UpstreamStepUp(h.state, LoginEndpoint(h.state)).answer(request, Requirement(("gold",)))
        return request

    def button(self, request: UnitRequest) -> Optional[str]:
        found = re.search(rb'<a href="([^"]*)" class="button">Sign in again</a>', request.body)
        return found.group(1).decode("ascii").replace("&amp;", "&") if found else None

    def test_named_provider(self) -> None:
        """A session of a named provider: the page's login, and the GET's, go to that provider."""
        s = Stack(self)
        request = self.answer(s.h, "corp")
        self.assertEqual(request.code, 401)
        url = self.button(request)
        assert url is not None, request.body
        self.assertEqual(query_of(url), {"rd": ["/staff/x"], "acr_values": ["gold"],
                                         "provider": ["corp"]})
        request = self.answer(s.h, "corp", method=b"GET")
        self.assertEqual(request.code, 302)
        self.assertTrue(request.header(b"location").startswith(b"https://corp.test/authorize?"))

    def test_login_url(self) -> None:
        """Where logins start at login_url, the button goes there, with what was asked."""
        h = GuardStack(self, make_config(oidc={"login_url": "/signin"}))
        request = self.answer(h, path=b"/x")
        self.assertEqual(request.code, 401)
        self.assertEqual(self.button(request), "/signin?rd=%2Fx&acr_values=gold")

    def test_logins_disabled(self) -> None:
        """Where no login starts (disable_login): the page explains, with no button."""
        h = GuardStack(self, make_config(oidc={"disable_login": True}))
        request = self.answer(h, path=b"/x")
        self.assertEqual(request.code, 401)
        self.assertIsNone(self.button(request))
        self.assertIn(b"It was not carried out.", request.body)
        self.assertNotIn(b"try the action once more", request.body)
