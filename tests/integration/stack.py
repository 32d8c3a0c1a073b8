"""
The pieces the end-to-end tests share: the real OpenID Provider (panva's
C{oidc-provider}, L{OP_SCRIPT}) as a child process, the proxy started on a
port its C{public_url} names, and an HTTP client (treq) that walks the OP's
development login and consent forms like a browser.

Used by L{tests.integration.test_login_interop} (one proxy, cookie
sessions) and L{tests.integration.test_sessions_redis} (several proxies
sharing a redis-server).

The OP prints one line on stdout per event a test may want to count
(C{EVENT grant.success refresh_token}, C{EVENT backchannel.success ...});
L{OpenIDProvider.events} reads them back.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

import attr
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.helpers import require_file, require_program
from tests.integration import procs

OP_DIR = os.path.join(procs.HERE, "op")
OP_SCRIPT = os.path.join(OP_DIR, "op.mjs")
OP_PACKAGE = os.path.join(OP_DIR, "node_modules", "oidc-provider", "package.json")

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

API = {"Accept": "application/json"}
"""What an API client sends."""

STEP_TIMEOUT = 10.0
"""Seconds for one HTTP exchange, one page load or one wait in the browser."""

ALICE = {"login": "alice", "email": "alice@example.com", "groups": "admins,staff"}
BOB = {"login": "bob", "email": "bob@example.com", "groups": "staff"}


def require_op() -> str:
    """
    The node executable, once Node.js and the OP's node_modules are both here;
    otherwise the test fails (or skips, see L{tests.helpers.missing}).
    """
    node = require_program("node", "nodejs")
    require_file(OP_PACKAGE, f"oidc-provider is not installed; run `npm ci` in {OP_DIR} "
                             f"(tests/run.sh does)")
    return node


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

    def events(self, name: str, *details: str) -> List[List[str]]:
        """
        The OP's C{EVENT <name> <detail>...} lines so far whose first details
        are C{details}, each as its list of words after the name.
        """
        found = []
        for line in self.child.stdout().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "EVENT" and words[1] == name and \
                    tuple(words[2:2 + len(details)]) == details:
                found.append(words[2:])
        return found


async def start_op(testcase: TestCase, redirect_uris: Sequence[str],
                   post_logout_redirect_uris: Sequence[str] = (),
                   backchannel_logout_uri: Optional[str] = None,
                   rotate_refresh_tokens: bool = False, test_hooks: bool = False,
                   listen_port: int = 0, client_secret: Optional[str] = None,
                   abort_description: Optional[str] = None, client_id: str = CLIENT_ID,
                   step_up: bool = False, **ttls: int) -> OpenIDProvider:
    """
    Start the OP on a free loopback port with one confidential client that may
    redirect to C{redirect_uris}; C{ttls} (C{access_token_ttl=5}, ...) are
    passed as C{--access-token-ttl=5}. With C{backchannel_logout_uri} the
    client gets back-channel logout there (with C{sid}); with
    C{rotate_refresh_tokens} every refresh grant rotates the refresh token
    (and a reused one revokes the grant). C{test_hooks}: the OP's fault-test
    hooks (C{--test-hooks}, see L{OP_SCRIPT}). C{abort_description}: the
    C{error_description} of a cancelled login. C{listen_port}: listen there (it
    must be free) instead of on any free port; with C{client_secret} (default:
    a fresh one), an OP started again there is the same OP to the proxy.
    C{client_id}: the client's id (two OPs of one test may differ by it).
    C{step_up}: the two sign-in levels C{silver} and C{gold} (C{--step-up},
    see L{OP_SCRIPT}). Waits for its C{PORT} line.
    """
    node = require_op()
    secret = client_secret if client_secret is not None else secrets.token_urlsafe(24)
    # --name=value throughout: a value may start with "-" (token_urlsafe),
    # which node's parseArgs would otherwise take for an option.
    args = [node, OP_SCRIPT, f"--port={listen_port}", f"--client-id={client_id}",
            f"--client-secret={secret}"]
    for uri in redirect_uris:
        args.append(f"--redirect-uri={uri}")
    for uri in post_logout_redirect_uris:
        args.append(f"--post-logout-redirect-uri={uri}")
    if backchannel_logout_uri is not None:
        args.append(f"--backchannel-logout-uri={backchannel_logout_uri}")
    if rotate_refresh_tokens:
        args.append("--rotate-refresh-tokens")
    if test_hooks:
        args.append("--test-hooks")
    if step_up:
        args.append("--step-up")
    if abort_description is not None:
        args.append(f"--abort-description={abort_description}")
    for name, value in ttls.items():
        args.append(f"--{name.replace('_', '-')}={value}")
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
    return OpenIDProvider(child, found, client_id, secret)


def reserve_port() -> socket.socket:
    """
    A socket bound to a free loopback port, held (so no other C{bind(0)} here
    gets it) until the proxy is about to start on that port.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


def session_secrets() -> List[str]:
    """Two fresh session secrets (the first encrypts); proxies sharing sessions share them."""
    return [secrets.token_urlsafe(32), secrets.token_urlsafe(32)]


def _table(name: str, settings: Mapping[str, Any]) -> str:
    return f"\n[{name}]\n" + "".join(
        f"{key} = {procs.toml_value(value)}\n" for key, value in settings.items())


def proxy_config(port: int, op: OpenIDProvider, upstream: procs.Upstream,
                 auth_params: Optional[Dict[str, str]] = None, *,
                 public_url: Optional[str] = None,
                 shared_secrets: Optional[Sequence[str]] = None,
                 session: Optional[Mapping[str, Any]] = None,
                 redis: Optional[Mapping[str, Any]] = None,
                 headers: Optional[Mapping[str, str]] = None) -> str:
    """
    The proxy's configuration: C{/public} is open, everything else needs a
    login; both go to the upstream's C{/echo} (which answers with the
    request it received), C{/some/page} as C{/echo/some/page}.

    It listens on C{port}; C{public_url} defaults to that port's URL (proxies
    sharing sessions name one of them). C{shared_secrets}: the session secrets
    (default: fresh ones). C{session}: more C{[session]} keys (C{store},
    C{refresh_leeway}, ...). C{redis}: the C{[redis]} table, if any.
    C{headers}: more identity headers (header name: claim).
    """
    public_url = public_url or f"http://127.0.0.1:{port}"
    text = f"""\
public_url = "{public_url}"
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
        text += _table("oidc.auth_params", auth_params)
    text += _table("session", {
        "secrets": list(shared_secrets) if shared_secrets is not None else session_secrets(),
        "lifetime": "1h",
        **(session or {}),
    })
    if redis is not None:
        text += _table("redis", redis)
    upstream_url = upstream.url
    text += """
[headers]
X-Forwarded-User = ["preferred_username", "sub"]
X-Forwarded-Email = "email"
X-Forwarded-Groups = "groups"
"""
    text += "".join(f"{name} = {procs.toml_value(claim)}\n" for name, claim in (headers or {}).items())
    text += f"""
[[routes]]
path = "/public"
upstream = "{upstream_url}"
auth = "none"
replace_prefix = "/echo"

[[routes]]
path = "/"
upstream = "{upstream_url}"
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
                            [f"http://127.0.0.1:{port}/",
                             f"http://127.0.0.1:{port}/oidc/logout?signed_out=1"])
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

    def value(self, url: str, name: str) -> Optional[str]:
        """The value of the cookie C{name} the origin of C{url} set (any path), or None."""
        for (cookie_name, _), value in self._cookies.get(self._origin(url), {}).items():
            if cookie_name == name:
                return value
        return None

    def forget(self, url: str, name: str) -> None:
        """Drop the cookie C{name} of the origin of C{url} (every path)."""
        jar = self._cookies.get(self._origin(url), {})
        for key in [key for key in jar if key[0] == name]:
            del jar[key]

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
        """
        One exchange. With C{keep_cookies} the jar's cookies for C{url} are
        sent (unless C{headers} has a C{Cookie} of its own) and the answer's
        are kept; without, only what C{headers} says is sent.
        """
        sent = Headers({k: [v] for k, v in (headers or {}).items()})
        cookie = self.jar.header(url) if keep_cookies else None
        if cookie is not None and not sent.hasHeader(b"cookie"):
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


def location_of(response: IResponse, base: str) -> str:
    """The absolute URL a redirect points to (an error when it has no Location)."""
    location = response.headers.getRawHeaders(b"location", [b""])[0].decode("ascii")
    assert location, f"a {response.code} from {base} without a Location"
    return urljoin(base, location)


async def browse(client: WebClient, url: str, fill: Callable[[Form], List[Tuple[str, str]]],
                 max_steps: int = 20, stop_at: Optional[str] = None,
                 ) -> Tuple[IResponse, bytes, str, List[str]]:
    """
    Navigate to C{url} like a browser: follow redirects, and submit each HTML
    page's form with C{fill}, until a page without a form. The last response,
    its body, its URL and the C{prompt} of each form submitted. With
    C{stop_at}, a redirect to a URL starting with it is not followed: the
    redirect is the last response, and its target the URL returned.
    """
    method, data = "GET", None
    prompts: List[str] = []
    for _ in range(max_steps):
        response, body = await client.request(method, url, headers=NAVIGATE, data=data)
        if response.code in (301, 302, 303, 307, 308):
            url = location_of(response, url)
            method, data = "GET", None
            if stop_at is not None and url.startswith(stop_at):
                return response, body, url, prompts
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
