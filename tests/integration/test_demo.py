"""
Integration tests of C{twistd -n oidcproxy --demo}: the real process, its
development identity provider and echo application on loopback ports, and a
cookie-keeping HTTP client walking the login like a browser.

The demo listens on C{tcp:0}; its port file lists the proxy's, the
provider's and the echo application's addresses, one a line.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Optional, Tuple
from urllib.parse import urljoin

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.stack import (
    API,
    NAVIGATE,
    Form,
    WebClient,
    browse,
    header_values,
    location_of,
    parse_forms,
    proxy_cookies_seen,
)
from tests.integration.test_login_interop import Browser as Chromium
from tests.integration.test_login_interop import require_chromium


class Demo:
    """The running demo: its child process and its three URLs."""

    def __init__(self, child: procs.Child, urls: List[str]) -> None:
        self.child = child
        self.proxy, self.issuer, self.echo = urls

    def log(self) -> str:
        return self.child.stdout() + self.child.stderr()


async def start_demo(testcase: TestCase, *extra: str) -> Demo:
    """Start the demo on free loopback ports; it is stopped in cleanup."""
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    port_file = os.path.join(workdir, "demo.port")
    args = procs.twistd_command() + [
        "-n", "--pidfile=", "oidcproxy", "--demo",
        "--listen", "tcp:0:interface=127.0.0.1", "--port-file", port_file, *extra,
    ]
    child = procs.Child("demo", args, workdir)
    testcase.addCleanup(child.stop)

    def addresses() -> Optional[List[str]]:
        if os.path.exists(port_file):
            with open(port_file, encoding="ascii") as f:
                lines = f.read().splitlines()
            if len(lines) != 3 or not all(line.startswith("127.0.0.1:") for line in lines):
                raise AssertionError(f"unexpected port file content {lines!r}")
            return ["http://" + line for line in lines]
        if child.process.poll() is not None:
            raise AssertionError("the demo died at start")
        return None

    try:
        urls = await procs.poll(addresses, procs.START_DEADLINE, what="the demo's port file")
        # The port file is written once the ports listen; the proxy loads
        # its provider's discovery document and keys just after (a 503 until
        # then, which a slow machine shows): wait for readiness.
        client = WebClient(testcase)

        async def ready() -> Optional[bool]:
            response, _ = await client.request("GET", urls[0] + "/oidc/ready", keep_cookies=False)
            return response.code == 200 or None

        await procs.poll_async(ready, procs.START_DEADLINE, what="the demo's /oidc/ready")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{child.describe()}") from None
    return Demo(child, urls)


def fill(username: str, password: str) -> Callable[[Form], List[Tuple[str, str]]]:
    """The answers to the development provider's login form."""
    def answers(form: Form) -> List[Tuple[str, str]]:
        data = [(name, value) for name, kind, value in form.fields if kind == "hidden"]
        return data + [("username", username), ("password", password), ("action", "login")]
    return answers


class DemoProcessTests(TestCase):
    timeout = 60

    async def test_login_logout_and_the_rule_route(self) -> None:
        """
        GET / is sent to the demo provider; its form takes alice's password;
        back at the callback the proxy sends the browser to /, where the echo
        application shows X-Forwarded-User alice (and not the proxy's
        cookies). Logout goes through the provider's end_session to /public/,
        and / asks for a login again. bob, logged in, gets 403 on /admin/.
        The log has the banner with the URL and the users.
        """
        demo = await start_demo(self)
        self.assertIn("NOT FOR PRODUCTION", demo.log())
        self.assertIn(f"Open {demo.proxy}/", demo.log())
        self.assertIn("alice / wonderland", demo.log())

        client = WebClient(self)
        response, _ = await client.request("GET", demo.proxy + "/", headers=NAVIGATE)
        self.assertEqual(response.code, 302)
        self.assertTrue(location_of(response, demo.proxy).startswith(demo.issuer + "/authorize?"))

        response, body, url, _ = await browse(client, demo.proxy + "/", fill("alice", "wonderland"))
        self.assertEqual((response.code, url), (200, demo.proxy + "/"), body)
        self.assertIn(b"<td>X-Forwarded-User</td><td>alice</td>", body)
        steps = [(method, u.split("?")[0], code) for method, u, code in client.history[1:]]
        self.assertEqual(steps, [
            ("GET", demo.proxy + "/", 302),
            ("GET", demo.issuer + "/authorize", 200),
            ("POST", demo.issuer + "/authorize", 303),
            ("GET", demo.proxy + "/oidc/callback", 302),
            ("GET", demo.proxy + "/", 200),
        ])
        _, echo = await client.request("GET", demo.proxy + "/", headers=API)
        document = json.loads(echo)
        self.assertEqual(document["identity"]["X-Forwarded-User"], "alice")
        self.assertEqual(header_values(document, "x-forwarded-email"), ["alice@example.com"])
        self.assertEqual(proxy_cookies_seen(document), [])

        response, _ = await client.request(
            "POST", demo.proxy + "/oidc/logout", data=[("rd", "/public/")],
            headers={"Origin": demo.proxy, "Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(response.code, 303)
        end_session = location_of(response, demo.proxy)
        self.assertTrue(end_session.startswith(demo.issuer + "/end_session?"), end_session)
        response, _, url, _ = await browse(client, end_session, fill("", ""))
        self.assertEqual((response.code, url.split("?")[0]), (200, demo.proxy + "/public/"))
        response, _ = await client.request("GET", demo.proxy + "/", headers=NAVIGATE)
        self.assertEqual(response.code, 302)
        self.assertTrue(location_of(response, demo.proxy).startswith(demo.issuer + "/authorize?"))

        bob = WebClient(self)
        response, body, url, _ = await browse(bob, demo.proxy + "/admin/", fill("bob", "builder"))
        self.assertEqual((response.code, url), (403, demo.proxy + "/admin/"), body)
        response, body = await bob.request("GET", demo.proxy + "/", headers=API)
        self.assertEqual(json.loads(body)["identity"]["X-Forwarded-User"], "bob")

    async def test_wrong_password_shows_the_form_again(self) -> None:
        """A wrong password gets the form again, with the error, at the provider."""
        demo = await start_demo(self)
        client = WebClient(self)
        response, _ = await client.request("GET", demo.proxy + "/", headers=NAVIGATE)
        form_url = location_of(response, demo.proxy)
        _, page = await client.request("GET", form_url, headers=NAVIGATE)
        (form,) = parse_forms(page)
        response, page = await client.request(
            "POST", urljoin(form_url, form.action), headers=NAVIGATE,
            data=fill("alice", "not-her-password")(form))
        self.assertEqual(response.code, 200)
        self.assertIn(b"Wrong user name or password.", page)
        self.assertIn(b"not for production", page)

    async def test_refuses_anything_but_loopback(self) -> None:
        """--demo --listen on 0.0.0.0: one line naming the endpoint on stderr, exit status 1."""
        workdir = os.path.abspath(self.mktemp())
        args = procs.twistd_command() + [
            "-n", "--pidfile=", "oidcproxy", "--demo", "--listen", "tcp:0:interface=0.0.0.0"]
        child = procs.Child("demo", args, workdir)
        self.addCleanup(child.stop)
        code = await child.wait(procs.START_DEADLINE)
        self.assertEqual(code, 1, child.describe())
        lines = [line for line in child.stderr().splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, child.describe())
        self.assertIn("'tcp:0:interface=0.0.0.0'", lines[0])

    async def test_login_in_chromium(self) -> None:
        """
        The same login and logout in headless Chromium: its login form POST
        carries a real Origin (the provider's pages must not make it "null"),
        and the cookies of the proxy and the provider share one host.
        """
        require_chromium()
        demo = await start_demo(self)
        browser = await Chromium.start(self)
        await browser.get(demo.proxy + "/")
        await browser.wait_for_url(demo.issuer + "/authorize?")

        def log_in() -> str:
            from selenium.webdriver.common.by import By

            driver = browser.driver
            driver.find_element(By.NAME, "username").send_keys("alice")
            driver.find_element(By.NAME, "password").send_keys("wonderland")
            driver.find_element(By.CSS_SELECTOR, "button[value=login]").click()
            browser._wait(lambda d: d.current_url == demo.proxy + "/", "the echo page")
            return str(driver.page_source)

        page = await deferToThread(log_in)
        self.assertIn("<td>X-Forwarded-User</td><td>alice</td>", page)
        await browser.get(demo.proxy + "/oidc/logout?rd=/public/")
        await browser.click("button[type=submit]")
        await browser.wait_for_url(demo.proxy + "/public/")
        await browser.get(demo.proxy + "/")
        await browser.wait_for_url(demo.issuer + "/authorize?")
