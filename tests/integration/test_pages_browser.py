"""
The pages the proxy shows people, in headless Chromium against the real
OpenID Provider (L{tests.integration.stack}): the 403 names the user and
signs in someone else; a cancelled login tries again; the sign-out
confirmation (and C{logout_confirm = false}) signs out; a C{templates_dir}
replaces the 403 page; markup in a claim or an C{error_description} stays
text. The browser's console must stay free of Content-Security-Policy
violations on every page of the proxy.

With C{OIDCPROXY_UPDATE_SCREENSHOTS=1} each page is also saved, small, in
C{docs/_static/pages/} for the documentation (a normal run writes nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Dict, Mapping, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.stack import (
    PROTECTED,
    Stack,
    proxy_config,
    require_op,
    reserve_port,
    start_op,
    start_proxy,
)
from tests.integration.test_login_interop import Browser, require_chromium

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCREENSHOTS = os.path.join(ROOT, "docs", "_static", "pages")
TEMPLATES = os.path.join(ROOT, "oidcproxy", "web", "pages", "templates")
ADMIN = "/admin/report?y=2"


def _pages_table(pages: Mapping[str, Any]) -> str:
    if not pages:
        return ""
    return "\n[pages]\n" + "".join(f"{k} = {procs.toml_value(v)}\n" for k, v in pages.items())


async def start_pages_stack(testcase: TestCase, pages: Optional[Dict[str, Any]] = None,
                            abort_description: Optional[str] = None) -> Stack:
    """The OP, the upstream and the proxy with an admins-only route and a [pages] table."""
    require_op()
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        public = f"http://127.0.0.1:{port}"
        op = await start_op(testcase, [public + "/oidc/callback"],
                            [public + "/", public + "/oidc/logout?signed_out=1"],
                            abort_description=abort_description)
        upstream = await procs.start_upstream(testcase)
        config = 'username_claim = "preferred_username"\n' + proxy_config(port, op, upstream)
        config += f"""
[[routes]]
path = "/admin"
upstream = "{upstream.url}"
replace_prefix = "/echo"
rule = "Contains(`groups`, `admins`)"
"""
        config += _pages_table({"organisation": "Example Ltd", "footer": "Example Ltd · IT desk",
                                **(pages or {})})
        proxy = await start_proxy(testcase, reserved, config)
    finally:
        reserved.close()
    return Stack(op, upstream, proxy)


class PageBrowser:
    """What these tests ask of the browser beyond L{Browser}."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.driver = browser.driver

    async def text(self, selector: str = "main") -> str:
        from selenium.webdriver.common.by import By

        def read() -> str:
            self.browser._wait(lambda d: d.find_elements(By.CSS_SELECTOR, selector), selector)
            return str(self.driver.find_element(By.CSS_SELECTOR, selector).text)

        return await deferToThread(read)

    async def heading(self, expected: str) -> None:
        from selenium.webdriver.common.by import By

        await deferToThread(self.browser._wait, lambda d: any(
            h.text == expected for h in d.find_elements(By.TAG_NAME, "h1")),
            f"the heading {expected!r}")

    async def click_link(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        def click() -> None:
            self.browser._wait(lambda d: d.find_elements(By.LINK_TEXT, text), f"the link {text}")
            self.driver.find_element(By.LINK_TEXT, text).click()

        await deferToThread(click)

    async def get_failing(self, url: str) -> None:
        """Navigate to C{url}, which ends at a server that is gone (the browser's error page)."""
        from selenium.common.exceptions import WebDriverException

        def get() -> None:
            try:
                self.driver.get(url)
            except WebDriverException as e:
                if "ERR_CONNECTION_REFUSED" not in str(e):
                    raise

        await deferToThread(get)

    async def csp_violations(self, origin: str) -> list:
        """The console's messages about a refused script, style or form on C{origin}'s pages."""
        def read() -> list:
            return [e["message"] for e in self.driver.get_log("browser")
                    if "Content Security Policy" in e["message"]
                    and e["message"].startswith(origin + "/")]

        return await deferToThread(read)

    async def screenshot(self, name: str) -> None:
        """Save the page as docs/_static/pages/<name>.png when asked to (small, 800x600)."""
        if os.environ.get("OIDCPROXY_UPDATE_SCREENSHOTS") != "1":
            return

        def take() -> None:
            os.makedirs(SCREENSHOTS, exist_ok=True)
            size = self.driver.get_window_size()
            self.driver.set_window_size(800, 600)
            path = os.path.join(SCREENSHOTS, name + ".png")
            try:
                self.driver.save_screenshot(path)
            finally:
                self.driver.set_window_size(size["width"], size["height"])
            # 800x600 of flat colours is 15-30 KB as Chromium writes it;
            # optipng (Debian's optipng), when installed, shaves it losslessly.
            optipng = shutil.which("optipng")
            if optipng is not None:
                subprocess.run([optipng, "-quiet", "-strip", "all", "-o2", path], check=True)

        await deferToThread(take)


class PagesInBrowserTests(TestCase):
    timeout = 180

    async def setup(self, pages: Optional[Dict[str, Any]] = None,
                    abort_description: Optional[str] = None) -> Any:
        require_chromium()
        stack = await start_pages_stack(self, pages, abort_description)
        browser = await Browser.start(self)
        page = PageBrowser(browser)
        return stack, browser, page

    async def assertNoCSPViolations(self, page: PageBrowser, stack: Stack) -> None:
        self.assertEqual(await page.csp_violations(stack.proxy.url), [])

    async def test_forbidden_then_sign_in_as_someone_else(self) -> None:
        """
        bob, refused on the admins-only route, sees his name and the route,
        and signs in as alice from the 403 page: she lands on the page bob
        was refused.
        """
        stack, browser, page = await self.setup()
        proxy, op = stack.proxy, stack.op
        await browser.get(proxy.url + ADMIN)
        await browser.log_in_at_op(op, "bob")
        await page.heading("You cannot see this page")
        text = await page.text()
        self.assertIn("You are signed in as bob.", text)
        self.assertIn("/admin", text)
        await self.assertNoCSPViolations(page, stack)
        await page.screenshot("forbidden")
        await page.click_link("Sign in as someone else")
        await browser.wait_for_url(op.issuer + "/interaction/")
        await browser.log_in_at_op(op, "alice")
        echo = await browser.json_page(proxy.url + ADMIN)
        self.assertEqual(echo["uri"], "/echo/report?y=2")

    async def test_cancel_then_try_again(self) -> None:
        """Cancel at the OP shows the login-failed page; Try again ends signed in on the original URL."""
        stack, browser, page = await self.setup()
        proxy, op = stack.proxy, stack.op
        await browser.get(proxy.url + PROTECTED)
        await browser.wait_for_url(op.issuer + "/interaction/")
        await page.click_link("[ Cancel ]")
        await page.heading("The sign-in did not work")
        self.assertIn("cancelled or refused", await page.text())
        await self.assertNoCSPViolations(page, stack)
        await page.screenshot("login_failed")
        await page.click_link("Try again")
        await browser.log_in_at_op(op, "alice")
        echo = await browser.json_page(proxy.url + PROTECTED)
        self.assertEqual(echo["uri"], "/echo" + PROTECTED)

    async def test_logout_confirmation_then_signed_out(self) -> None:
        """
        The confirmation names the account; its button signs out (at the
        proxy and the OP) and lands on the signed-out page.
        """
        stack, browser, page = await self.setup()
        proxy, op = stack.proxy, stack.op
        await browser.get(proxy.url + PROTECTED)
        await browser.log_in_at_op(op, "alice")
        await browser.json_page(proxy.url + PROTECTED)
        await browser.get(proxy.url + "/oidc/logout")
        await page.heading("Sign out")
        self.assertIn("You are signed in as alice.", await page.text())
        await self.assertNoCSPViolations(page, stack)
        await page.screenshot("logout")
        await browser.click("form[action$='/oidc/logout'] button[type=submit]")
        await browser.wait_for_url(op.issuer + "/session/end")
        self.assertNotIn("oidcproxy", await browser.cookie_names())
        await browser.click("button[name=logout]")
        await browser.wait_for_url(proxy.url + "/oidc/logout?signed_out=1")
        await page.heading("You are signed out")
        await self.assertNoCSPViolations(page, stack)
        await page.screenshot("signed_out")

    async def test_logout_without_confirmation(self) -> None:
        """logout_confirm = false: following the logout link signs out in one step."""
        stack, browser, page = await self.setup({"logout_confirm": False})
        proxy, op = stack.proxy, stack.op
        await browser.get(proxy.url + PROTECTED)
        await browser.log_in_at_op(op, "alice")
        await browser.json_page(proxy.url + PROTECTED)
        await browser.get(proxy.url + "/oidc/logout")
        await browser.wait_for_url(op.issuer + "/session/end")
        self.assertNotIn("oidcproxy", await browser.cookie_names())

    async def test_templates_dir_replaces_the_403(self) -> None:
        """A forbidden.xhtml in templates_dir is the 403 page; the slots still fill it."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(TEMPLATES, "forbidden.xhtml"), encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(folder, "forbidden.xhtml"), "w", encoding="utf-8") as f:
            f.write(text.replace("<main>", '<main><p id="custom">Example Ltd intranet</p>'))
        stack, browser, page = await self.setup({"templates_dir": folder})
        await browser.get(stack.proxy.url + ADMIN)
        await browser.log_in_at_op(stack.op, "bob")
        await page.heading("You cannot see this page")
        self.assertEqual(await page.text("#custom"), "Example Ltd intranet")
        self.assertIn("You are signed in as bob.", await page.text())

    async def test_markup_stays_text(self) -> None:
        """
        An error_description with markup from the IdP, after a Cancel, is
        shown as text; the same in a link someone made, with no login of
        this browser behind it, is not shown at all; a claim with markup is
        shown as text on the 403. Nothing of it runs.
        """
        from selenium.webdriver.common.by import By

        hostile = "<img src=x onerror=\"document.title='pwned'\">declined"
        stack, browser, page = await self.setup(abort_description=hostile)

        async def no_markup_ran() -> None:
            images = await deferToThread(
                lambda: browser.driver.find_elements(By.CSS_SELECTOR, "main img"))
            self.assertEqual(images, [])
            title = await deferToThread(lambda: browser.driver.title)
            self.assertNotIn("pwned", title)

        await browser.get(stack.proxy.url + PROTECTED)
        await browser.wait_for_url(stack.op.issuer + "/interaction/")
        await page.click_link("[ Cancel ]")
        await page.heading("The sign-in did not work")
        self.assertIn(hostile, await page.text())
        await no_markup_ran()
        await browser.get(stack.proxy.url + "/oidc/callback?error=access_denied&error_description="
                          "%3Cimg%20src%3Dx%20onerror%3D%22document.title%3D'pwned'%22%3E")
        await page.heading("The sign-in did not work")
        self.assertNotIn("img", await page.text())
        await no_markup_ran()
        await browser.get(stack.proxy.url + ADMIN)
        await browser.log_in_at_op(stack.op, "mallory")
        await page.heading("You cannot see this page")
        self.assertIn('<img src=x onerror="document.title=\'pwned\'">mallory', await page.text())
        await no_markup_ran()

    async def test_sign_in_page_and_unavailable(self) -> None:
        """
        sign_in_page = true shows a button naming the provider; with the OP
        gone mid-login, the callback's page says so and retries by itself.
        """
        stack, browser, page = await self.setup({"sign_in_page": True,
                                                 "provider_name": "Example SSO"})
        proxy, op = stack.proxy, stack.op
        await browser.get(proxy.url + PROTECTED)
        await page.heading("Sign in")
        await self.assertNoCSPViolations(page, stack)
        await page.screenshot("sign_in")
        await page.click_link("Sign in with Example SSO")
        await browser.wait_for_url(op.issuer + "/interaction/")
        # The OP goes away; a new login reaches the proxy's callback anyway.
        await op.child.stop()
        await page.get_failing(proxy.url + "/oidc/login?rd=%2Fsome%2Fpage")
        authorize = await browser.url()
        self.assertTrue(authorize.startswith(op.issuer), authorize)
        state = parse_qs(urlsplit(authorize).query)["state"][0]
        await browser.get(f"{proxy.url}/oidc/callback?" + urlencode(
            {"code": "gone", "state": state, "iss": op.issuer}))
        await page.heading("Temporarily unavailable")
        self.assertIn("tries again by itself", await page.text())
        await self.assertNoCSPViolations(page, stack)
        await page.screenshot("unavailable")
