"""
Step-up authentication (issue 20, RFC 9470) end to end: the real OP
(L{tests.integration.stack.OP_SCRIPT} with C{--step-up}: the level
C{silver} is its login form, C{gold} the login form and then a page asking
for a one-time code), the test upstream and the proxy as real processes,
driven by headless Chromium and, for API clients, by a scripted HTTP client.

The stack (OP, upstream, proxy and its routes) is
L{tests.integration.step_up_stack}'s.

Covered: a silver session asking for the gold route is sent to the OP
again, through the one-time code page, and lands on the page first asked
for with C{X-Forwarded-Acr: gold}, its silver session serving the other
pages meanwhile; a gold sign-in stays usable after a fresh sign-in at
silver (asked for a recent one only), with cookie and with Redis sessions;
a C{max_auth_age} of a few seconds
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
from typing import Any, Dict, Optional, Tuple

from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from oidcproxy.core.assurance import INSUFFICIENT, Requirement, parse_challenge
from tests.integration import procs
from tests.integration.stack import API, NAVIGATE, WebClient, browse, fill_login, header_values
from tests.integration.step_up_stack import (
    ACR,
    CHALLENGE,
    FRESH,
    GOLD,
    HOME,
    INSIST,
    LOGIN_FAILED,
    MAX_ATTEMPTS,
    MAX_AUTH_AGE,
    ONE_TIME_CODE,
    PAY,
    SHOP,
    STEP_UP_PAGE,
    StepUpMixin,
    StepUpStack,
    fill_gold,
    heading,
    page_text,
    session_cookie_header,
    sign_in_at_op,
    sign_in_if_asked,
    start_step_up_stack,
)
from tests.integration.test_login_interop import Browser, require_chromium
from tests.integration.upstream_app import STEP_UP_BODY, STEP_UP_CHALLENGE


class BrowserStepUpTests(TestCase, StepUpMixin):
    """Headless Chromium through the OP's real login, code and consent pages."""

    timeout = 120

    async def silver_session(self, store: str = "cookie") -> Tuple[StepUpStack, Browser, int]:
        """
        A browser signed in as alice at silver (the route without
        requirements: no code page), its session in C{store}; the stack,
        the browser and the C{auth_time} the upstream was told.
        """
        require_chromium()
        stack = await start_step_up_stack(self, store)
        browser = await Browser.start(self)
        await browser.get(stack.proxy.url + HOME)
        await sign_in_at_op(browser, stack.op, "alice")
        echo = await browser.json_page(stack.proxy.url + HOME)
        auth_time = self.assertSignIn(echo, "/echo" + HOME, "silver")
        self.assertEqual(len(stack.authorization_requests()), 1, stack.describe())
        return stack, browser, auth_time

    async def test_acr_values_route_steps_up(self) -> None:
        """Cookie sessions: see L{acr_values_route_steps_up}."""
        await self.acr_values_route_steps_up("cookie")

    async def test_acr_values_route_steps_up_redis(self) -> None:
        """Redis sessions (the sign-ins carried over in Redis): see L{acr_values_route_steps_up}."""
        await self.acr_values_route_steps_up("redis")

    async def acr_values_route_steps_up(self, store: str) -> None:
        """
        A session at silver asks for the gold route: the proxy sends the
        browser to the OP asking for C{acr_values=gold}, where the silver OP
        session is not enough: its login form, then the one-time code page;
        back on the page first asked for, the upstream is told acr C{gold}.
        While the browser is at the OP, its silver session still serves the
        other route (another tab, here an API client with its cookies). The
        stepped-up session then serves the gold page without the OP.
        """
        stack, browser, first_time = await self.silver_session(store)
        proxy = stack.proxy
        before = len(stack.authorization_requests())
        await browser.get(proxy.url + GOLD)
        await browser.wait_for_url(stack.op.issuer + "/interaction/")
        # The OP and the proxy share the browser's cookies of 127.0.0.1.
        response, body = await WebClient(self).request(
            "GET", proxy.url + HOME, keep_cookies=False,
            headers=dict(API, Cookie=await session_cookie_header(browser)))
        self.assertEqual(response.code, 200, body[:500])
        self.assertSignIn(json.loads(body), "/echo" + HOME, "silver")
        await sign_in_at_op(browser, stack.op, "alice", ONE_TIME_CODE)
        echo = await browser.json_page(proxy.url + GOLD)
        self.assertGreaterEqual(self.assertSignIn(echo, "/echo" + GOLD, "gold"), first_time)
        asked = stack.authorization_requests()[before:]
        self.assertEqual([r[0] for r in asked], ["gold"], stack.describe())

        await browser.get(proxy.url + GOLD + "&again=1")
        echo = await browser.json_page(proxy.url + GOLD + "&again=1")
        self.assertSignIn(echo, "/echo" + GOLD + "&again=1", "gold")
        self.assertEqual(len(stack.authorization_requests()), before + 1)
        self.assertEqual(await stack.upstream_uris(), [
            "/echo" + HOME, "/echo" + HOME, "/echo" + GOLD, "/echo" + GOLD + "&again=1"])

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
        await self.until_too_old(stack, browser, first_time)
        return stack, browser, first_time, len(stack.authorization_requests())

    async def until_too_old(self, stack: StepUpStack, browser: Browser, auth_time: int) -> None:
        """
        Poll, as an API client with the browser's cookies, until the
        session's sign-in of C{auth_time} is too old for C{/fresh}: the 401
        challenge naming C{max_age}.
        """
        cookie = await session_cookie_header(browser)
        client = WebClient(self)

        async def too_old() -> Optional[IResponse]:
            response, _ = await client.request("GET", stack.proxy.url + FRESH,
                                               headers=dict(API, Cookie=cookie), keep_cookies=False)
            self.assertIn(response.code, (200, 401))
            return response if response.code == 401 else None

        response = await procs.poll_async(too_old, MAX_AUTH_AGE + 10, interval=0.25,
                                          what=f"{FRESH} to need a fresh sign-in")
        self.assertGreaterEqual(time.time(), auth_time + MAX_AUTH_AGE)
        challenge = response.headers.getRawHeaders(b"www-authenticate", [])
        self.assertEqual(len(challenge), 1, challenge)
        self.assertEqual(parse_challenge(challenge),
                         Requirement(acr_values=(), max_age=float(MAX_AUTH_AGE)))

    async def test_higher_level_kept_after_a_fresh_lower_sign_in(self) -> None:
        """Cookie sessions: see L{higher_level_kept}."""
        await self.higher_level_kept("cookie")

    async def test_higher_level_kept_after_a_fresh_lower_sign_in_redis(self) -> None:
        """Redis sessions: see L{higher_level_kept}."""
        await self.higher_level_kept("redis")

    async def higher_level_kept(self, store: str) -> None:
        """
        A session stepped up to gold, then (its sign-in too old for
        C{/fresh}) signed in afresh at silver, the OP's answer to
        C{max_age} alone: C{/fresh} is served at silver with the new
        C{auth_time}, and the gold route still at gold, with the gold
        sign-in's own C{auth_time}, without asking the OP again.
        """
        stack, browser, _ = await self.silver_session(store)
        proxy = stack.proxy
        await browser.get(proxy.url + GOLD)
        await sign_in_at_op(browser, stack.op, "alice", ONE_TIME_CODE)
        gold_time = self.assertSignIn(await browser.json_page(proxy.url + GOLD),
                                      "/echo" + GOLD, "gold")
        await self.until_too_old(stack, browser, gold_time)
        await procs.sleep(max(0.0, gold_time + MAX_AUTH_AGE + 1.2 - time.time()))
        await browser.get(proxy.url + FRESH)
        await sign_in_at_op(browser, stack.op, "alice")
        echo = await browser.json_page(proxy.url + FRESH)
        self.assertGreater(self.assertSignIn(echo, "/echo" + FRESH, "silver"), gold_time)
        asked = len(stack.authorization_requests())

        await browser.get(proxy.url + GOLD + "&later=1")
        echo = await browser.json_page(proxy.url + GOLD + "&later=1")
        self.assertEqual(self.assertSignIn(echo, "/echo" + GOLD + "&later=1", "gold"), gold_time)
        self.assertEqual(len(stack.authorization_requests()), asked)

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
