"""
A small synchronous HTTP client that logs in like a browser, for the
benchmark: it follows redirects, keeps cookies per origin and submits the
OP's development login and consent forms. Standard library only, so the
harness runs on any Python 3.9+.

It is used to create the sessions the load uses (through the proxy's real
login, against the real OP) and to time complete logins (scenario L).
"""

from __future__ import annotations

import http.client
import time
from html.parser import HTMLParser
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlencode, urljoin, urlsplit

NAVIGATE = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "User-Agent": "oidcproxy-bench",
}
"""What a browser sends on a top-level navigation."""

TIMEOUT = 15.0


class LoginFailed(Exception):
    pass


class Response:
    def __init__(self, url: str, status: int, headers: List[Tuple[str, str]], body: bytes) -> None:
        self.url = url
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _Forms(HTMLParser):
    """The forms of a page: (action, method, [(name, type, value)])."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: List[Tuple[str, str, List[Tuple[str, str, str]]]] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), a.get("method", "get").upper(), []))
            self._open = True
        elif tag in ("input", "button") and self._open and a.get("name"):
            self.forms[-1][2].append((a["name"], a.get("type", "text").lower(), a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = False


class Browser:
    """
    One browser: keep-alive connections and cookies per origin (scheme, host,
    port; cookie paths are honoured, the rest of the cookie attributes --
    Max-Age=0 aside -- do not matter on loopback).
    """

    def __init__(self) -> None:
        self._connections: Dict[str, http.client.HTTPConnection] = {}
        self.cookies: Dict[str, Dict[Tuple[str, str], str]] = {}
        self.received: List[Tuple[str, str]] = []
        """Every cookie set (name, value), in order, expired ones included."""

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    @staticmethod
    def _origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def cookie_header(self, url: str) -> Optional[str]:
        path = urlsplit(url).path or "/"
        pairs = [
            f"{name}={value}"
            for (name, cookie_path), value in self.cookies.get(self._origin(url), {}).items()
            if path == cookie_path or path.startswith(cookie_path.rstrip("/") + "/")
        ]
        return "; ".join(pairs) if pairs else None

    def _receive(self, url: str, headers: List[Tuple[str, str]]) -> None:
        jar = self.cookies.setdefault(self._origin(url), {})
        for key, raw in headers:
            if key.lower() != "set-cookie":
                continue
            pair, *attributes = raw.split(";")
            name, _, value = pair.strip().partition("=")
            self.received.append((name, value))
            path = "/"
            expired = False
            for attribute in attributes:
                akey, _, arg = attribute.strip().partition("=")
                if akey.lower() == "path" and arg.startswith("/"):
                    path = arg
                elif akey.lower() == "max-age":
                    expired = int(arg) <= 0
                elif akey.lower() == "expires" and "1970" in arg:
                    expired = True
            if expired:
                jar.pop((name, path), None)
            else:
                jar[(name, path)] = value

    def request(self, method: str, url: str, headers: Optional[Dict[str, str]] = None,
                body: Optional[bytes] = None) -> Response:
        parts = urlsplit(url)
        origin = self._origin(url)
        sent = dict(headers or {})
        cookie = self.cookie_header(url)
        if cookie:
            sent["Cookie"] = cookie
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        for attempt in (1, 2):
            connection = self._connections.get(origin)
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                                         timeout=TIMEOUT)
                self._connections[origin] = connection
            try:
                connection.request(method, target, body=body, headers=sent)
                answer = connection.getresponse()
                data = answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed meanwhile: once more, anew.
                connection.close()
                del self._connections[origin]
                if attempt == 2:
                    raise
                continue
            if answer.will_close:
                connection.close()
                del self._connections[origin]
            response = Response(url, answer.status, answer.getheaders(), data)
            self._receive(url, response.headers)
            return response
        raise AssertionError("not reached")

    def login(self, url: str, user: str = "alice", max_steps: int = 20) -> Response:
        """
        Navigate to C{url} and walk the whole login: redirects, the OP's
        login form (any password) and consent form, the proxy's callback,
        until a page without a form; the last response, which must be 200.
        """
        method, body = "GET", None
        for _ in range(max_steps):
            response = self.request(method, url, NAVIGATE, body)
            if response.status in (301, 302, 303, 307, 308):
                location = response.header("location")
                if not location:
                    raise LoginFailed(f"{response.status} from {url} without a Location")
                url, method, body = urljoin(url, location), "GET", None
                continue
            kind = response.header("content-type") or ""
            forms = []
            if response.status == 200 and "html" in kind:
                parser = _Forms()
                parser.feed(response.body.decode("utf-8", "replace"))
                forms = parser.forms
            if not forms:
                if response.status != 200:
                    raise LoginFailed(f"the login ended with {response.status} at {url}: "
                                      f"{response.body[:300]!r}")
                return response
            action, form_method, fields = forms[0]
            data = []
            for name, field_type, value in fields:
                if field_type == "hidden":
                    data.append((name, value))
                elif name == "login":
                    data.append((name, user))
                elif field_type == "password":
                    data.append((name, "any password will do"))
            url, method = urljoin(url, action), form_method
            encoded = urlencode(data).encode("ascii")
            if method == "GET":
                url, body = url.split("?")[0] + "?" + encoded.decode("ascii"), None
            else:
                body = encoded
        raise LoginFailed(f"no final page after {max_steps} steps (last: {url})")


def session_cookie(url: str, user: str = "alice") -> str:
    """
    Log in through the proxy at C{url} (a protected page) in a fresh
    browser; the C{Cookie} header value the browser then sends there.
    """
    return login_cookies(url, user)[0]


def login_cookies(url: str, user: str = "alice") -> Tuple[str, List[Tuple[str, str]]]:
    """
    L{session_cookie}, and every cookie set during the login (name, value),
    in order: the state cookie, the OP's, the session's.
    """
    browser = Browser()
    try:
        browser.login(url, user)
        cookie = browser.cookie_header(url)
    finally:
        browser.close()
    if not cookie:
        raise LoginFailed(f"no cookie for {url} after the login")
    return cookie, browser.received


def timed_login(url: str, user: str = "alice") -> float:
    """One complete login in a fresh browser; the seconds it took."""
    start = time.perf_counter()
    browser = Browser()
    try:
        browser.login(url, user)
    finally:
        browser.close()
    return time.perf_counter() - start
