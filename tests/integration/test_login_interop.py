"""
Interoperability tests: the real C{twistd oidcproxy} process logs users in at
a real, independently written OpenID Provider, panva's C{oidc-provider}
(Node.js, L{OP_SCRIPT}), in front of the real upstream app
(L{tests.integration.upstream_app}).

Each test starts its own OP, upstream and proxy as child processes on
loopback ports and stops them in cleanup. The login is walked twice: by a
scripted HTTP client (treq, cookies kept per origin here, the OP's
development login and consent forms parsed from its HTML), and by headless
Chromium driven by selenium.

Where Node.js and the OP's node_modules (C{npm ci} in tests/integration/op),
or Chromium, chromedriver and selenium, are missing they fail, saying what
to install (see L{tests.helpers}); C{tests/run.sh} installs them all.

Each login prints its round trip (the first request of the protected page to
the upstream's answer) on stderr as C{LOGIN_ROUND_TRIP_MS=<ms> client=<name>}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Sequence
from urllib.parse import parse_qs, urlsplit

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.helpers import require_module, require_program

# The OP, the proxy on a known port and the browser-like HTTP client live in
# tests.integration.stack (shared with test_sessions_redis); re-exported here.
from tests.integration.stack import (  # noqa: F401
    ALICE,
    BOB,
    CLIENT_ID,
    NAVIGATE,
    OP_DIR,
    OP_PACKAGE,
    OP_SCRIPT,
    PROTECTED,
    STEP_TIMEOUT,
    Form,
    OpenIDProvider,
    OriginCookieJar,
    Stack,
    WebClient,
    browse,
    fill_login,
    header_values,
    parse_forms,
    proxy_config,
    proxy_cookies_seen,
    require_op,
    reserve_port,
    start_op,
    start_proxy,
    start_stack,
)

log = Logger()

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,900",
    # Nothing but the loopback address resolves: the browser cannot reach out
    # (the OP's pages @import a web font; its CSP forbids that as well).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def report_round_trip(client: str, seconds: float) -> None:
    ms = round(seconds * 1000)
    sys.stderr.write(f"\nLOGIN_ROUND_TRIP_MS={ms} client={client}\n")
    sys.stderr.flush()
    log.info("LOGIN_ROUND_TRIP_MS={ms} client={client}", ms=ms, client=client)


def require_chromium() -> None:
    """Chromium, chromedriver and selenium are all here, or the test fails saying which is not."""
    require_program("chromium", "chromium", path=CHROMIUM)
    require_program("chromedriver", "chromium-driver", path=CHROMEDRIVER)
    require_module("selenium", "pip install -r requirements-dev.txt (tests/run.sh does)")


# -- the tests -----------------------------------------------------------------------


class LoginInteropTests(TestCase):
    """Login, API refusal and logout against oidc-provider."""

    timeout = 120

    def assertIdentity(self, echo: Dict[str, Any], user: Dict[str, str]) -> None:
        self.assertEqual(header_values(echo, "x-forwarded-user"), [user["login"]])
        self.assertEqual(header_values(echo, "x-forwarded-email"), [user["email"]])
        self.assertEqual(header_values(echo, "x-forwarded-groups"), [user["groups"]])
        self.assertEqual(proxy_cookies_seen(echo), [])

    async def test_login_with_http_client(self) -> None:
        """
        A browser-like HTTP client asks for a protected page, is sent to the
        OP, logs in as alice through its login and consent forms, comes back
        through the callback to the page it asked for, and the upstream sees
        alice's identity headers. C{/oidc/userinfo} then shows her claims and
        no token.
        """
        stack = await start_stack(self)
        client = WebClient(self)
        proxy, op = stack.proxy, stack.op

        started = time.perf_counter()
        response, body, final_url, prompts = await browse(
            client, proxy.url + PROTECTED, fill_login("alice"))
        elapsed = time.perf_counter() - started
        report_round_trip("treq", elapsed)

        context = f"\n{client.history}\n{stack.describe()}"
        self.assertEqual(response.code, 200, body[:2000].decode("utf-8", "replace") + context)
        self.assertEqual(final_url, proxy.url + PROTECTED)
        self.assertEqual(prompts, ["login", "consent"], context)
        echo = json.loads(body)
        self.assertEqual(echo["uri"], "/echo" + PROTECTED)
        self.assertIdentity(echo, ALICE)

        # The way there: the proxy's authorization request, then the OP's
        # answer at the callback, with RFC 9207's iss.
        first, authorize = client.history[0], client.history[1]
        self.assertEqual(first, ("GET", proxy.url + PROTECTED, 302))
        self.assertTrue(authorize[1].startswith(op.issuer + "/auth?"), authorize)
        query = parse_qs(urlsplit(authorize[1]).query)
        self.assertEqual(query["client_id"], [CLIENT_ID])
        self.assertEqual(query["response_type"], ["code"])
        self.assertEqual(query["redirect_uri"], [proxy.url + "/oidc/callback"])
        self.assertEqual(query["code_challenge_method"], ["S256"])
        self.assertEqual(sorted(query["scope"][0].split()), ["email", "groups", "openid", "profile"])
        self.assertIn("nonce", query)
        callbacks = [(m, u, c) for m, u, c in client.history
                     if u.startswith(proxy.url + "/oidc/callback")]
        self.assertEqual(len(callbacks), 1, context)
        self.assertEqual(callbacks[0][2], 302)
        callback_query = parse_qs(urlsplit(callbacks[0][1]).query)
        self.assertEqual(callback_query["iss"], [op.issuer])
        self.assertEqual(client.history[-2:-1], [("GET", callbacks[0][1], 302)])
        # The login's state cookie is gone, the session cookie is there.
        names = client.jar.names(proxy.url)
        self.assertIn("oidcproxy", names)
        self.assertEqual([n for n in names if n.startswith("oidcproxy_state")], [], names)

        # Logged in, the page is served at once.
        response, body = await client.request("GET", proxy.url + "/some/other",
                                              headers={"Accept": "application/json"})
        self.assertEqual(response.code, 200, body)
        self.assertIdentity(json.loads(body), ALICE)

        response, body = await client.request("GET", proxy.url + "/oidc/userinfo",
                                              headers={"Accept": "application/json"})
        self.assertEqual(response.code, 200, body)
        info = json.loads(body)
        self.assertEqual(info["sub"], "alice")
        claims = info["claims"]
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["iss"], op.issuer)
        self.assertEqual(claims["email"], "alice@example.com")
        self.assertIs(claims["email_verified"], True)
        self.assertEqual(claims["preferred_username"], "alice")
        self.assertEqual(claims["groups"], ["admins", "staff"])
        self.assertEqual(claims["aud"], CLIENT_ID)
        for key in ("access_token", "id_token", "refresh_token"):
            self.assertNotIn(key, info)
            self.assertNotIn(key, claims)
        # No JWT (the ID token) anywhere in the answer.
        self.assertNotIn(b"eyJ", body)

    async def test_api_client_gets_401(self) -> None:
        """
        Without a session, a request that is not a browser navigation gets
        401 with C{WWW-Authenticate: Bearer}, and nothing reaches the
        upstream; the public route does reach it, without forged identity.
        """
        stack = await start_stack(self)
        client = WebClient(self)
        proxy, upstream = stack.proxy, stack.upstream

        response, body = await client.request(
            "GET", proxy.url + PROTECTED,
            headers={"Accept": "application/json", "X-Forwarded-User": "mallory"})
        self.assertEqual(response.code, 401, body)
        challenge = response.headers.getRawHeaders(b"www-authenticate", [b""])[0]
        self.assertTrue(challenge.startswith(b"Bearer"), challenge)
        self.assertIsNone(response.headers.getRawHeaders(b"location"))
        _, events = await client.request("GET", upstream.url + "/events")
        self.assertEqual(json.loads(events), [])

        # The control: the upstream is there, and the public route reaches it.
        response, body = await client.request(
            "GET", proxy.url + "/public/x",
            headers={"Accept": "application/json", "X-Forwarded-User": "mallory"})
        self.assertEqual(response.code, 200, body)
        echo = json.loads(body)
        self.assertEqual(echo["uri"], "/echo/x")
        self.assertEqual(header_values(echo, "x-forwarded-user"), [])
        _, events = await client.request("GET", upstream.url + "/events")
        self.assertEqual([e["uri"] for e in json.loads(events)], ["/echo/x"])

    async def test_login_in_chromium(self) -> None:
        """
        Headless Chromium logs in as alice through the OP's forms and sees
        the upstream's answer with her identity; logs out through the
        proxy's confirmation form, which ends the session at the proxy and
        sends the browser to the OP's end_session_endpoint (RP-initiated
        logout with id_token_hint); confirms there, comes back to the proxy's
        signed-out page; the protected page sends it to the OP's login form,
        where it logs in as bob.
        """
        require_chromium()
        stack = await start_stack(self, auth_params={"prompt": "login"})
        browser = await Browser.start(self)
        proxy, op = stack.proxy, stack.op

        started = time.perf_counter()
        await browser.get(proxy.url + PROTECTED)
        await browser.log_in_at_op(op, "alice")
        echo = await browser.json_page(proxy.url + PROTECTED)
        report_round_trip("chromium", time.perf_counter() - started)
        self.assertEqual(echo["uri"], "/echo" + PROTECTED)
        self.assertIdentity(echo, ALICE)

        # Log out: a GET shows a confirmation form; submitting it logs out.
        await browser.get(proxy.url + "/oidc/logout")
        self.assertTrue((await browser.url()).startswith(proxy.url + "/oidc/logout"))
        await browser.click("form[action$='/oidc/logout'] button[type=submit]")
        await browser.wait_for_url(op.issuer + "/session/end")
        self.assertNotIn("oidcproxy", await browser.cookie_names())
        await browser.click("button[name=logout]")
        await browser.wait_for_url(proxy.url + "/oidc/logout?signed_out=1")

        # The protected page sends the browser back to the OP...
        await browser.get(proxy.url + PROTECTED)
        self.assertTrue((await browser.url()).startswith(op.issuer + "/interaction/"))
        # ... where another user can log in.
        await browser.log_in_at_op(op, "bob")
        echo = await browser.json_page(proxy.url + PROTECTED)
        self.assertIdentity(echo, BOB)


class Browser:
    """
    Headless Chromium under selenium. Selenium blocks, so each call runs in
    the reactor's thread pool; the reactor (and trial's timeout) stays live.
    """

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    @classmethod
    async def start(cls, testcase: TestCase, extra_args: Sequence[str] = ()) -> Browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        workdir = os.path.abspath(testcase.mktemp())
        os.makedirs(workdir)
        options = Options()
        options.binary_location = CHROMIUM
        for arg in (*CHROMIUM_ARGS, *extra_args):
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={os.path.join(workdir, 'profile')}")
        # The console's messages (Content-Security-Policy refusals among them).
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # The driver is given: Selenium Manager (which downloads) never runs.
        service = Service(executable_path=CHROMEDRIVER,
                          log_output=os.path.join(workdir, "chromedriver.log"))

        def start() -> Any:
            driver = webdriver.Chrome(options=options, service=service)
            driver.set_page_load_timeout(STEP_TIMEOUT)
            driver.set_script_timeout(STEP_TIMEOUT)
            return driver

        driver = await deferToThread(start)
        testcase.addCleanup(deferToThread, driver.quit)
        return cls(driver)

    async def get(self, url: str) -> None:
        await deferToThread(self.driver.get, url)

    async def url(self) -> str:
        return await deferToThread(lambda: self.driver.current_url)

    async def cookie_names(self) -> List[str]:
        return await deferToThread(lambda: [c["name"] for c in self.driver.get_cookies()])

    def _wait(self, condition: Callable[[Any], Any], what: str) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, STEP_TIMEOUT, poll_frequency=0.05).until(condition)
        except TimeoutException:
            raise AssertionError(
                f"timed out after {STEP_TIMEOUT}s waiting for {what}; at "
                f"{self.driver.current_url}:\n{self.driver.page_source[:3000]}") from None

    async def wait_for_url(self, prefix: str) -> None:
        await deferToThread(self._wait, lambda d: d.current_url.startswith(prefix),
                            f"a page under {prefix}")

    async def click(self, selector: str) -> None:
        from selenium.webdriver.common.by import By

        def click() -> None:
            self._wait(lambda d: d.find_elements(By.CSS_SELECTOR, selector), selector)
            self.driver.find_element(By.CSS_SELECTOR, selector).click()

        await deferToThread(click)

    async def log_in_at_op(self, op: OpenIDProvider, login: str) -> None:
        """Fill the OP's development login form, then its consent form."""
        from selenium.webdriver.common.by import By

        def log_in() -> None:
            d = self.driver
            self._wait(lambda d: d.current_url.startswith(op.issuer + "/interaction/")
                       and d.find_elements(By.NAME, "login"), "the OP's login form")
            d.find_element(By.NAME, "login").send_keys(login)
            d.find_element(By.NAME, "password").send_keys("any password will do")
            form = d.find_element(By.TAG_NAME, "form")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            self._wait(_detached(form), "the login form to be submitted")
            self._wait(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=prompt][value=consent]"),
                       "the OP's consent form")
            form = d.find_element(By.TAG_NAME, "form")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            self._wait(_detached(form), "the consent form to be submitted")

        await deferToThread(log_in)

    async def json_page(self, url: str) -> Any:
        """Wait for the browser to be at C{url}; the JSON document it shows."""
        from selenium.webdriver.common.by import By

        def read() -> Any:
            self._wait(lambda d: d.current_url == url and d.find_elements(By.TAG_NAME, "pre"),
                       f"the page {url}")
            return json.loads(self.driver.find_element(By.TAG_NAME, "pre").text)

        return await deferToThread(read)


def _detached(element: Any) -> Callable[[Any], bool]:
    """
    A wait condition: C{element} has left the page (its form was submitted).
    Selenium's C{staleness_of} knows only StaleElementReferenceException;
    Chromium 156 may instead answer "Node with given id does not belong to
    the document" while the next page replaces the old one, which means the
    same.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def gone(_: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e) or "No node with given id" in str(e):
                return True
            raise
        return False

    return gone
