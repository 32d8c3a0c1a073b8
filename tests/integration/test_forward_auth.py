"""
Forward-auth mode end to end: a real nginx (C{auth_request}) in front of the
real upstream app asks the real C{twistd oidcproxy} process (its
C{/oidc/auth} endpoint) about every request, and the user logs in at the
real OpenID Provider (panva's C{oidc-provider}, L{stack.OP_SCRIPT}).

nginx runs the configuration docs/howto/forward-auth.rst shows, L{NGINX_SITE}
(C{nginx_forward_auth.conf}), with loopback ports filled in. nginx's address
is the public URL (the proxy's C{public_url}, where the OP sends the browser
back); the proxy trusts 127.0.0.1 as its front proxy.

Traefik's C{forwardAuth} is not here: L{TraefikForwardAuthTests} send the
request it would send (C{GET /oidc/auth?redirect=1} with
C{X-Forwarded-Method/-Proto/-Host/-Uri} and the browser's own headers)
with treq.

Each test starts its own OP, upstream, proxy and nginx (C{nginx -p <tmp>},
in the foreground, every path under the test's temporary directory) on free
loopback ports and stops them at cleanup. Where nginx, Node.js or the OP's
node_modules are missing they fail, saying what to install (see
L{tests.helpers}); C{tests/run.sh} installs them all.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

import attr
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from tests.helpers import require_program
from tests.integration import procs
from tests.integration.stack import (
    ALICE,
    API,
    CLIENT_ID,
    NAVIGATE,
    PROTECTED,
    STEP_TIMEOUT,
    OpenIDProvider,
    WebClient,
    browse,
    fill_login,
    header_values,
    location_of,
    proxy_config,
    require_op,
    reserve_port,
    start_op,
    start_proxy,
)

NGINX_SITE = os.path.join(procs.HERE, "nginx_forward_auth.conf")
"""The nginx configuration of docs/howto/forward-auth.rst, placeholders (C{@@APP@@}, ...) for addresses."""

DENIED = "/root-only/page"
"""A route for group C{root} only: alice (admins, staff) is denied."""

ADMIN_HOST = "admin.test"
"""On this host C{/public} needs a login (a host-specific route); on others it is open."""

EXTRA_ROUTES = """
[[routes]]
path = "/root-only"
upstream = "{upstream}"
auth = "session"
allowed_groups = ["root"]

[[routes]]
host = "admin.test"
path = "/public"
upstream = "{upstream}"
auth = "session"
"""

IDENTITY_HEADERS = ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups")


def require_nginx() -> str:
    """The nginx executable (Debian's has the auth_request module), or fail saying so."""
    return require_program("nginx", "nginx")


def nginx_site(public_port: int, proxy_port: int, upstream_port: int) -> str:
    """That configuration for these ports; the app is the upstream's C{/echo}."""
    with open(NGINX_SITE, encoding="utf-8") as f:
        text = f.read()
    for name, value in (("@@LISTEN@@", f"127.0.0.1:{public_port}"),
                        ("@@OIDCPROXY@@", f"127.0.0.1:{proxy_port}"),
                        ("@@APP@@", f"127.0.0.1:{upstream_port}"),
                        ("@@APP_PATH@@", "/echo/")):
        text = text.replace(name, value)
    assert "@@" not in text, text
    return text


def nginx_main(workdir: str, site: str) -> str:
    """
    The whole nginx.conf around C{site}: in the foreground, every file under
    C{workdir}, workers as root when started by root (so that they can write
    the temporary directories made here), errors on stderr.
    """
    temp = "".join(
        f"    {kind}_temp_path {os.path.join(workdir, kind)};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"pid {os.path.join(workdir, 'nginx.pid')};\n"
        "error_log stderr notice;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {os.path.join(workdir, 'access.log')};\n"
        f"{temp}"
        f"    include {site};\n"
        "}\n"
    )


@attr.s(auto_attribs=True)
class Nginx:
    child: procs.Child
    port: int
    workdir: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        with open(os.path.join(self.workdir, "access.log"), encoding="utf-8",
                  errors="replace") as f:
            access = f.read()
        return f"{self.child.describe()}\n--- access.log (last 3000 chars) ---\n{access[-3000:]}"


async def start_nginx(testcase: TestCase, reserved: Any, proxy_port: int,
                      upstream_port: int) -> Nginx:
    """
    nginx on the reserved port in front of the proxy and the upstream; it is
    stopped (SIGTERM: fast shutdown) at cleanup. Waits until it answers.
    """
    nginx = require_nginx()
    port = reserved.getsockname()[1]
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(workdir, kind))
    site = os.path.join(workdir, "forward_auth.conf")
    with open(site, "w", encoding="utf-8") as f:
        f.write(nginx_site(port, proxy_port, upstream_port))
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(nginx_main(workdir, site))
    reserved.close()
    child = procs.Child("nginx", [nginx, "-p", workdir, "-e", "stderr", "-c", conf], workdir)
    testcase.addCleanup(child.stop)
    server = Nginx(child, port, workdir)
    client = WebClient(testcase)

    async def answers() -> Optional[bool]:
        if child.process.poll() is not None:
            raise AssertionError("nginx died at start")
        try:
            # Answered by the proxy (its 404): nginx and the proxy are up.
            await client.request("GET", server.url + "/oidc/ready", headers=API,
                                 keep_cookies=False)
        except (ConnectionRefusedError, ConnectError):
            return None
        return True

    try:
        await procs.poll_async(answers, procs.START_DEADLINE, what="nginx to answer")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{server.describe()}") from None
    return server


@attr.s(auto_attribs=True)
class ForwardAuthStack:
    op: OpenIDProvider
    upstream: procs.Upstream
    proxy: procs.Proxy
    nginx: Nginx

    @property
    def public(self) -> str:
        """The public URL: nginx."""
        return self.nginx.url

    def describe(self) -> str:
        return "\n".join([*(c.describe() for c in (self.op.child, self.upstream.child,
                                                   self.proxy.child)),
                          self.nginx.describe()])

    async def upstream_uris(self, client: WebClient) -> List[str]:
        """The targets of the requests that reached the upstream app so far."""
        _, body = await client.request("GET", self.upstream.url + "/events", keep_cookies=False)
        return [event["uri"] for event in json.loads(body)]


async def start_forward_auth(testcase: TestCase, trusted: Sequence[str] = ("127.0.0.1",),
                             session: Optional[Dict[str, Any]] = None) -> ForwardAuthStack:
    """
    The OP, the upstream app, the proxy (forward-auth endpoint trusting
    C{trusted}; routes C{/public}: none, C{/}: session, L{DENIED}: group
    root) and nginx in front, its address the proxy's C{public_url}.
    """
    require_op()
    require_nginx()
    public_reserved = reserve_port()
    proxy_reserved = reserve_port()
    try:
        public = f"http://127.0.0.1:{public_reserved.getsockname()[1]}"
        upstream = procs.spawn_upstream(testcase)  # starts while the OP does
        op = await start_op(testcase, [public + "/oidc/callback"], [public + "/"])
        await upstream.wait_ready()
        config = (
            f"trusted_proxies = {procs.toml_value(list(trusted))}\n"
            + proxy_config(proxy_reserved.getsockname()[1], op, upstream,
                           public_url=public, session=session)
            + EXTRA_ROUTES.format(upstream=upstream.url)
        )
        proxy = await start_proxy(testcase, proxy_reserved, config)
        nginx = await start_nginx(testcase, public_reserved, proxy.port, upstream.port)
    finally:
        public_reserved.close()
        proxy_reserved.close()
    return ForwardAuthStack(op, upstream, proxy, nginx)


async def log_in(testcase: TestCase, stack: ForwardAuthStack, client: WebClient,
                 path: str = PROTECTED) -> Dict[str, Any]:
    """Log in as alice by asking nginx for C{path}; the upstream's echo of it."""
    response, body, url, prompts = await browse(client, stack.public + path, fill_login("alice"))
    context = f"\n{client.history}\n{stack.describe()}"
    testcase.assertEqual(response.code, 200, body[:2000].decode("utf-8", "replace") + context)
    testcase.assertEqual(url, stack.public + path, context)
    testcase.assertEqual(prompts, ["login", "consent"], context)
    return json.loads(body)


def identity(headers: Any) -> Dict[str, List[str]]:
    """The identity headers in C{headers} (an upstream's echo, or a response's Headers)."""
    if isinstance(headers, dict):
        return {name: header_values(headers, name) for name in IDENTITY_HEADERS}
    return {name: [v.decode("latin-1") for v in headers.getRawHeaders(name.encode("ascii"), [])]
            for name in IDENTITY_HEADERS}


ALICE_IDENTITY = {
    "x-forwarded-user": [ALICE["login"]],
    "x-forwarded-email": [ALICE["email"]],
    "x-forwarded-groups": [ALICE["groups"]],
}
NO_IDENTITY: Dict[str, List[str]] = {name: [] for name in IDENTITY_HEADERS}


def set_cookie_names(response: IResponse) -> List[str]:
    return sorted(raw.split(b"=", 1)[0].decode("latin-1")
                  for raw in response.headers.getRawHeaders(b"set-cookie", []))


async def raw_get(port: int, target: str, headers: Dict[str, str]) -> Tuple[int, int, bytes]:
    """
    One C{GET} over a plain TCP connection (C{Connection: close}), read to
    the end: the status, the C{Content-Length} and the bytes after the
    header block, as they came.
    """
    received: List[bytes] = []
    done: Deferred[None] = Deferred()

    class Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

        def connectionLost(self, reason: Any = None) -> None:
            done.callback(None)

    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers.items())]
    protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5),
                                     Collect())
    protocol.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    timer = reactor.callLater(STEP_TIMEOUT, protocol.transport.abortConnection)
    await done
    if timer.active():
        timer.cancel()
    head, _, body = b"".join(received).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        raise AssertionError(f"no HTTP answer from port {port}: {head[:200]!r}")
    status = int(head.split(b" ", 2)[1])
    length = -1
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, length, body


class NginxForwardAuthTests(TestCase):
    """nginx auth_request with oidcproxy's /oidc/auth, as docs/howto/forward-auth.rst configures it."""

    timeout = 60

    async def test_browser_login_through_nginx(self) -> None:
        """
        A browser asking nginx for a protected page without a session is sent
        straight to the OP (nginx's 401 handler asks the proxy again with
        C{?redirect=1}); after the login and the callback (through nginx) it
        is back at the page it asked for, which nginx now serves from the
        upstream with alice's identity headers, taken from the auth answer.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        echo = await log_in(self, stack, client)
        self.assertEqual(echo["uri"], "/echo" + PROTECTED)
        self.assertEqual(identity(echo), ALICE_IDENTITY)

        history = client.history
        context = f"\n{history}\n{stack.describe()}"
        self.assertEqual(history[0], ("GET", stack.public + PROTECTED, 302), context)
        authorize = history[1][1]
        self.assertTrue(authorize.startswith(stack.op.issuer + "/auth?"), context)
        query = parse_qs(urlsplit(authorize).query)
        self.assertEqual(query["client_id"], [CLIENT_ID])
        self.assertEqual(query["redirect_uri"], [stack.public + "/oidc/callback"])
        callbacks = [h for h in history if h[1].startswith(stack.public + "/oidc/callback?")]
        self.assertEqual([code for _, _, code in callbacks], [302], context)
        self.assertEqual(history[-1], ("GET", stack.public + PROTECTED, 200), context)
        self.assertIn("oidcproxy", client.jar.names(stack.public))
        self.assertEqual([n for n in client.jar.names(stack.public) if n.startswith("oidcproxy_state")],
                         [])
        # The upstream saw the page once: after the login, never before.
        self.assertEqual([u for u in await stack.upstream_uris(client) if u.startswith("/echo/some")],
                         ["/echo" + PROTECTED])

        # Logged in, an API call is served at once.
        response, body = await client.request("GET", stack.public + "/some/other", headers=API)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(identity(json.loads(body)), ALICE_IDENTITY)

    async def test_login_comes_back_to_the_whole_query(self) -> None:
        """
        The page to come back to is the original request target with its
        whole query (several parameters, an encoded C{&}), not cut at the
        first C{&} as a C{/oidc/login?rd=$request_uri} redirect in nginx
        would cut it.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        target = "/some/page?x=1&y=a%26b&z=%2F"
        echo = await log_in(self, stack, client, target)
        self.assertEqual(echo["uri"], "/echo" + target)

    async def test_api_client_gets_401(self) -> None:
        """
        Without a session, requests that are not browser navigations (JSON
        API, XHR, a form POST) get the proxy's 401 through nginx: one
        C{WWW-Authenticate: Bearer}, the JSON error, no redirect, no state
        cookie; nothing reaches the upstream.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        cases: List[Tuple[str, Dict[str, str]]] = [
            ("GET", API),
            ("GET", {**NAVIGATE, "X-Requested-With": "XMLHttpRequest"}),
            ("GET", {**NAVIGATE, "Sec-Fetch-Mode": "cors"}),
            ("POST", {**NAVIGATE, "Content-Type": "application/x-www-form-urlencoded"}),
        ]
        for method, headers in cases:
            response, body = await client.request(method, stack.public + PROTECTED,
                                                  headers=headers, data=b"a=1" if method == "POST" else None)
            context = f"{method} {headers}: {body!r}\n{stack.describe()}"
            self.assertEqual(response.code, 401, context)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="oidcproxy"'], context)
            self.assertIsNone(response.headers.getRawHeaders(b"location"), context)
            self.assertEqual(set_cookie_names(response), [], context)
            self.assertEqual(json.loads(body)["error"], "unauthenticated", context)
        self.assertEqual([u for u in await stack.upstream_uris(client) if u.startswith("/echo/some")],
                         [])

    async def test_head_request_without_session(self) -> None:
        """An unauthenticated HEAD through nginx gets its 401 without delay."""
        stack = await start_forward_auth(self)
        client = WebClient(self)
        response, body = await client.request("HEAD", stack.public + PROTECTED, headers=API)
        self.assertEqual(response.code, 401, stack.describe())
        self.assertEqual(body, b"")

    async def test_client_identity_headers_never_reach_the_upstream(self) -> None:
        """
        Identity headers a client sends itself are replaced by alice's when
        she is logged in, and dropped on a public page without a session:
        the upstream never sees mallory.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        forged = {"X-Forwarded-User": "mallory", "X-Forwarded-Email": "mallory@example.com",
                  "X-Forwarded-Groups": "root"}

        response, body = await client.request("GET", stack.public + "/public/x",
                                              headers={**API, **forged})
        self.assertEqual(response.code, 200, body)
        echo = json.loads(body)
        self.assertEqual(echo["uri"], "/echo/public/x")
        self.assertEqual(identity(echo), NO_IDENTITY)

        await log_in(self, stack, client)
        response, body = await client.request("GET", stack.public + "/some/other",
                                              headers={**API, **forged})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(identity(json.loads(body)), ALICE_IDENTITY)
        # Not even through nginx's own name for them.
        response, body = await client.request("GET", stack.public + "/some/other",
                                              headers={**API, "x-forwarded-user": "mallory"})
        self.assertEqual(identity(json.loads(body)), ALICE_IDENTITY)

    async def test_client_cannot_choose_the_judged_request(self) -> None:
        """
        A client's own C{X-Forwarded-Uri}, C{-Method}, C{-Host},
        C{X-Original-URI} or C{X-Original-URL} naming a public page do not
        make the proxy judge that page instead of the protected one it asks
        nginx for: still 401, and nothing reaches the upstream.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        for forged in ({"X-Forwarded-Uri": "/public/x"},
                       {"X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET",
                        "X-Forwarded-Host": "127.0.0.1"},
                       {"X-Original-URI": "/public/x"},
                       {"X-Original-URL": stack.public + "/public/x"}):
            response, body = await client.request("GET", stack.public + PROTECTED,
                                                  headers={**API, **forged})
            self.assertEqual(response.code, 401, f"{forged}: {body!r}\n{stack.describe()}")
        self.assertEqual(await stack.upstream_uris(client), [])

    async def test_auth_endpoint_is_not_public(self) -> None:
        """nginx does not let clients call the proxy's /oidc/auth themselves: 404."""
        stack = await start_forward_auth(self)
        client = WebClient(self)
        response, body = await client.request(
            "GET", stack.public + "/oidc/auth",
            headers={**API, "X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"})
        self.assertEqual(response.code, 404, body)
        self.assertEqual(identity(response.headers), NO_IDENTITY)

    async def test_denied_route_is_403(self) -> None:
        """
        alice, logged in, asks for a page of a route she is not allowed on
        (group root only): the proxy answers the auth request 403, nginx
        answers 403, and the upstream does not see the request.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        await log_in(self, stack, client)
        for headers in (API, NAVIGATE):
            response, body = await client.request("GET", stack.public + DENIED, headers=headers)
            self.assertEqual(response.code, 403, f"{headers}: {body!r}\n{stack.describe()}")
            self.assertIsNone(response.headers.getRawHeaders(b"location"))
        self.assertEqual([u for u in await stack.upstream_uris(client) if "root-only" in u], [])

    async def test_renewed_session_cookie_reaches_the_browser(self) -> None:
        """
        With an idle timeout, the proxy renews the session cookie on the auth
        answer of a request that keeps the session alive; nginx passes that
        C{Set-Cookie} on with the upstream's answer, and the renewed cookie
        works.
        """
        stack = await start_forward_auth(self, session={"idle_timeout": "4s"})
        client = WebClient(self)
        await log_in(self, stack, client)
        before = client.jar.value(stack.public, "oidcproxy")
        # The proxy renews the idle clock once a quarter of the timeout has passed.
        await procs.sleep(1.2)
        response, body = await client.request("GET", stack.public + "/some/other", headers=API)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(set_cookie_names(response), ["oidcproxy"], stack.describe())
        after = client.jar.value(stack.public, "oidcproxy")
        self.assertNotEqual(after, before)
        response, body = await client.request("GET", stack.public + "/some/more", headers=API)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(identity(json.loads(body)), ALICE_IDENTITY)

    async def test_untrusted_peer_is_refused(self) -> None:
        """
        A proxy whose trusted_proxies do not include 127.0.0.1 refuses
        /oidc/auth from there with 403, even with alice's valid session
        cookie, and gives no identity headers; nginx in front of it
        therefore answers 403 to every protected request (fails closed).
        """
        stack = await start_forward_auth(self, trusted=("192.0.2.0/24",))
        client = WebClient(self)
        # The login itself does not use /oidc/auth: it works, and ends at the
        # page, which nginx refuses.
        response, body, url, _ = await browse(
            client, stack.public + "/oidc/login?rd=/some/page", fill_login("alice"))
        self.assertEqual(url, stack.public + "/some/page", client.history)
        self.assertEqual(response.code, 403, body)
        cookie = client.jar.header(stack.public + "/")
        self.assertIsNotNone(cookie)
        self.assertIn(b"oidcproxy=", cookie or b"")

        for headers in (API, {**NAVIGATE, "Cookie": (cookie or b"").decode("latin-1")}):
            response, body = await client.request(
                "GET", stack.proxy.url + "/oidc/auth",
                headers={**headers, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": PROTECTED,
                         "X-Forwarded-Host": "127.0.0.1"},
                keep_cookies=False)
            self.assertEqual(response.code, 403, body)
            self.assertEqual(json.loads(body)["error"], "untrusted_peer")
            self.assertEqual(identity(response.headers), NO_IDENTITY)

        response, body = await client.request("GET", stack.public + "/public/x", headers=API)
        self.assertEqual(response.code, 403, body)
        self.assertEqual(await stack.upstream_uris(client), [])


def traefik_request(stack: ForwardAuthStack, browser: Dict[str, str], method: str = "GET",
                    uri: str = PROTECTED) -> Dict[str, str]:
    """What Traefik's forwardAuth sends: the browser's headers and X-Forwarded-*."""
    return {
        **browser,
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": urlsplit(stack.public).netloc,
        "X-Forwarded-Uri": uri,
        "X-Forwarded-For": "127.0.0.1",
    }


class TraefikForwardAuthTests(TestCase):
    """Traefik's forwardAuth contract, emulated: GET /oidc/auth?redirect=1."""

    timeout = 60

    async def ask(self, client: WebClient, stack: ForwardAuthStack, headers: Dict[str, str]
                  ) -> Tuple[IResponse, bytes]:
        return await client.request("GET", stack.proxy.url + "/oidc/auth?redirect=1",
                                    headers=headers, keep_cookies=False)

    async def test_browser_without_session_is_redirected(self) -> None:
        """
        A browser navigation without a session gets the 302 to the OP's
        authorization endpoint itself, with the state cookie, to come back
        to the public URL's callback and then to the original page.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        response, body = await self.ask(client, stack, traefik_request(stack, NAVIGATE))
        self.assertEqual(response.code, 302, body)
        location = location_of(response, stack.public)
        self.assertTrue(location.startswith(stack.op.issuer + "/auth?"), location)
        query = parse_qs(urlsplit(location).query)
        self.assertEqual(query["redirect_uri"], [stack.public + "/oidc/callback"])
        self.assertEqual(query["client_id"], [CLIENT_ID])
        names = set_cookie_names(response)
        self.assertEqual(len(names), 1, names)
        self.assertTrue(names[0].startswith("oidcproxy_state"), names)
        self.assertEqual(identity(response.headers), NO_IDENTITY)

    async def test_session_gets_identity_headers(self) -> None:
        """
        The browser follows that redirect (Traefik hands it the state cookie
        on the public origin), logs in, and is back at the original page;
        then forwardAuth requests carrying its session cookie get 200 with
        alice's identity headers to copy (authResponseHeaders).
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        response, body = await self.ask(client, stack, traefik_request(stack, NAVIGATE))
        self.assertEqual(response.code, 302, body)
        client.jar.receive(stack.public + "/", response.headers.getRawHeaders(b"set-cookie", []))
        response, body, url, prompts = await browse(client, location_of(response, stack.public),
                                                    fill_login("alice"))
        self.assertEqual(url, stack.public + PROTECTED, f"{client.history}\n{stack.describe()}")
        self.assertEqual(response.code, 200, body)
        cookie = client.jar.header(stack.public + "/")
        assert cookie is not None

        for browser in (NAVIGATE, API):
            response, body = await self.ask(
                client, stack, traefik_request(stack, {**browser, "Cookie": cookie.decode("latin-1")},
                                               uri="/another/page?y=2"))
            self.assertEqual(response.code, 200, body)
            self.assertEqual(identity(response.headers), ALICE_IDENTITY)
            self.assertIsNone(response.headers.getRawHeaders(b"location"))

    async def test_api_request_gets_401(self) -> None:
        """
        Without a session, an API request, and a browser's POST, get 401
        with C{WWW-Authenticate: Bearer} even with C{?redirect=1}.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        for method, browser in (("GET", API), ("POST", NAVIGATE)):
            response, body = await self.ask(client, stack, traefik_request(stack, browser, method))
            self.assertEqual(response.code, 401, body)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="oidcproxy"'])
            self.assertIsNone(response.headers.getRawHeaders(b"location"))
            self.assertEqual(json.loads(body)["error"], "unauthenticated")

    async def test_head_request_gets_whole_answer(self) -> None:
        """
        Traefik asks with GET even when the original request is a HEAD
        (X-Forwarded-Method: HEAD): the answer to that GET is whole, its
        body as long as its Content-Length says, for the 401 as for the
        browser's 302 (read off the wire: an HTTP client would wait for the
        missing bytes, or fail).
        """
        stack = await start_forward_auth(self)
        for browser, code in ((API, 401), (NAVIGATE, 302)):
            headers = traefik_request(stack, browser, "HEAD")
            status, length, body = await raw_get(stack.proxy.port, "/oidc/auth?redirect=1", headers)
            self.assertEqual(status, code, body)
            self.assertEqual(
                length, len(body),
                f"X-Forwarded-Method: HEAD, {browser}: the {status} to a GET announces "
                f"Content-Length: {length} but carries {len(body)} body bytes")


class AuthEndpointTests(TestCase):
    """/oidc/auth asked directly, as a front proxy other than the ones above would."""

    timeout = 60

    async def test_conflicting_descriptions_are_refused(self) -> None:
        """
        A front proxy that sets only one spelling of the original request
        (C{X-Original-URI}, as nginx examples do, or C{X-Original-URL})
        passes the client's own other spellings on. When they name another
        target than the front proxy's, the proxy cannot know which one is
        true and refuses (400) rather than judge the client's choice (here
        a public page, which would let the protected request through).
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        front = {"X-Original-Method": "GET", "X-Forwarded-Host": "127.0.0.1"}
        for sent in ({"X-Original-URI": PROTECTED, "X-Forwarded-Uri": "/public/x"},
                     {"X-Original-URL": stack.public + PROTECTED, "X-Original-URI": "/public/x"}):
            response, body = await client.request(
                "GET", stack.proxy.url + "/oidc/auth", headers={**API, **front, **sent},
                keep_cookies=False)
            self.assertEqual(response.code, 400, f"{sent}: {response.code} {body!r}")

    async def test_original_url_authority_decides(self) -> None:
        """
        The host of an absolute X-Original-URL (nginx's
        C{$scheme://$host$request_uri}) chooses the route, not the Host of
        the auth request itself: C{/public/x} on L{ADMIN_HOST} needs a login.
        An X-Forwarded-Host naming another host than that URL is refused
        (400) rather than judged on either; the same host agrees.
        """
        stack = await start_forward_auth(self)
        client = WebClient(self)
        url = f"http://{ADMIN_HOST}/public/x"
        for sent, code in (({"X-Original-URL": url}, 401),
                           ({"X-Original-URL": url, "X-Forwarded-Host": "127.0.0.1"}, 400),
                           ({"X-Original-URL": stack.public + "/public/x",
                             "X-Forwarded-Host": ADMIN_HOST}, 400),
                           ({"X-Original-URL": url, "X-Forwarded-Host": ADMIN_HOST}, 401),
                           ({"X-Original-URL": stack.public + "/public/x"}, 200)):
            response, body = await client.request(
                "GET", stack.proxy.url + "/oidc/auth",
                headers={**API, "X-Original-Method": "GET", **sent}, keep_cookies=False)
            self.assertEqual(response.code, code, f"{sent}: {response.code} {body!r}")
