"""
Step-up authentication (issue 20, RFC 9470) end to end: the real OP
(L{tests.integration.stack.OP_SCRIPT} with C{--step-up}: the level
C{silver} is its login form, C{gold} the login form and then a page asking
for a one-time code), the test upstream and the proxy as real processes,
driven by headless Chromium and, for API clients, by a scripted HTTP client.

The proxy's routes (L{start_step_up_stack}):
  - C{/} (the default of L{tests.integration.stack.proxy_config}): a session,
    no requirement; the upstream's C{/echo}.
  - C{/gold}: C{acr_values = ["gold"]}; the upstream's C{/echo/gold}.
  - C{/fresh}: C{max_auth_age} of L{MAX_AUTH_AGE} seconds; C{/echo/fresh}.
  - C{/pay}: C{step_up = true}, to the upstream's C{/step-up/pay}, which
    answers the RFC 9470 challenge (C{acr_values="gold"}) unless the request's
    C{X-Forwarded-Acr} is C{gold}.
  - C{/challenge}: the same upstream answer, without C{step_up}.
  - C{/insist}: C{step_up = true}, to the upstream's C{/unsatisfied/insist},
    which answers that challenge whatever the sign-in.
  - C{/shop}: a session, to the upstream's C{/form/shop}: a page whose form
    posts to the C{step_up} route.
  - C{/api/gold} and C{/api/pay}: sessions or bearer tokens (the OP's JWT
    access tokens of the scope C{api}, which carry C{acr} and C{auth_time}),
    like C{/gold} and C{/pay}.

Covered: a silver session asking for the gold route is sent to the OP
again, through the one-time code page, and lands on the page first asked
for with C{X-Forwarded-Acr: gold}; a C{max_auth_age} of a few seconds
sends the browser to log in again once it has passed (the OP's login form,
asked with C{max_age}), with a later C{X-Forwarded-Auth-Time}, and a step-up
right at that age, which the OP (counting whole seconds) may answer with
the same sign-in, neither loops nor fails; the upstream's challenge on the
C{step_up} route takes the browser through the gold login and the retried
C{GET} reaches the upstream with acr C{gold}; to a form's C{POST} it
answers with the step-up page, whose button signs in at gold and comes back
to the form, whose post then gets through;
an OP that answers C{silver} when C{gold} was asked (its test hook) ends on
the login-failed page after one authorization request; an upstream that
challenges whatever the sign-in gets C{[step_up] max_attempts} step-up
logins, the later ones through the OP without a page of its own (its
session is gold by then), then the login-failed page, not a loop; an API
client with a session cookie gets the upstream's challenge unchanged and,
on the C{acr_values} route, the proxy's own 401 challenge.

A bearer token (the OP's access token, which the upstream of a session
route is given) at silver gets the proxy's challenge on the C{acr_values}
route and the upstream's challenge unchanged on the C{step_up} one, even
on a navigation; the gold token of a stepped-up session is served on both.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import attr
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from oidcproxy.core.assurance import INSUFFICIENT, Requirement, parse_challenge
from tests.integration import procs
from tests.integration.stack import (
    API,
    NAVIGATE,
    Form,
    OpenIDProvider,
    WebClient,
    browse,
    fill_login,
    header_values,
    proxy_config,
    require_op,
    reserve_port,
    start_op,
    start_proxy,
)
from tests.integration.test_login_interop import Browser, _detached, require_chromium
from tests.integration.upstream_app import STEP_UP_BODY, STEP_UP_CHALLENGE

HOME = "/home/page?x=1"
"""A page of the route without requirements; the upstream sees /echo/home/page."""
GOLD = "/gold/report?q=1"
"""A page of the route with C{acr_values = ["gold"]}; the upstream sees /echo/gold/report."""
FRESH = "/fresh/page?f=2"
"""A page of the route with C{max_auth_age}; the upstream sees /echo/fresh/page."""
PAY = "/pay/checkout?item=7"
"""A page of the C{step_up} route; the upstream sees /step-up/pay/checkout (and challenges)."""
CHALLENGE = "/challenge/doc"
"""A page of the route whose upstream challenges, without C{step_up}."""
INSIST = "/insist/form?n=3"
"""A page of the C{step_up} route whose upstream is never satisfied."""
SHOP = "/shop/cart?action=%2Fpay%2Fconfirm"
"""A page with a form that posts to C{/pay/confirm} (the C{step_up} route)."""
STEP_UP_PAGE = "A stronger sign-in is needed"
"""The heading of the proxy's step-up page (English)."""
MAX_AUTH_AGE = 5
"""Seconds: C{/fresh}'s C{max_auth_age}."""
MAX_ATTEMPTS = 2
"""C{[step_up] max_attempts}: step-up logins per URL and session in the window."""
ONE_TIME_CODE = "123456"
"""The OP's one-time code (op.mjs, C{--step-up})."""
API_AUDIENCE = "urn:oidcproxy:test-api"
"""The audience of the OP's JWT access tokens (op.mjs, C{--step-up})."""
ACR = "X-Forwarded-Acr"
AUTH_TIME = "X-Forwarded-Auth-Time"
LOGIN_FAILED = "The sign-in did not work"
"""The heading of the proxy's login-failed page (English)."""


@attr.s(auto_attribs=True)
class StepUpStack:
    """The OP (two levels, test hooks on), the upstream and the proxy."""

    op: OpenIDProvider
    upstream: procs.Upstream
    proxy: procs.Proxy
    client: WebClient
    """A cookie-less client for the test's own look-ups (the upstream's events, the OP's hooks)."""

    def describe(self) -> str:
        return "\n".join(c.describe() for c in (self.op.child, self.upstream.child,
                                                 self.proxy.child))

    def authorization_requests(self) -> List[List[str]]:
        """The OP's authorization requests so far: C{[acr_values, max_age, prompt]} each."""
        return self.op.events("authorization.request")

    async def upstream_uris(self) -> List[str]:
        """
        The targets of the requests that reached the upstream, in order
        (but Chromium's own C{/favicon.ico}, which the route C{/} serves).
        """
        _, body = await self.client.request("GET", self.upstream.url + "/events",
                                            keep_cookies=False)
        return [e["uri"] for e in json.loads(body) if not e["uri"].endswith("/favicon.ico")]

    async def downgrade(self) -> None:
        """The OP's test hook: every login gets acr silver, whatever was asked."""
        _, body = await self.client.request(
            "GET", self.op.issuer + "/__test__/acr-downgrade?on=1", keep_cookies=False)
        if json.loads(body).get("acrDowngrade") is not True:
            raise AssertionError(f"the OP's acr-downgrade hook answered {body!r}")


async def start_step_up_stack(testcase: TestCase) -> StepUpStack:
    """The OP with C{--step-up --test-hooks}, the upstream, and the proxy with the routes above."""
    require_op()
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        public = f"http://127.0.0.1:{port}"
        op = await start_op(testcase, [public + "/oidc/callback"],
                            [public + "/", public + "/oidc/logout?signed_out=1"],
                            step_up=True, test_hooks=True)
        upstream = await procs.start_upstream(testcase)
        config = proxy_config(port, op, upstream)
        # The OP's access tokens for the scope "api" are JWTs with acr and
        # auth_time (op.mjs, --step-up); the upstream sees the session's.
        scopes = 'scopes = ["openid", "email", "profile", "groups"]\n'
        if scopes not in config:
            raise AssertionError(f"proxy_config changed: no {scopes!r} to extend")
        config = config.replace(scopes, 'scopes = ["openid", "email", "profile", "groups", "api"]\n'
                                'pass_access_token = "header"\n')
        config += f"""
[step_up]
max_attempts = {MAX_ATTEMPTS}

[bearer]
audiences = ["{API_AUDIENCE}"]

[[routes]]
path = "/api/gold"
upstream = "{upstream.url}"
auth = "session_or_bearer"
replace_prefix = "/echo/api/gold"
acr_values = ["gold"]

[[routes]]
path = "/api/pay"
upstream = "{upstream.url}"
auth = "session_or_bearer"
replace_prefix = "/step-up/api/pay"
step_up = true

[[routes]]
path = "/gold"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/echo/gold"
acr_values = ["gold"]

[[routes]]
path = "/fresh"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/echo/fresh"
max_auth_age = "{MAX_AUTH_AGE}s"

[[routes]]
path = "/pay"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/step-up/pay"
step_up = true

[[routes]]
path = "/challenge"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/step-up/challenge"

[[routes]]
path = "/insist"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/unsatisfied/insist"
step_up = true

[[routes]]
path = "/shop"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/form/shop"
"""
        proxy = await start_proxy(testcase, reserved, config)
    finally:
        reserved.close()
    return StepUpStack(op, upstream, proxy, WebClient(testcase))


# -- the browser at the OP ---------------------------------------------------------


async def sign_in_at_op(browser: Browser, op: OpenIDProvider, login: str,
                        one_time_code: Optional[str] = None) -> None:
    """
    At the OP's login form (waiting for it): log in as C{login}; with
    C{one_time_code}, the OP must then show its second step (the gold
    level's code page), where the code is entered; then the consent form,
    when the OP asks for it (a browser's first login). Returns once the
    browser has left the OP.
    """
    from selenium.webdriver.common.by import By

    def submit(d: Any) -> None:
        form = d.find_element(By.TAG_NAME, "form")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        browser._wait(_detached(form), "the form to be submitted")

    def consent_or_gone(d: Any) -> bool:
        return not d.current_url.startswith(op.issuer) or bool(
            d.find_elements(By.CSS_SELECTOR, "input[name=prompt][value=consent]"))

    def run() -> None:
        d = browser.driver
        browser._wait(lambda d: d.current_url.startswith(op.issuer + "/interaction/")
                      and d.find_elements(By.NAME, "login"), "the OP's login form")
        d.find_element(By.NAME, "login").send_keys(login)
        d.find_element(By.NAME, "password").send_keys("any password will do")
        submit(d)
        if one_time_code is not None:
            browser._wait(lambda d: d.find_elements(By.NAME, "otp"),
                          "the OP's one-time code page (the second step of gold)")
            d.find_element(By.NAME, "otp").send_keys(one_time_code)
            submit(d)
        browser._wait(consent_or_gone, "the OP's consent form or the way back")
        if d.current_url.startswith(op.issuer):
            submit(d)
        browser._wait(lambda d: not d.current_url.startswith(op.issuer), "the way back from the OP")

    await deferToThread(run)


async def sign_in_if_asked(browser: Browser, op: OpenIDProvider, page: str, login: str) -> None:
    """
    Wait for the browser to be either at the OP's login form, then sign in
    there as C{login} (L{sign_in_at_op}), or back at C{page} already.
    """
    from selenium.webdriver.common.by import By

    def where() -> bool:
        return bool(browser._wait(
            lambda d: (d.current_url.startswith(op.issuer + "/interaction/")
                       and bool(d.find_elements(By.NAME, "login")))
            or (d.current_url == page and bool(d.find_elements(By.TAG_NAME, "pre")))
            or bool(d.find_elements(By.TAG_NAME, "h1")),
            f"the OP's login form or {page}"))

    await deferToThread(where)
    if (await browser.url()).startswith(op.issuer):
        await sign_in_at_op(browser, op, login)


def fill_gold(login: str) -> Callable[[Form], List[Tuple[str, str]]]:
    """
    L{fill_login}, and the answer to the OP's one-time code page (the
    second step of gold).
    """
    fill = fill_login(login)

    def answer(form: Form) -> List[Tuple[str, str]]:
        if form.value("prompt") == "otp":
            return [("prompt", "otp"), ("otp", ONE_TIME_CODE)]
        return fill(form)

    return answer


async def heading(browser: Browser) -> str:
    """The text of the page's first C{h1} (waiting for one)."""
    from selenium.webdriver.common.by import By

    def read() -> str:
        browser._wait(lambda d: d.find_elements(By.TAG_NAME, "h1"), "a page with a heading")
        return str(browser.driver.find_element(By.TAG_NAME, "h1").text)

    return await deferToThread(read)


async def page_text(browser: Browser) -> str:
    """The text of the whole page shown."""
    from selenium.webdriver.common.by import By

    return await deferToThread(lambda: str(browser.driver.find_element(By.TAG_NAME, "body").text))


async def session_cookie_header(browser: Browser) -> str:
    """The browser's cookies for the proxy, as a C{Cookie} header."""
    cookies = await deferToThread(browser.driver.get_cookies)
    return "; ".join(f"{c['name']}={c['value']}" for c in cookies)


class StepUpMixin:
    """Checks shared by the tests below (a TestCase's methods)."""

    def assertSignIn(self, echo: Dict[str, Any], uri: str, acr: str) -> int:
        """
        The upstream answered C{uri} for alice, told that she signed in at
        C{acr}; the C{auth_time} it was told (a whole number of seconds).
        """
        test: Any = self
        test.assertEqual(echo["uri"], uri)
        test.assertEqual(header_values(echo, "x-forwarded-user"), ["alice"])
        test.assertEqual(header_values(echo, ACR), [acr])
        times = header_values(echo, AUTH_TIME)
        test.assertEqual(len(times), 1, echo["headers"])
        test.assertTrue(times[0].isdigit(), times)
        return int(times[0])


class BrowserStepUpTests(TestCase, StepUpMixin):
    """Headless Chromium through the OP's real login, code and consent pages."""

    timeout = 120

    async def silver_session(self) -> Tuple[StepUpStack, Browser, int]:
        """
        A browser signed in as alice at silver (the route without
        requirements: no code page); the stack, the browser and the
        C{auth_time} the upstream was told.
        """
        require_chromium()
        stack = await start_step_up_stack(self)
        browser = await Browser.start(self)
        await browser.get(stack.proxy.url + HOME)
        await sign_in_at_op(browser, stack.op, "alice")
        echo = await browser.json_page(stack.proxy.url + HOME)
        auth_time = self.assertSignIn(echo, "/echo" + HOME, "silver")
        self.assertEqual(len(stack.authorization_requests()), 1, stack.describe())
        return stack, browser, auth_time

    async def test_acr_values_route_steps_up(self) -> None:
        """
        A session at silver asks for the gold route: the proxy sends the
        browser to the OP asking for C{acr_values=gold}, where the silver OP
        session is not enough: its login form, then the one-time code page;
        back on the page first asked for, the upstream is told acr C{gold}.
        The stepped-up session then serves the gold page without the OP.
        """
        stack, browser, first_time = await self.silver_session()
        proxy = stack.proxy
        before = len(stack.authorization_requests())
        await browser.get(proxy.url + GOLD)
        await sign_in_at_op(browser, stack.op, "alice", ONE_TIME_CODE)
        echo = await browser.json_page(proxy.url + GOLD)
        self.assertGreaterEqual(self.assertSignIn(echo, "/echo" + GOLD, "gold"), first_time)
        asked = stack.authorization_requests()[before:]
        self.assertEqual([r[0] for r in asked], ["gold"], stack.describe())

        await browser.get(proxy.url + GOLD + "&again=1")
        echo = await browser.json_page(proxy.url + GOLD + "&again=1")
        self.assertSignIn(echo, "/echo" + GOLD + "&again=1", "gold")
        self.assertEqual(len(stack.authorization_requests()), before + 1)
        self.assertEqual(await stack.upstream_uris(),
                         ["/echo" + HOME, "/echo" + GOLD, "/echo" + GOLD + "&again=1"])

    async def stale_sign_in(self) -> Tuple[StepUpStack, Browser, int, int]:
        """
        A browser signed in on the route with a C{max_auth_age} of a few
        seconds, served at once; then an API client with the browser's
        cookie polls until the sign-in is too old for the route (the 401
        challenge naming C{max_age}). The stack, the browser, the sign-in's
        C{auth_time} and the OP's authorization requests until then.
        """
        require_chromium()
        stack = await start_step_up_stack(self)
        browser = await Browser.start(self)
        proxy = stack.proxy
        await browser.get(proxy.url + FRESH)
        await sign_in_at_op(browser, stack.op, "alice")
        echo = await browser.json_page(proxy.url + FRESH)
        first_time = self.assertSignIn(echo, "/echo" + FRESH, "silver")

        cookie = await session_cookie_header(browser)
        client = WebClient(self)

        async def too_old() -> Optional[IResponse]:
            response, _ = await client.request("GET", proxy.url + FRESH,
                                               headers=dict(API, Cookie=cookie), keep_cookies=False)
            self.assertIn(response.code, (200, 401))
            return response if response.code == 401 else None

        response = await procs.poll_async(too_old, MAX_AUTH_AGE + 10, interval=0.25,
                                          what=f"{FRESH} to need a fresh sign-in")
        self.assertGreaterEqual(time.time(), first_time + MAX_AUTH_AGE)
        challenge = response.headers.getRawHeaders(b"www-authenticate", [])
        self.assertEqual(len(challenge), 1, challenge)
        self.assertEqual(parse_challenge(challenge),
                         Requirement(acr_values=(), max_age=float(MAX_AUTH_AGE)))
        return stack, browser, first_time, len(stack.authorization_requests())

    async def test_max_auth_age_forces_a_fresh_login(self) -> None:
        """
        Once the sign-in is older than the route's C{max_auth_age} (and
        than the OP's C{max_age} too, which counts whole seconds: more than
        C{max_age} of them), the browser is sent to the OP with C{max_age}:
        its login form again; back on the page, the upstream is told the
        new, later C{auth_time}.
        """
        stack, browser, first_time, before = await self.stale_sign_in()
        proxy = stack.proxy
        await procs.sleep(max(0.0, first_time + MAX_AUTH_AGE + 1.2 - time.time()))
        await browser.get(proxy.url + FRESH)
        await sign_in_at_op(browser, stack.op, "alice")
        echo = await browser.json_page(proxy.url + FRESH)
        self.assertGreater(self.assertSignIn(echo, "/echo" + FRESH, "silver"), first_time)
        asked = stack.authorization_requests()[before:]
        self.assertEqual([r[1] for r in asked], [str(MAX_AUTH_AGE)], stack.describe())

    async def test_max_auth_age_step_up_at_the_age(self) -> None:
        """
        The browser comes back the moment the sign-in is too old for the
        route: the OP, counting whole seconds, may still find it young
        enough for C{max_age} and answer at once with the same C{auth_time}
        (OpenID Connect asks it to re-authenticate only when more time has
        passed), which the callback accepts, within the leeway. The page is
        then served after that one step-up login, or after a fresh login
        at the OP, but neither does the proxy step up again nor end on the
        login-failed page.
        """
        stack, browser, first_time, before = await self.stale_sign_in()
        proxy = stack.proxy
        await browser.get(proxy.url + FRESH)
        await sign_in_if_asked(browser, stack.op, proxy.url + FRESH, "alice")
        echo = await browser.json_page(proxy.url + FRESH)
        self.assertGreaterEqual(self.assertSignIn(echo, "/echo" + FRESH, "silver"), first_time)
        asked = stack.authorization_requests()[before:]
        self.assertEqual([r[1] for r in asked], [str(MAX_AUTH_AGE)], stack.describe())

    async def test_upstream_challenge_steps_up(self) -> None:
        """
        On the C{step_up} route, the upstream answers the silver session's
        navigation with the RFC 9470 challenge (acr_values gold): the
        browser does not see the 401 but the OP's login and code pages,
        and back on the page first asked for, the retried C{GET} reaches
        the upstream with acr C{gold} and is served.
        """
        stack, browser, _ = await self.silver_session()
        proxy = stack.proxy
        before = len(stack.authorization_requests())
        await browser.get(proxy.url + PAY)
        await sign_in_at_op(browser, stack.op, "alice", ONE_TIME_CODE)
        echo = await browser.json_page(proxy.url + PAY)
        self.assertSignIn(echo, "/step-up" + PAY, "gold")
        self.assertEqual([r[0] for r in stack.authorization_requests()[before:]], ["gold"])
        self.assertEqual([uri for uri in await stack.upstream_uris() if uri.startswith("/step-up")],
                         ["/step-up" + PAY, "/step-up" + PAY])

    async def test_upstream_challenge_to_a_form_post(self) -> None:
        """
        A form on a page of the silver session posts to the C{step_up} route,
        whose upstream answers with the RFC 9470 challenge: the post cannot
        be replayed, so the browser gets the proxy's step-up page; its button
        signs in at the asked level (the OP's login and code pages) and
        comes back to the page with the form, whose post then reaches the
        upstream with acr C{gold}.
        """
        stack, browser, _ = await self.silver_session()
        proxy = stack.proxy
        before = len(stack.authorization_requests())
        await browser.get(proxy.url + SHOP)
        await browser.click("form button[type=submit]")
        self.assertEqual(await heading(browser), STEP_UP_PAGE, stack.describe())
        await browser.click("main a.button:not(.secondary)")
        await sign_in_at_op(browser, stack.op, "alice", ONE_TIME_CODE)
        await browser.wait_for_url(proxy.url + SHOP)
        await browser.click("form button[type=submit]")
        echo = await browser.json_page(proxy.url + "/pay/confirm")
        self.assertSignIn(echo, "/step-up/pay/confirm", "gold")
        self.assertEqual(echo["method"], "POST")
        self.assertEqual([r[0] for r in stack.authorization_requests()[before:]], ["gold"])
        _, body = await stack.client.request("GET", stack.upstream.url + "/events",
                                             keep_cookies=False)
        posts = [e["uri"] for e in json.loads(body) if e["method"] == "POST"]
        self.assertEqual(posts, ["/step-up/pay/confirm"] * 2)

    async def test_lower_acr_ends_on_the_login_failed_page(self) -> None:
        """
        The OP answers silver whatever is asked (its test hook; with its
        silver session it redirects back at once, no page of its own). The
        silver session asks for the gold route: one authorization request,
        then the proxy's login-failed page saying that the sign-in level
        was not confirmed, not a loop; the gold page never reaches the
        upstream, and the old session still serves the other route.
        """
        stack, browser, _ = await self.silver_session()
        proxy = stack.proxy
        await stack.downgrade()
        before = len(stack.authorization_requests())
        await browser.get(proxy.url + GOLD)
        self.assertEqual(await heading(browser), LOGIN_FAILED, stack.describe())
        self.assertIn("did not confirm the sign-in level", await page_text(browser))
        # A loop would have asked the OP again by now: the browser is on a
        # page of the proxy's own, which starts nothing by itself.
        await procs.sleep(1.0)
        self.assertEqual([r[0] for r in stack.authorization_requests()[before:]], ["gold"],
                         stack.describe())
        self.assertTrue((await browser.url()).startswith(proxy.url + "/oidc/callback?"))
        self.assertEqual(await stack.upstream_uris(), ["/echo" + HOME])

        await browser.get(proxy.url + HOME)
        self.assertSignIn(await browser.json_page(proxy.url + HOME), "/echo" + HOME, "silver")

    async def test_never_satisfied_upstream_is_bounded(self) -> None:
        """
        An upstream on a C{step_up} route that challenges whatever the
        sign-in: the first step-up goes through the OP's login and code
        pages, and each later one straight through the OP (its session is
        gold by then), until C{[step_up] max_attempts} step-up logins for
        the page; then the login-failed page, and no more requests to the
        OP or the upstream.
        """
        stack, browser, _ = await self.silver_session()
        proxy = stack.proxy
        before = len(stack.authorization_requests())
        await browser.get(proxy.url + INSIST)
        await sign_in_at_op(browser, stack.op, "alice", ONE_TIME_CODE)
        self.assertEqual(await heading(browser), LOGIN_FAILED, stack.describe())
        self.assertIn("after several attempts", await page_text(browser))
        await procs.sleep(1.0)
        self.assertEqual([r[0] for r in stack.authorization_requests()[before:]],
                         ["gold"] * MAX_ATTEMPTS, stack.describe())
        insisted = [uri for uri in await stack.upstream_uris() if uri.startswith("/unsatisfied")]
        self.assertEqual(insisted, ["/unsatisfied" + INSIST] * (MAX_ATTEMPTS + 1))


class ApiClientTests(TestCase, StepUpMixin):
    """A scripted client: a session cookie, no navigation headers."""

    timeout = 90

    async def test_bearer_tokens_are_held_to_the_route(self) -> None:
        """
        The access token of alice's silver session (a JWT with acr and
        auth_time): on the route with C{acr_values = ["gold"]} it gets
        the proxy's 401 challenge and reaches nothing; on the
        session-or-bearer route with C{step_up}, the upstream's challenge
        comes back unchanged, also to a request that looks like a browser's
        navigation (a token's client knows RFC 9470 itself). The session stepped up to gold (the
        OP's code page, by a scripted client) passes a gold token on, which
        both routes serve, telling the upstream acr C{gold}.
        """
        stack = await start_step_up_stack(self)
        proxy = stack.proxy
        client = WebClient(self)
        response, body, _, prompts = await browse(client, proxy.url + HOME, fill_gold("alice"))
        self.assertEqual(response.code, 200, f"{body[:500]!r}\n{client.history}")
        self.assertEqual(prompts, ["login", "consent"])
        silver = self.access_token(json.loads(body))

        response, body = await client.request(
            "GET", proxy.url + "/api/gold/x", keep_cookies=False,
            headers=dict(API, Authorization=f"Bearer {silver}"))
        self.assertEqual(response.code, 401, body[:500])
        self.assertEqual(parse_challenge(response.headers.getRawHeaders(b"www-authenticate")),
                         Requirement(acr_values=("gold",)))
        for headers in (API, NAVIGATE):
            response, body = await client.request(
                "GET", proxy.url + "/api/pay/x", keep_cookies=False,
                headers=dict(headers, Authorization=f"Bearer {silver}"))
            self.assertEqual(response.code, 401, body[:500])
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [STEP_UP_CHALLENGE])
            self.assertEqual(json.loads(body), STEP_UP_BODY)
            self.assertIsNone(response.headers.getRawHeaders(b"location"))

        before = len(stack.authorization_requests())
        response, body, _, prompts = await browse(client, proxy.url + GOLD, fill_gold("alice"))
        self.assertEqual(response.code, 200, f"{body[:500]!r}\n{client.history}")
        self.assertEqual(prompts, ["login", "otp"])
        self.assertEqual([r[0] for r in stack.authorization_requests()[before:]], ["gold"])
        gold = self.access_token(json.loads(body))
        for path, uri in (("/api/gold/x", "/echo/api/gold/x"), ("/api/pay/x", "/step-up/api/pay/x")):
            response, body = await client.request(
                "GET", proxy.url + path, keep_cookies=False,
                headers=dict(API, Authorization=f"Bearer {gold}"))
            self.assertEqual(response.code, 200, body[:500])
            self.assertSignIn(json.loads(body), uri, "gold")
        self.assertEqual([uri for uri in await stack.upstream_uris() if "/api/gold" in uri],
                         ["/echo/api/gold/x"])

    def access_token(self, echo: Dict[str, Any]) -> str:
        """The access token the upstream was given (C{pass_access_token = "header"})."""
        tokens = header_values(echo, "x-forwarded-access-token")
        self.assertEqual(len(tokens), 1, echo["headers"])
        return tokens[0]

    async def test_api_client_gets_the_challenges(self) -> None:
        """
        With alice's silver session cookie and no navigation headers: the
        C{acr_values} route answers the proxy's own 401 with the RFC 9470
        challenge (C{acr_values="gold"}) and reaches nothing; the C{step_up}
        route passes the upstream's challenge through unchanged (status,
        C{WWW-Authenticate}, body); the proxy sets C{X-Forwarded-Acr}
        itself (the client's own is dropped), so a forged one reaches
        neither upstream. A browser navigation on the route without
        C{step_up} gets the upstream's 401 too. The OP is not asked again.
        """
        stack = await start_step_up_stack(self)
        proxy = stack.proxy
        client = WebClient(self)
        response, body, final_url, _ = await browse(client, proxy.url + HOME, fill_login("alice"))
        self.assertEqual(response.code, 200, f"{body[:500]!r}\n{client.history}")
        self.assertSignIn(json.loads(body), "/echo" + HOME, "silver")
        asked = len(stack.authorization_requests())

        response, body = await client.request("GET", proxy.url + GOLD, headers=API)
        self.assertEqual(response.code, 401, body[:500])
        self.assertIsNone(response.headers.getRawHeaders(b"location"))
        challenge = response.headers.getRawHeaders(b"www-authenticate", [])
        self.assertEqual(len(challenge), 1, challenge)
        self.assertTrue(challenge[0].startswith(b"Bearer "), challenge)
        self.assertIn(f'error="{INSUFFICIENT}"'.encode("ascii"), challenge[0])
        self.assertEqual(parse_challenge(challenge), Requirement(acr_values=("gold",)))
        self.assertEqual(json.loads(body)["error"], INSUFFICIENT)

        for headers in (API, dict(API, **{ACR: "gold"})):
            response, body = await client.request("GET", proxy.url + PAY, headers=headers)
            self.assertEqual(response.code, 401, body[:500])
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [STEP_UP_CHALLENGE])
            self.assertEqual(json.loads(body), STEP_UP_BODY)
            response, body = await client.request("GET", proxy.url + HOME, headers=headers)
            self.assertEqual(response.code, 200, body[:500])
            self.assertSignIn(json.loads(body), "/echo" + HOME, "silver")

        response, body = await client.request("GET", proxy.url + CHALLENGE, headers=NAVIGATE)
        self.assertEqual(response.code, 401, body[:500])
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [STEP_UP_CHALLENGE])

        self.assertEqual(len(stack.authorization_requests()), asked)
        self.assertEqual([uri for uri in await stack.upstream_uris() if "gold" in uri], [])
