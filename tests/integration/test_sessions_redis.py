"""
End-to-end tests of Redis sessions: two real C{twistd oidcproxy} processes
(A and B) share one real C{redis-server}, in front of the real upstream app,
against the real OpenID Provider (panva's C{oidc-provider},
L{tests.integration.stack.OP_SCRIPT}).

Both proxies have the same configuration (C{session.store = "redis"}, the
same session secrets, the same C{public_url}: proxy A's address, where the
OP sends the browser back and POSTs back-channel logout tokens). The login
is walked by the browser-like HTTP client of L{tests.integration.stack}
through the OP's development forms; the cookie is then sent by hand to
either proxy (a client keeps cookies per host:port).

Each test starts its own redis-server (never the system one), OP, upstream
and proxies on free loopback ports, and stops them at cleanup. Every wait is
bounded. Figures (refresh grants, 503 timings, recovery) are printed on
stderr as C{SESSIONS_REDIS ...} lines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Awaitable, Dict, List, Optional, Tuple
from urllib.parse import urljoin

import attr
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from tests.integration import procs
from tests.integration.faults import redis_command
from tests.integration.redis_server import RedisServer, start_redis
from tests.integration.stack import (
    ALICE,
    API,
    CLIENT_ID,
    NAVIGATE,
    PROTECTED,
    OpenIDProvider,
    WebClient,
    browse,
    fill_login,
    header_values,
    location_of,
    parse_forms,
    proxy_config,
    proxy_cookies_seen,
    require_op,
    reserve_port,
    session_secrets,
    start_op,
    start_proxy,
)

log = Logger()

COOKIE = "oidcproxy"
COMMAND_TIMEOUT = 1.0
"""C{[redis] command_timeout} of the proxies, in seconds."""
SLACK = 1.0
"""How much later than the command timeout a 503 may come."""
RECOVERY = 15.0
"""How long the proxies may take to use Redis again once it is back (reconnect backoff)."""

ACCESS_TOKEN_TTL = 8
"""The OP's access-token lifetime in the refresh test (seconds)."""
REFRESH_LEEWAY = 6
"""The proxies' C{session.refresh_leeway} there: a refresh is due 2 s after the login."""
CONCURRENT = 50


def report(text: str) -> None:
    sys.stderr.write(f"\nSESSIONS_REDIS {text}\n")
    sys.stderr.flush()
    log.info("SESSIONS_REDIS {text}", text=text)


async def concurrently(calls: List[Awaitable[Any]]) -> List[Any]:
    """Run the coroutines C{calls} at once; their results in order, or the first failure."""
    try:
        return await gatherResults(
            [Deferred.fromCoroutine(c) for c in calls],  # type: ignore[arg-type]
            consumeErrors=True)
    except FirstError as e:  # unwrapped: a failure stays a failure, an allowed skip a skip
        e.subFailure.raiseException()
        raise


@attr.s(auto_attribs=True)
class Shared:
    """Two proxies sharing one redis-server, the OP and the upstream."""

    op: OpenIDProvider
    upstream: procs.Upstream
    redis: RedisServer
    a: procs.Proxy
    b: procs.Proxy

    def describe(self) -> str:
        children = [self.op.child, self.upstream.child, self.a.child, self.b.child]
        if self.redis.child is not None:
            children.append(self.redis.child)
        return "\n".join(c.describe() for c in children)


async def start_shared(testcase: TestCase, session: Optional[Dict[str, Any]] = None,
                       **op_options: Any) -> Shared:
    """
    Start a redis-server, the OP (its client registered with proxy A's
    callback, post-logout URI and back-channel logout URI; C{op_options} go
    to L{start_op}), the upstream and proxies A and B (C{session}: more
    C{[session]} keys), all running.
    """
    require_op()
    reserved_a, reserved_b = reserve_port(), reserve_port()
    try:
        port_a, port_b = reserved_a.getsockname()[1], reserved_b.getsockname()[1]
        public_url = f"http://127.0.0.1:{port_a}"
        upstream = procs.spawn_upstream(testcase)
        redis, op = await concurrently([
            start_redis(testcase),
            start_op(testcase, [public_url + "/oidc/callback"], [public_url + "/"],
                     backchannel_logout_uri=public_url + "/oidc/backchannel-logout",
                     **op_options),
        ])
        await upstream.wait_ready()
        shared_secrets = session_secrets()
        redis_table = {
            "url": redis.url + "/0",
            "command_timeout": f"{COMMAND_TIMEOUT:g}s",
            "connect_timeout": "1s",
        }
        session_table = {"store": "redis", **(session or {})}
        a, b = await concurrently([
            start_proxy(testcase, reserved, proxy_config(
                port, op, upstream, public_url=public_url, shared_secrets=shared_secrets,
                session=session_table, redis=redis_table))
            for reserved, port in ((reserved_a, port_a), (reserved_b, port_b))
        ])
    finally:
        reserved_a.close()
        reserved_b.close()
    return Shared(op, upstream, redis, a, b)


class SessionsRedisTests(TestCase):
    """Two proxies, one Redis, the real OP."""

    timeout = 60

    # -- helpers ----------------------------------------------------------------------

    def assertIdentity(self, body: bytes, user: Dict[str, str]) -> Dict[str, Any]:
        echo = json.loads(body)
        self.assertEqual(header_values(echo, "x-forwarded-user"), [user["login"]])
        self.assertEqual(header_values(echo, "x-forwarded-email"), [user["email"]])
        self.assertEqual(header_values(echo, "x-forwarded-groups"), [user["groups"]])
        self.assertEqual(proxy_cookies_seen(echo), [])
        return echo

    def assertNoSessionCookieChange(self, response: IResponse) -> None:
        """The answer neither sets nor clears the session cookie."""
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            self.assertFalse(value.startswith(COOKIE.encode("ascii") + b"="), value)

    def assertClearsSessionCookie(self, response: IResponse) -> None:
        cleared = [v for v in response.headers.getRawHeaders(b"set-cookie", [])
                   if v.startswith(COOKIE.encode("ascii") + b"=") and b"max-age=0" in v.lower()]
        self.assertTrue(cleared, response.headers.getRawHeaders(b"set-cookie"))

    async def log_in(self, shared: Shared, client: WebClient) -> str:
        """Log in as alice through proxy A and the OP's forms; the session cookie's value."""
        response, body, final_url, _ = await browse(
            client, shared.a.url + PROTECTED, fill_login("alice"))
        context = f"\n{client.history}\n{shared.describe()}"
        self.assertEqual(response.code, 200, body[:2000].decode("utf-8", "replace") + context)
        self.assertEqual(final_url, shared.a.url + PROTECTED)
        self.assertIdentity(body, ALICE)
        cookie = client.jar.value(shared.a.url, COOKIE)
        self.assertIsNotNone(cookie, context)
        assert cookie is not None
        return cookie

    async def get(self, client: WebClient, proxy: procs.Proxy, cookie: str,
                  navigate: bool = False, path: str = "/some/api") -> Tuple[IResponse, bytes]:
        """A GET to C{proxy} with the session cookie C{cookie}: an API call, or a navigation."""
        headers = dict(NAVIGATE if navigate else API)
        headers["Cookie"] = f"{COOKIE}={cookie}"
        return await client.request("GET", proxy.url + path, headers=headers, keep_cookies=False)

    async def assertWorks(self, client: WebClient, proxy: procs.Proxy, cookie: str,
                          what: str) -> None:
        response, body = await self.get(client, proxy, cookie)
        self.assertEqual(response.code, 200, f"{what}: {body[:500]!r}")
        echo = self.assertIdentity(body, ALICE)
        self.assertEqual(echo["uri"], "/echo/some/api")

    async def assertRefused(self, client: WebClient, proxy: procs.Proxy, cookie: str,
                            what: str) -> None:
        """An API call with C{cookie} gets 401 (the session is over), and the cookie is cleared."""
        response, body = await self.get(client, proxy, cookie)
        self.assertEqual(response.code, 401, f"{what}: {body[:500]!r}")
        challenge = response.headers.getRawHeaders(b"www-authenticate", [b""])[0]
        self.assertTrue(challenge.startswith(b"Bearer"), challenge)
        self.assertEqual(json.loads(body)["error"], "unauthenticated")
        self.assertClearsSessionCookie(response)

    async def log_out(self, client: WebClient, shared: Shared, proxy: procs.Proxy,
                      cookie: str) -> str:
        """POST /oidc/logout to C{proxy}, same-origin; where the 303 sends the browser."""
        response, body = await client.request(
            "POST", proxy.url + "/oidc/logout",
            headers={"Origin": shared.a.url, "Cookie": f"{COOKIE}={cookie}",
                     "Content-Type": "application/x-www-form-urlencoded", **NAVIGATE},
            data=b"rd=%2F", keep_cookies=False)
        self.assertEqual(response.code, 303, body[:500])
        self.assertClearsSessionCookie(response)
        location = location_of(response, proxy.url)
        self.assertTrue(location.startswith(shared.op.issuer + "/session/end?"), location)
        return location

    # -- the tests --------------------------------------------------------------------

    async def test_session_shared_across_proxies(self) -> None:
        """
        A login through proxy A gives a cookie that works on proxy B too (the
        upstream gets alice's identity headers from B); a logout on B (a
        same-origin POST, answered with a 303 to the OP's end_session
        endpoint) ends the session server-side: the same cookie gets 401 on
        A at once, and on B.
        """
        shared = await start_shared(self)
        client = WebClient(self)
        cookie = await self.log_in(shared, client)

        await self.assertWorks(client, shared.b, cookie, "proxy B with A's cookie")
        response, body = await self.get(client, shared.b, cookie, navigate=True, path=PROTECTED)
        self.assertEqual(response.code, 200, body[:500])
        self.assertEqual(json.loads(body)["uri"], "/echo" + PROTECTED)
        await self.assertWorks(client, shared.a, cookie, "proxy A")

        await self.log_out(client, shared, shared.b, cookie)
        await self.assertRefused(client, shared.a, cookie, "proxy A after the logout on B")
        await self.assertRefused(client, shared.b, cookie, "proxy B after its logout")
        # A navigation is sent to the OP again.
        response, _ = await self.get(client, shared.a, cookie, navigate=True, path=PROTECTED)
        self.assertEqual(response.code, 302)
        self.assertTrue(location_of(response, shared.a.url).startswith(shared.op.issuer + "/auth?"))

    async def test_refresh_once_for_fifty_concurrent_requests(self) -> None:
        """
        With an 8 s access token, rotated refresh tokens and a refresh due 2 s
        after the login, 50 concurrent API requests with the session's cookie,
        half to proxy A and half to proxy B, all get 200 with alice's
        identity, and the OP sees exactly one refresh_token grant (and no
        failed grant: a refresh token spent twice would revoke the grant).
        """
        shared = await start_shared(
            self, session={"refresh_leeway": f"{REFRESH_LEEWAY}s"},
            access_token_ttl=ACCESS_TOKEN_TTL, rotate_refresh_tokens=True)
        op = shared.op
        client = WebClient(self)
        cookie = await self.log_in(shared, client)
        logged_in = time.monotonic()
        self.assertEqual(op.events("grant.success", "refresh_token"), [])
        self.assertEqual(len(op.events("grant.success", "authorization_code")), 1)

        # The tokens came before the login's last request: by now + 2.3 s the
        # access token is within the leeway (and still valid for ~5.7 s).
        await procs.sleep(max(0.0, logged_in + ACCESS_TOKEN_TTL - REFRESH_LEEWAY + 0.3
                              - time.monotonic()))
        started = time.monotonic()
        results = await concurrently([
            self.get(client, shared.a if i % 2 == 0 else shared.b, cookie)
            for i in range(CONCURRENT)
        ])
        burst = time.monotonic() - started
        codes = [response.code for response, _ in results]
        grants = op.events("grant.success", "refresh_token")
        refreshed_a = shared.a.log().count("session of alice refreshed")
        refreshed_b = shared.b.log().count("session of alice refreshed")
        report(f"refresh: {CONCURRENT} concurrent requests ({codes.count(200)} x 200) in "
               f"{burst:.3f}s; OP refresh_token grants={len(grants)}; "
               f"refreshed by proxy A={refreshed_a}, proxy B={refreshed_b}; "
               f"OP grant errors={len(op.events('grant.error'))}")
        context = f"codes {codes}\n{shared.describe()}"
        self.assertEqual(op.events("grant.error"), [], context)
        self.assertEqual(len(grants), 1, context)
        self.assertEqual(refreshed_a + refreshed_b, 1, context)
        failed = [(i, response.code, body[:200]) for i, (response, body) in enumerate(results)
                  if response.code != 200]
        self.assertEqual(
            failed, [],
            f"{len(failed)} of {CONCURRENT} requests failed (even: proxy A, odd: proxy B); "
            f"proxy A's log:\n{shared.a.log()[-3000:]}\nproxy B's log:\n{shared.b.log()[-3000:]}")
        for _, body in results:
            self.assertIdentity(body, ALICE)

    async def test_redis_hung_gives_503_then_recovers(self) -> None:
        """
        With redis-server stopped (SIGSTOP), an API request with a valid
        session cookie gets 503 within command_timeout (1 s) + 1 s, and so
        does a browser navigation (not a 302 to the login); neither touches
        the cookie. After SIGCONT the same cookie works again (200) on both
        proxies, without a new login.
        """
        shared = await start_shared(self)
        client = WebClient(self)
        cookie = await self.log_in(shared, client)
        await self.assertWorks(client, shared.a, cookie, "before the fault")

        shared.redis.pause()
        timings = {}
        for name, proxy, navigate in (("api A", shared.a, False), ("navigation A", shared.a, True),
                                      ("api B", shared.b, False)):
            started = time.monotonic()
            response, body = await self.get(client, proxy, cookie, navigate=navigate,
                                            path=PROTECTED if navigate else "/some/api")
            elapsed = timings[name] = time.monotonic() - started
            self.assertEqual(response.code, 503, f"{name}: {body[:500]!r}")
            self.assertLessEqual(elapsed, COMMAND_TIMEOUT + SLACK, name)
            self.assertIsNone(response.headers.getRawHeaders(b"location"), name)
            self.assertNoSessionCookieChange(response)
            content_type = b"".join(response.headers.getRawHeaders(b"content-type", []))
            if navigate:
                self.assertIn(b"text/html", content_type, name)
            else:
                self.assertIn(b"json", content_type, name)
                self.assertEqual(json.loads(body)["error"], "session_store_unavailable")

        shared.redis.resume()
        resumed = time.monotonic()
        recovery = {}
        for name, proxy in (("A", shared.a), ("B", shared.b)):
            async def works(proxy: procs.Proxy = proxy) -> Optional[bool]:
                response, _ = await self.get(client, proxy, cookie)
                self.assertIn(response.code, (200, 503))
                return True if response.code == 200 else None

            await procs.poll_async(works, RECOVERY, what=f"proxy {name} to use Redis again")
            recovery[name] = time.monotonic() - resumed
            await self.assertWorks(client, proxy, cookie, f"proxy {name} after SIGCONT")
        report("redis hung: 503 after " + ", ".join(f"{k} {v:.3f}s" for k, v in timings.items())
               + f" (command_timeout {COMMAND_TIMEOUT:g}s); after SIGCONT 200 again after "
               + ", ".join(f"{k} {v:.3f}s" for k, v in recovery.items()))

    async def test_redis_restarted_empty(self) -> None:
        """
        redis-server killed and started again, empty, on the same port: the
        session is gone, so a browser navigation with the old cookie is sent
        to the OP's login (302) and an API request gets 401, on both proxies
        (503 while a proxy reconnects); never a 500.
        """
        shared = await start_shared(self)
        client = WebClient(self)
        cookie = await self.log_in(shared, client)
        await self.assertWorks(client, shared.a, cookie, "before the restart")

        await shared.redis.kill()
        await shared.redis.restart()
        restarted = time.monotonic()
        seen: List[Tuple[str, int]] = []
        settled = {}
        for name, proxy in (("A", shared.a), ("B", shared.b)):
            async def answers(proxy: procs.Proxy = proxy, name: str = name) -> Optional[IResponse]:
                response, body = await self.get(client, proxy, cookie, navigate=True,
                                                path=PROTECTED)
                seen.append((name, response.code))
                self.assertNotEqual(response.code, 500, body[:500])
                self.assertIn(response.code, (302, 503), body[:500])
                return response if response.code != 503 else None

            response = await procs.poll_async(answers, RECOVERY,
                                              what=f"proxy {name} to use the new Redis")
            settled[name] = time.monotonic() - restarted
            location = location_of(response, proxy.url)
            self.assertTrue(location.startswith(shared.op.issuer + "/auth?"), location)
            self.assertClearsSessionCookie(response)
            await self.assertRefused(client, proxy, cookie, f"proxy {name} after the restart")
        report(f"redis restarted empty: answers {seen}; settled after "
               + ", ".join(f"{k} {v:.3f}s" for k, v in settled.items()))
        self.assertNotIn(500, [code for _, code in seen])

    async def test_cookie_sessions_logout_revokes_copies(self) -> None:
        """
        Cookie sessions with a [redis] table (the revocation list): a logout
        through proxy B revokes the session itself, so a copy of its cookie
        taken before gets 401 on both proxies at once; alice's other session
        (a second login) and the list's keys for it are untouched.
        """
        shared = await start_shared(self, session={"store": "cookie"})
        client = WebClient(self)
        first = await self.log_in(shared, client)
        self.assertGreater(len(first), 200, "not a sealed cookie session")
        client.jar.forget(shared.a.url, COOKIE)
        second = await self.log_in(shared, client)
        self.assertNotEqual(first, second)
        for proxy, name in ((shared.a, "A"), (shared.b, "B")):
            await self.assertWorks(client, proxy, first, f"the first session on {name}")

        await self.log_out(client, shared, shared.b, first)
        for proxy, name in ((shared.a, "A"), (shared.b, "B")):
            await self.assertRefused(client, proxy, first,
                                     f"a copy of the logged-out cookie on {name}")
            await self.assertWorks(client, proxy, second, f"the other session on {name}")
        reply = redis_command(shared.redis, b"EVAL",
                              b"return #redis.call('KEYS', 'oidcproxy:revoked:session:*')", b"0")
        self.assertEqual(reply, b":1\r\n")
        report("cookie sessions: a logout revoked its session id; copies refused on A and B")

    async def test_backchannel_logout_ends_sessions_on_both_proxies(self) -> None:
        """
        Back-channel logout ends, on both proxies, a session the proxy's own
        logout did not touch. Alice has two proxy sessions from one OP
        session (the second login is single sign-on: same OP session, same
        C{sid}). She logs the first one out through proxy B, follows the 303
        to the OP's end_session endpoint and confirms there; the OP POSTs a
        logout token (with that C{sid}) to proxy A's back-channel endpoint,
        which ends the second session: its cookie, still good on A and B
        right before the confirmation, gets 401 on both after it.
        """
        shared = await start_shared(self)
        op = shared.op
        client = WebClient(self)
        first = await self.log_in(shared, client)
        # A second proxy session of the same OP session: the browser without
        # its proxy cookie (a login with it would end the first session) but
        # with its OP cookies.
        client.jar.forget(shared.a.url, COOKIE)
        response, body, final_url, prompts = await browse(
            client, shared.a.url + PROTECTED, fill_login("alice"))
        self.assertEqual(response.code, 200, body[:500])
        self.assertNotIn("login", prompts, "the second login should be single sign-on")
        second = client.jar.value(shared.a.url, COOKIE)
        assert second is not None
        self.assertNotEqual(first, second)
        for proxy, name in ((shared.a, "A"), (shared.b, "B")):
            await self.assertWorks(client, proxy, first, f"first session on {name}")
            await self.assertWorks(client, proxy, second, f"second session on {name}")

        # The proxy's logout ends the first session only ...
        end_session = await self.log_out(client, shared, shared.b, first)
        await self.assertRefused(client, shared.a, first, "first session after its logout")
        for proxy, name in ((shared.a, "A"), (shared.b, "B")):
            await self.assertWorks(client, proxy, second, f"second session on {name} "
                                   "before the OP session ends")
        self.assertEqual(op.events("backchannel.success"), [])

        # ... the OP's end_session confirmation ends the OP session, and the
        # OP sends the logout token before it answers.
        response, body = await client.request("GET", end_session, headers=NAVIGATE)
        self.assertEqual(response.code, 200, body[:500])
        forms = [f for f in parse_forms(body) if f.action.endswith("/session/end/confirm")]
        self.assertEqual(len(forms), 1, body[:2000])
        form = forms[0]
        data = [(name, value) for name, kind, value in form.fields if kind == "hidden"]
        data.append(("logout", "yes"))  # the "Yes, sign me out" button (outside the form)
        confirm_url = urljoin(end_session, form.action)
        response, body = await client.request(form.method, confirm_url, headers=NAVIGATE,
                                              data=data)
        self.assertEqual(response.code, 303, body[:500])
        self.assertEqual(location_of(response, confirm_url), shared.a.url + "/")

        context = shared.describe()
        self.assertEqual(op.events("backchannel.error"), [], context)
        delivered = op.events("backchannel.success", CLIENT_ID, "alice")
        self.assertEqual(len(delivered), 1, context)
        self.assertIn("back-channel logout: 1 session(s) ended", shared.a.log(), context)
        report(f"back-channel logout: OP delivered {len(delivered)} logout token(s) "
               f"(sid {delivered[0][2]}) to proxy A")
        for proxy, name in ((shared.a, "A"), (shared.b, "B")):
            await self.assertRefused(client, proxy, second,
                                     f"second session on {name} after back-channel logout")
