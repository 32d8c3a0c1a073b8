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

They skip, with the reason, where Node.js and the OP's node_modules
(C{npm ci} in tests/integration/op), or Chromium, chromedriver and selenium,
are missing; C{tests/run.sh} installs them all.

Each login prints its round trip (the first request of the protected page to
the upstream's answer) on stderr as C{LOGIN_ROUND_TRIP_MS=<ms> client=<name>}.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urljoin, urlsplit

import attr
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.integration import procs

log = Logger()

OP_DIR = os.path.join(procs.HERE, "op")
OP_SCRIPT = os.path.join(OP_DIR, "op.mjs")
OP_PACKAGE = os.path.join(OP_DIR, "node_modules", "oidc-provider", "package.json")

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

CLIENT_ID = "oidcproxy-interop"
PROTECTED = "/some/page?x=1"
"""The page the user asks for first; the route sends it to the upstream's C{/echo}."""

NAVIGATE = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "User-Agent": "oidcproxy-interop-test",
}
"""What a browser sends on a top-level navigation."""

STEP_TIMEOUT = 10.0
"""Seconds for one HTTP exchange, one page load or one wait in the browser."""

ALICE = {"login": "alice", "email": "alice@example.com", "groups": "admins,staff"}
BOB = {"login": "bob", "email": "bob@example.com", "groups": "staff"}


def report_round_trip(client: str, seconds: float) -> None:
    ms = round(seconds * 1000)
    sys.stderr.write(f"\nLOGIN_ROUND_TRIP_MS={ms} client={client}\n")
    sys.stderr.flush()
    log.info("LOGIN_ROUND_TRIP_MS={ms} client={client}", ms=ms, client=client)


def _missing(reason: str) -> Exception:
    """
    Skip for a missing part — except in CI (CI=true), where tests/run.sh has
    installed every part, so a missing one is a failure, not a skip.
    """
    if os.environ.get("CI"):
        return RuntimeError(f"CI: {reason}")
    return SkipTest(reason)


def require_op() -> str:
    """The node executable, or skip: the OP needs Node.js and its node_modules."""
    node = shutil.which("node")
    if node is None:
        raise _missing("Node.js (node) is not installed; the test OP (oidc-provider) needs it")
    if not os.path.isfile(OP_PACKAGE):
        raise _missing(
            f"oidc-provider is not installed in {OP_DIR}/node_modules; "
            f"run `npm ci` there (tests/run.sh does)"
        )
    return node


def require_chromium() -> None:
    """Skip unless Chromium, chromedriver and selenium are all here."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        raise _missing(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise _missing("selenium is not installed (pip install -r requirements-dev.txt)") from None


# -- the processes -----------------------------------------------------------------


@attr.s(auto_attribs=True)
class OpenIDProvider:
    """The running OP (node op.mjs)."""

    child: procs.Child
    port: int
    client_id: str
    client_secret: str

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_op(testcase: TestCase, redirect_uris: Sequence[str],
                   post_logout_redirect_uris: Sequence[str] = (), **ttls: int) -> OpenIDProvider:
    """
    Start the OP on a free loopback port with one confidential client that may
    redirect to C{redirect_uris}; C{ttls} (C{access_token_ttl=5}, ...) are
    passed as C{--access-token-ttl 5}. Waits for its C{PORT} line.
    """
    node = require_op()
    secret = secrets.token_urlsafe(24)
    args = [node, OP_SCRIPT, "--port", "0", "--client-id", CLIENT_ID, "--client-secret", secret]
    for uri in redirect_uris:
        args += ["--redirect-uri", uri]
    for uri in post_logout_redirect_uris:
        args += ["--post-logout-redirect-uri", uri]
    for name, value in ttls.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    workdir = os.path.abspath(testcase.mktemp())
    child = procs.Child("op", args, workdir)
    testcase.addCleanup(child.stop)

    def port() -> Optional[int]:
        for line in child.stdout().splitlines():
            if line.startswith("PORT "):
                return int(line.split()[1])
        if child.process.poll() is not None:
            raise AssertionError("the OP died at start")
        return None

    try:
        found = await procs.poll(port, procs.START_DEADLINE, what="the OP's PORT line")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{child.describe()}") from None
    return OpenIDProvider(child, found, CLIENT_ID, secret)


def reserve_port() -> socket.socket:
    """
    A socket bound to a free loopback port, held (so no other C{bind(0)} here
    gets it) until the proxy is about to start on that port.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


def proxy_config(port: int, op: OpenIDProvider, upstream: procs.Upstream,
                 auth_params: Optional[Dict[str, str]] = None) -> str:
    """
    The proxy's configuration: C{/public} is open, everything else needs a
    login; both go to the upstream's C{/echo} (which answers with the
    request it received), C{/some/page} as C{/echo/some/page}.
    """
    text = f"""\
public_url = "http://127.0.0.1:{port}"
listen = ["tcp:{port}:interface=127.0.0.1"]

[oidc]
issuer = "{op.issuer}"
client_id = "{op.client_id}"
client_secret = "{op.client_secret}"
scopes = ["openid", "email", "profile", "groups"]
pkce = true
token_endpoint_auth_method = "client_secret_basic"
"""
    if auth_params:
        text += "\n[oidc.auth_params]\n" + "".join(
            f'{key} = "{value}"\n' for key, value in auth_params.items())
    text += f"""
[session]
secrets = ["{secrets.token_urlsafe(32)}", "{secrets.token_urlsafe(32)}"]
lifetime = "1h"

[headers]
X-Forwarded-User = ["preferred_username", "sub"]
X-Forwarded-Email = "email"
X-Forwarded-Groups = "groups"

[[routes]]
path = "/public"
upstream = "{upstream.url}"
auth = "none"
replace_prefix = "/echo"

[[routes]]
path = "/"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/echo"
"""
    return text


async def start_proxy(testcase: TestCase, reserved: socket.socket, config: str) -> procs.Proxy:
    """
    Start C{twistd -n oidcproxy} on the reserved port (its C{public_url} names
    it, so it cannot be port 0), and wait until it listens and has read the
    OP's metadata (a login starts with a redirect, not a 503).
    """
    port = reserved.getsockname()[1]
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    config_path = os.path.join(workdir, "oidcproxy.toml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(config)
    port_file = os.path.join(workdir, "proxy.port")
    reserved.close()
    child = procs.Child("proxy", procs.twistd_command() + [
        "-n", "--pidfile=", "oidcproxy", "--config", config_path, "--port-file", port_file,
    ], workdir)
    testcase.addCleanup(child.stop)
    proxy = procs.Proxy(child, port, config_path)

    def listening() -> Optional[bool]:
        if os.path.exists(port_file):
            return True
        if child.process.poll() is not None:
            raise AssertionError("the proxy died at start")
        return None

    client = WebClient(testcase)

    async def login_redirects() -> Optional[bool]:
        response, _ = await client.request("GET", proxy.url + "/oidc/login", headers=NAVIGATE,
                                           keep_cookies=False)
        return True if response.code == 302 else None

    try:
        await procs.poll(listening, procs.START_DEADLINE, what="the proxy's port file")
        await procs.poll_async(login_redirects, procs.START_DEADLINE,
                               what="the proxy to read the OP's metadata")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{child.describe()}") from None
    return proxy


@attr.s(auto_attribs=True)
class Stack:
    op: OpenIDProvider
    upstream: procs.Upstream
    proxy: procs.Proxy

    def describe(self) -> str:
        return "\n".join(c.describe() for c in (self.op.child, self.upstream.child, self.proxy.child))


async def start_stack(testcase: TestCase, auth_params: Optional[Dict[str, str]] = None) -> Stack:
    """The OP, the upstream app and the proxy between them, all running."""
    require_op()
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        op = await start_op(testcase, [f"http://127.0.0.1:{port}/oidc/callback"],
                            [f"http://127.0.0.1:{port}/"])
        upstream = await procs.start_upstream(testcase)
        proxy = await start_proxy(testcase, reserved, proxy_config(port, op, upstream, auth_params))
    finally:
        reserved.close()
    return Stack(op, upstream, proxy)


# -- an HTTP client that walks the login like a browser ---------------------------


class OriginCookieJar:
    """
    Cookies per origin (scheme, host, port), with their path: the OP and the
    proxy both live on 127.0.0.1, and this keeps what each one set to itself.
    Honours Path, Max-Age and Expires; that is all these servers use.
    """

    def __init__(self) -> None:
        self._cookies: Dict[str, Dict[Tuple[str, str], str]] = {}

    @staticmethod
    def _origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def receive(self, url: str, set_cookies: Sequence[bytes]) -> None:
        jar = self._cookies.setdefault(self._origin(url), {})
        request_path = urlsplit(url).path or "/"
        for raw in set_cookies:
            text = raw.decode("latin-1")
            pair, *attributes = text.split(";")
            name, _, value = pair.strip().partition("=")
            path = request_path.rsplit("/", 1)[0] or "/"
            expired = False
            for attribute in attributes:
                key, _, arg = attribute.strip().partition("=")
                key = key.lower()
                if key == "path" and arg.startswith("/"):
                    path = arg
                elif key == "max-age":
                    expired = int(arg) <= 0
                elif key == "expires":
                    expired = expired or parsedate_to_datetime(arg).timestamp() <= time.time()
            if expired:
                jar.pop((name, path), None)
            else:
                jar[(name, path)] = value

    def names(self, url: str) -> List[str]:
        return sorted(name for name, _ in self._cookies.get(self._origin(url), {}))

    def header(self, url: str) -> Optional[bytes]:
        path = urlsplit(url).path or "/"
        pairs = [
            f"{name}={value}"
            for (name, cookie_path), value in self._cookies.get(self._origin(url), {}).items()
            if path == cookie_path or path.startswith(cookie_path.rstrip("/") + "/")
        ]
        return "; ".join(pairs).encode("latin-1") if pairs else None


class WebClient:
    """
    treq on a non-persistent pool (no connection outlives its response), with
    treq's own cookie handling switched off (a policy that accepts no domain)
    and L{OriginCookieJar} instead; never follows redirects by itself.
    """

    def __init__(self, testcase: TestCase) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        testcase.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool, connectTimeout=5)
        self._http = HTTPClient(agent, cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
        self.jar = OriginCookieJar()
        self.history: List[Tuple[str, str, int]] = []

    async def request(self, method: str, url: str, headers: Optional[Dict[str, str]] = None,
                      data: Any = None, keep_cookies: bool = True) -> Tuple[IResponse, bytes]:
        sent = Headers({k: [v] for k, v in (headers or {}).items()})
        cookie = self.jar.header(url) if keep_cookies else None
        if cookie is not None:
            sent.setRawHeaders(b"cookie", [cookie])
        response = await self._http.request(method, url, headers=sent, data=data,
                                            allow_redirects=False, timeout=STEP_TIMEOUT)
        body = await response.content()
        if keep_cookies:
            self.jar.receive(url, response.headers.getRawHeaders(b"set-cookie", []))
        self.history.append((method, url, response.code))
        return response, body


@attr.s(auto_attribs=True)
class Form:
    action: str
    method: str
    fields: List[Tuple[str, str, str]] = attr.Factory(list)
    """(name, type, value) of each named input or button."""

    def value(self, name: str) -> Optional[str]:
        return next((v for n, _, v in self.fields if n == name), None)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: List[Form] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").upper()))
            self._open = True
        elif tag in ("input", "button") and self._open and a.get("name"):
            self.forms[-1].fields.append((a["name"], a.get("type", "text").lower(),
                                          a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = False


def parse_forms(html: bytes) -> List[Form]:
    parser = _FormParser()
    parser.feed(html.decode("utf-8", "replace"))
    parser.close()
    return parser.forms


def fill_login(login: str) -> Callable[[Form], List[Tuple[str, str]]]:
    """
    The answers to the OP's development forms: the login form (any password
    will do) and the consent form (hidden fields only).
    """
    def fill(form: Form) -> List[Tuple[str, str]]:
        data = []
        for name, kind, value in form.fields:
            if kind == "hidden":
                data.append((name, value))
            elif name == "login":
                data.append((name, login))
            elif kind == "password":
                data.append((name, "any password will do"))
            elif kind not in ("submit", "button"):
                raise AssertionError(f"unexpected form field {name!r} ({kind}) in {form}")
        return data
    return fill


async def browse(client: WebClient, url: str, fill: Callable[[Form], List[Tuple[str, str]]],
                 max_steps: int = 20) -> Tuple[IResponse, bytes, str, List[str]]:
    """
    Navigate to C{url} like a browser: follow redirects, and submit each HTML
    page's form with C{fill}, until a page without a form. The last response,
    its body, its URL and the C{prompt} of each form submitted.
    """
    method, data = "GET", None
    prompts: List[str] = []
    for _ in range(max_steps):
        response, body = await client.request(method, url, headers=NAVIGATE, data=data)
        if response.code in (301, 302, 303, 307, 308):
            location = response.headers.getRawHeaders(b"location", [b""])[0].decode("ascii")
            assert location, f"a {response.code} from {url} without a Location"
            url = urljoin(url, location)
            method, data = "GET", None
            continue
        content_type = b"".join(response.headers.getRawHeaders(b"content-type", []))
        forms = parse_forms(body) if response.code == 200 and b"html" in content_type else []
        if not forms:
            return response, body, url, prompts
        form = forms[0]
        prompts.append(form.value("prompt") or "?")
        url = urljoin(url, form.action)
        method, data = form.method, fill(form)
    raise AssertionError(f"no final page after {max_steps} steps: {client.history}")


def header_values(echo: Dict[str, Any], name: str) -> List[str]:
    """The values of header C{name} the upstream received, in order."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


def proxy_cookies_seen(echo: Dict[str, Any]) -> List[str]:
    """Names of the proxy's own cookies (C{oidcproxy*}) that reached the upstream."""
    names = []
    for value in header_values(echo, "cookie"):
        for pair in value.split(";"):
            name = pair.strip().partition("=")[0]
            if name.startswith("oidcproxy"):
                names.append(name)
    return names


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
        logout with id_token_hint); confirms there, comes back to the proxy,
        is sent to the OP's login form for the protected page, and logs in
        as bob.
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
        await browser.wait_for_url(op.issuer + "/interaction/")

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
    async def start(cls, testcase: TestCase) -> Browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        workdir = os.path.abspath(testcase.mktemp())
        os.makedirs(workdir)
        options = Options()
        options.binary_location = CHROMIUM
        for arg in CHROMIUM_ARGS:
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={os.path.join(workdir, 'profile')}")
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
        from selenium.webdriver.support import expected_conditions as ec

        def log_in() -> None:
            d = self.driver
            self._wait(lambda d: d.current_url.startswith(op.issuer + "/interaction/")
                       and d.find_elements(By.NAME, "login"), "the OP's login form")
            d.find_element(By.NAME, "login").send_keys(login)
            d.find_element(By.NAME, "password").send_keys("any password will do")
            form = d.find_element(By.TAG_NAME, "form")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            self._wait(ec.staleness_of(form), "the login form to be submitted")
            self._wait(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=prompt][value=consent]"),
                       "the OP's consent form")
            form = d.find_element(By.TAG_NAME, "form")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            self._wait(ec.staleness_of(form), "the consent form to be submitted")

        await deferToThread(log_in)

    async def json_page(self, url: str) -> Any:
        """Wait for the browser to be at C{url}; the JSON document it shows."""
        from selenium.webdriver.common.by import By

        def read() -> Any:
            self._wait(lambda d: d.current_url == url and d.find_elements(By.TAG_NAME, "pre"),
                       f"the page {url}")
            return json.loads(self.driver.find_element(By.TAG_NAME, "pre").text)

        return await deferToThread(read)
