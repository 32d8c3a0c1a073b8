"""
The pieces of the step-up integration tests
(L{tests.integration.test_step_up}): the real OP with two sign-in levels
(L{tests.integration.stack.OP_SCRIPT} with C{--step-up}: C{silver} is its
login form, C{gold} the login form and then a page asking for a one-time
code), the test upstream and the proxy with the routes below; the browser
at the OP's pages; the checks the tests share.

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
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

import attr
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.redis_server import start_redis
from tests.integration.stack import (
    Form,
    OpenIDProvider,
    WebClient,
    fill_login,
    header_values,
    proxy_config,
    require_op,
    reserve_port,
    start_op,
    start_proxy,
)
from tests.integration.test_login_interop import Browser, _detached

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


async def start_step_up_stack(testcase: TestCase, store: str = "cookie") -> StepUpStack:
    """
    The OP with C{--step-up --test-hooks}, the upstream, and the proxy with
    the routes above, its sessions in C{store} (C{"cookie"}, or C{"redis"}:
    a redis-server started for the test).
    """
    require_op()
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        public = f"http://127.0.0.1:{port}"
        op = await start_op(testcase, [public + "/oidc/callback"],
                            [public + "/", public + "/oidc/logout?signed_out=1"],
                            step_up=True, test_hooks=True)
        upstream = await procs.start_upstream(testcase)
        redis = await start_redis(testcase) if store == "redis" else None
        config = proxy_config(
            port, op, upstream, session={"store": store},
            redis={"url": redis.url + "/0", "command_timeout": "2s", "connect_timeout": "1s"}
            if redis is not None else None)
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
    """
    The browser's cookies of the page's host as a C{Cookie} header: the
    proxy's session among them, wherever the browser is (the OP, on
    127.0.0.1 too, shares them; its own are ignored by the proxy).
    """
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
