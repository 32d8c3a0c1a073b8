"""
Two identity providers in one proxy, against two independent real OPs
(panva's C{oidc-provider} twice, L{tests.integration.stack.OP_SCRIPT}, each
with its own issuer, port, client id and secret): C{[oidc]} is OP 1 and
serves C{/}; C{[providers.partners]} is OP 2 and serves C{/portal}.

Covered with cookie sessions and with Redis sessions (a real redis-server
started by the test): a login on one provider's route goes to that
provider's OP and ends there with its user, and the other provider's route
then sends the browser to the other OP (headless Chromium, both
directions); a session of one provider, replayed on the other's route under
either provider's cookie name, gets 401 for an API client; and the IdP
mix-up, both ways: a code OP 1 issued, presented at
C{/oidc/callback/partners} (with its own state, or a partners login's state
and OP 1's C{iss} or OP 2's), is refused, and so is OP 2's at
C{/oidc/callback}; C{/oidc/ready} reports each provider.

Signed in with both providers (either first; cookie and Redis sessions),
a logout of one provider -- C{/oidc/logout?provider=partners}, then the
default one, each through the proxy's confirmation page and the OP's
end-session page -- ends that provider's session only: its cookie is gone,
its route sends the browser to log in at its OP again, and the other route
still serves the other user.

The chooser, on C{/shared} with C{providers = ["oidc", "partners"]}: a
fresh browser gets the sign-in page with one button per provider; each
button logs in at its OP and lands on the page first asked for with that
OP's user; C{/oidc/login?provider=partners&rd=...} goes to OP 2 without
the chooser; an API client gets 401 with C{WWW-Authenticate: Bearer
realm="oidcproxy", issuers="<OP 1> <OP 2>"}.

Not covered here: a named provider's access token on its route. The OP of
these tests (L{tests.integration.stack.OP_SCRIPT}) issues opaque access
tokens only (no resource indicators, no client credentials grant), so
there is no real OP 2 token to present; the unit tests cover it.

Each test starts its own OPs, upstream, proxy (and redis-server) on free
loopback ports and stops them at cleanup.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import attr
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from tests.integration import procs
from tests.integration.redis_server import RedisServer, start_redis
from tests.integration.stack import (
    ALICE,
    API,
    BOB,
    NAVIGATE,
    OpenIDProvider,
    WebClient,
    browse,
    fill_login,
    header_values,
    proxy_config,
    proxy_cookies_seen,
    require_op,
    reserve_port,
    start_op,
    start_proxy,
)
from tests.integration.test_login_interop import Browser, require_chromium

PARTNERS = "partners"
PORTAL = "/portal/desk?y=2"
"""The page of the partners' route first asked for; the upstream sees /echo/portal/desk."""
STAFF = "/staff/page?x=1"
"""A page of [oidc]'s route (C{/}); the upstream sees /echo/staff/page."""
ISSUER_HEADER = "X-Forwarded-Iss"
SHARED = "/shared/doc?z=3"
"""A page of the route with a choice of both providers; the upstream sees /echo/shared/doc."""
SIGNED_OUT = "/oidc/logout?signed_out=1"


@attr.s(frozen=True, auto_attribs=True)
class Side:
    """One provider as a test sees it: its page, callback, OP and the user who logs in there."""

    page: str
    upstream_uri: str
    callback: str
    op: OpenIDProvider
    user: Dict[str, str]


@attr.s(auto_attribs=True)
class TwoProviders:
    """OP 1 ([oidc]), OP 2 ([providers.partners]), the upstream and the proxy."""

    op1: OpenIDProvider
    op2: OpenIDProvider
    upstream: procs.Upstream
    proxy: procs.Proxy
    redis: Optional[RedisServer]

    def sides(self) -> Dict[str, Side]:
        """Each provider's L{Side}: alice at OP 1 on C{/}, bob at OP 2 on C{/portal}."""
        return {
            "oidc": Side(STAFF, "/echo/staff/page?x=1", "/oidc/callback", self.op1, ALICE),
            PARTNERS: Side(PORTAL, "/echo/portal/desk?y=2", f"/oidc/callback/{PARTNERS}",
                           self.op2, BOB),
        }

    def describe(self) -> str:
        children = [self.op1.child, self.op2.child, self.upstream.child, self.proxy.child]
        if self.redis is not None and self.redis.child is not None:
            children.append(self.redis.child)
        return "\n".join(c.describe() for c in children)


async def start_two_providers(testcase: TestCase, store: str) -> TwoProviders:
    """
    The two OPs, the upstream, a redis-server when C{store} is C{"redis"},
    and the proxy, all running; the proxy has read both OPs' metadata.
    """
    require_op()
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        public = f"http://127.0.0.1:{port}"
        signed_out = [public + "/", public + SIGNED_OUT]
        op1 = await start_op(testcase, [public + "/oidc/callback"], signed_out,
                             client_id="proxy-staff")
        op2 = await start_op(testcase, [public + f"/oidc/callback/{PARTNERS}"], signed_out,
                             client_id="proxy-partners")
        upstream = await procs.start_upstream(testcase)
        redis = await start_redis(testcase) if store == "redis" else None
        config = proxy_config(
            port, op1, upstream, session={"store": store},
            redis={"url": redis.url + "/0", "command_timeout": "2s", "connect_timeout": "1s"}
            if redis is not None else None,
            headers={ISSUER_HEADER: "iss"})
        config += f"""
[providers.{PARTNERS}]
issuer = "{op2.issuer}"
client_id = "{op2.client_id}"
client_secret = "{op2.client_secret}"
scopes = ["openid", "email", "profile", "groups"]
token_endpoint_auth_method = "client_secret_basic"

[[routes]]
path = "/portal"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/echo/portal"
provider = "{PARTNERS}"

[[routes]]
path = "/shared"
upstream = "{upstream.url}"
auth = "session"
replace_prefix = "/echo/shared"
providers = ["oidc", "{PARTNERS}"]
"""
        proxy = await start_proxy(testcase, reserved, config)
    finally:
        reserved.close()
    client = WebClient(testcase)

    async def partners_ready() -> Optional[bool]:
        response, _ = await client.request(
            "GET", proxy.url + f"/oidc/login?provider={PARTNERS}&rd=/portal",
            headers=NAVIGATE, keep_cookies=False)
        return True if response.code == 302 else None

    await procs.poll_async(partners_ready, procs.START_DEADLINE,
                           what="the proxy to read OP 2's metadata")
    return TwoProviders(op1, op2, upstream, proxy, redis)


def session_cookies(client: WebClient, url: str) -> Dict[str, str]:
    """The proxy's session cookies the client holds (not the login state or CSRF cookies)."""
    return {name: value for name in client.jar.names(url)
            if name.startswith("oidcproxy") and "state" not in name and "csrf" not in name
            for value in [client.jar.value(url, name)] if value is not None}


async def hrefs(browser: Browser, selector: str) -> List[str]:
    """The C{href} of each element C{selector} finds (waiting for the first)."""
    from selenium.webdriver.common.by import By

    def read() -> List[str]:
        browser._wait(lambda d: d.find_elements(By.CSS_SELECTOR, selector), selector)
        return [str(e.get_attribute("href"))
                for e in browser.driver.find_elements(By.CSS_SELECTOR, selector)]

    return await deferToThread(read)


class TwoProvidersMixin:
    """The checks shared by the tests below (a TestCase's methods)."""

    def assertServed(self, echo: Dict[str, Any], uri: str, user: Dict[str, str],
                     op: OpenIDProvider) -> None:
        """The upstream answered C{uri} for C{user}, signed in at C{op}."""
        test: Any = self
        test.assertEqual(echo["uri"], uri)
        test.assertEqual(header_values(echo, "x-forwarded-user"), [user["login"]])
        test.assertEqual(header_values(echo, "x-forwarded-email"), [user["email"]])
        test.assertEqual(header_values(echo, ISSUER_HEADER), [op.issuer])
        test.assertEqual(proxy_cookies_seen(echo), [])


class ProvidersInBrowserTests(TestCase, TwoProvidersMixin):
    """Headless Chromium through both OPs' real login pages."""

    timeout = 120

    async def sign_in_on_one_then_the_other(self, store: str, first: str) -> None:
        """
        The browser asks for the page of the provider C{first} (C{"partners"}
        or C{"oidc"}), logs in at its OP, and sees the upstream's answer for
        that OP's user; then asks for the other provider's page: the session
        does not satisfy it, the browser is sent to the other OP, logs in
        there as someone else and lands on that page with that OP's user.
        """
        require_chromium()
        stack = await start_two_providers(self, store)
        browser = await Browser.start(self)
        proxy = stack.proxy
        sides = stack.sides()
        for side in sorted(sides.values(), key=lambda side: side is not sides[first]):
            await browser.get(proxy.url + side.page)
            # Sent to this route's own OP: the login form is at its issuer.
            await browser.wait_for_url(side.op.issuer + "/interaction/")
            await browser.log_in_at_op(side.op, side.user["login"])
            echo = await browser.json_page(proxy.url + side.page)
            self.assertServed(echo, side.upstream_uri, side.user, side.op)

    async def test_partners_then_default_cookie(self) -> None:
        """Cookie sessions: /portal through OP 2, then / sends the browser to OP 1."""
        await self.sign_in_on_one_then_the_other("cookie", PARTNERS)

    async def test_default_then_partners_cookie(self) -> None:
        """Cookie sessions: / through OP 1, then /portal sends the browser to OP 2."""
        await self.sign_in_on_one_then_the_other("cookie", "oidc")

    async def test_partners_then_default_redis(self) -> None:
        """Redis sessions: /portal through OP 2, then / sends the browser to OP 1."""
        await self.sign_in_on_one_then_the_other("redis", PARTNERS)

    async def test_default_then_partners_redis(self) -> None:
        """Redis sessions: / through OP 1, then /portal sends the browser to OP 2."""
        await self.sign_in_on_one_then_the_other("redis", "oidc")


class CrossProviderTests(TestCase, TwoProvidersMixin):
    """A scripted HTTP client: sessions and codes carried to the other provider."""

    timeout = 90

    async def log_in(self, stack: TwoProviders, side: Side) -> Dict[str, str]:
        """A fresh client logs in on C{side}'s page through its OP; its session cookies."""
        client = WebClient(self)
        response, body, final_url, _ = await browse(
            client, stack.proxy.url + side.page, fill_login(side.user["login"]))
        context = f"\n{client.history}\n{stack.describe()}"
        self.assertEqual(response.code, 200, body[:2000].decode("utf-8", "replace") + context)
        self.assertEqual(final_url, stack.proxy.url + side.page)
        self.assertServed(json.loads(body), side.upstream_uri, side.user, side.op)
        cookies = session_cookies(client, stack.proxy.url)
        self.assertTrue(cookies, context)
        return cookies

    async def api_get(self, stack: TwoProviders, path: str,
                      cookies: Dict[str, str]) -> Tuple[IResponse, bytes]:
        client = WebClient(self)
        headers = dict(API)
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
        return await client.request("GET", stack.proxy.url + path, headers=headers,
                                    keep_cookies=False)

    async def replay_both_ways(self, store: str) -> None:
        """
        A session of either provider, sent by an API client to the other
        provider's route under either provider's cookie name, gets 401 and
        reaches nothing; on its own route it is served (the control).
        C{/oidc/ready} reports each provider (and Redis).
        """
        stack = await start_two_providers(self, store)
        response, body = await WebClient(self).request("GET", stack.proxy.url + "/oidc/ready")
        self.assertEqual(response.code, 200, body)
        expected = {"idp": "ok", f"idp:{PARTNERS}": "ok"}
        if store == "redis":
            expected["redis"] = "ok"
        self.assertEqual(json.loads(body)["checks"], expected)
        sides = stack.sides()
        partners = await self.log_in(stack, sides[PARTNERS])
        staff = await self.log_in(stack, sides["oidc"])
        names = sorted(set(partners) | set(staff))
        cases = [(partners, "/staff/api", "partners' session on [oidc]'s route"),
                 (staff, "/portal/api", "[oidc]'s session on partners' route")]
        for cookies, path, what in cases:
            for name in names:
                for value in cookies.values():
                    response, body = await self.api_get(stack, path, {name: value})
                    self.assertEqual(response.code, 401, f"{what} as {name}: {body[:300]!r}")
                    challenge = response.headers.getRawHeaders(b"www-authenticate", [b""])[0]
                    self.assertTrue(challenge.startswith(b"Bearer"), challenge)
        _, events = await WebClient(self).request("GET", stack.upstream.url + "/events")
        self.assertEqual([e["uri"] for e in json.loads(events)],
                         ["/echo/portal/desk?y=2", "/echo/staff/page?x=1"])
        # The control: each session is served on its own route.
        for cookies, path, side in ((partners, "/portal/api", sides[PARTNERS]),
                                    (staff, "/staff/api", sides["oidc"])):
            response, body = await self.api_get(stack, path, cookies)
            self.assertEqual(response.code, 200, body[:300])
            self.assertServed(json.loads(body), "/echo" + path, side.user, side.op)

    async def test_session_replayed_on_the_other_route_cookie(self) -> None:
        """Cookie sessions: a session of one provider gets 401 on the other's route."""
        await self.replay_both_ways("cookie")

    async def test_session_replayed_on_the_other_route_redis(self) -> None:
        """Redis sessions: a session of one provider gets 401 on the other's route."""
        await self.replay_both_ways("redis")

    async def code_from(self, stack: TwoProviders, client: WebClient, side: Side) -> Dict[str, str]:
        """
        Log in on C{side}'s page at its OP, up to the OP's redirect back to
        the proxy, which is not followed: the callback's query (code, state, iss).
        """
        callback = stack.proxy.url + side.callback
        response, _, url, _ = await browse(client, stack.proxy.url + side.page,
                                           fill_login(side.user["login"]), stop_at=callback)
        self.assertEqual(urlsplit(url).path, side.callback, f"{client.history}")
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.assertEqual(query["iss"], side.op.issuer)
        self.assertIn("code", query)
        return query

    async def state_of(self, stack: TwoProviders, client: WebClient, side: Side) -> str:
        """Start a login on C{side}'s page (its state cookie kept): the state sent to its OP."""
        response, _ = await client.request("GET", stack.proxy.url + side.page, headers=NAVIGATE)
        self.assertEqual(response.code, 302)
        location = response.headers.getRawHeaders(b"location", [b""])[0].decode()
        self.assertTrue(location.startswith(side.op.issuer + "/auth?"), location)
        return parse_qs(urlsplit(location).query)["state"][0]

    async def assertRefused(self, client: WebClient, stack: TwoProviders, side: Side,
                            query: Dict[str, str], what: str) -> None:
        """C{side}'s callback with C{query} makes no session and sends nobody on."""
        before = session_cookies(client, stack.proxy.url)
        url = stack.proxy.url + side.callback + "?" + urlencode(query)
        response, body = await client.request("GET", url, headers=NAVIGATE)
        self.assertIn(response.code, (400, 401, 403), f"{what}: {body[:500]!r}")
        self.assertIsNone(response.headers.getRawHeaders(b"location"), what)
        self.assertEqual(session_cookies(client, stack.proxy.url), before, what)

    def token_requests(self, op: OpenIDProvider) -> List[List[str]]:
        """The authorization-code grants the OP answered, successful or not."""
        return op.events("grant.success", "authorization_code") + \
            op.events("grant.error", "authorization_code")

    async def mix_up(self, issuer: str, victim: str) -> None:
        """
        A code the OP of provider C{issuer} issued is refused at the callback
        of provider C{victim}: with the issuing OP's own callback query (its
        state is C{issuer}'s login), with the state of a C{victim} login and
        the issuing OP's iss (RFC 9207: not the victim's issuer; refused
        before any token request), and with the victim OP's iss swapped in
        (the victim's OP refuses the code). No session is made, and the
        same code is still good at C{issuer}'s callback afterwards (the
        control; with the login's state cookie as it was, since a refused
        answer ends the attempt it belonged to).
        """
        stack = await start_two_providers(self, "cookie")
        sides = stack.sides()
        by, at = sides[issuer], sides[victim]
        client = WebClient(self)
        query = await self.code_from(stack, client, by)
        proxy_url = stack.proxy.url
        state_cookies = "; ".join(f"{name}={client.jar.value(proxy_url, name)}"
                                  for name in client.jar.names(proxy_url) if "state" in name)
        self.assertTrue(state_cookies, client.jar.names(proxy_url))

        await self.assertRefused(client, stack, at, query, "the callback query as is")
        state = await self.state_of(stack, client, at)
        await self.assertRefused(client, stack, at, dict(query, state=state), "the issuer's iss")
        self.assertEqual(self.token_requests(at.op), [])
        state = await self.state_of(stack, client, at)
        await self.assertRefused(client, stack, at, dict(query, state=state, iss=at.op.issuer),
                                 "the victim's iss swapped in")
        self.assertEqual(self.token_requests(by.op), [])

        # The control: the code, at the callback of the provider that
        # started its login, makes the session.
        url = proxy_url + by.callback + "?" + urlencode(query)
        response, body = await client.request("GET", url,
                                              headers=dict(NAVIGATE, Cookie=state_cookies))
        self.assertEqual(response.code, 302, body[:500])
        self.assertEqual(response.headers.getRawHeaders(b"location"),
                         [(proxy_url + by.page).encode("ascii")])
        self.assertTrue(session_cookies(client, proxy_url))
        response, body = await client.request("GET", proxy_url + by.page, headers=API)
        self.assertEqual(response.code, 200, body[:500])
        self.assertServed(json.loads(body), by.upstream_uri, by.user, by.op)

    async def test_idp_mix_up_op1_code_at_partners(self) -> None:
        """OP 1's code is refused at /oidc/callback/partners (see L{mix_up})."""
        await self.mix_up("oidc", PARTNERS)

    async def test_idp_mix_up_op2_code_at_default(self) -> None:
        """OP 2's code is refused at [oidc]'s /oidc/callback (see L{mix_up})."""
        await self.mix_up(PARTNERS, "oidc")


class LogoutOfOneProviderTests(TestCase, TwoProvidersMixin):
    """Headless Chromium signed in with both providers logs out of one, then the other."""

    timeout = 180

    async def sign_in(self, browser: Browser, stack: TwoProviders, side: Side) -> None:
        """Ask for C{side}'s page, log in at its OP, and see it served to C{side}'s user."""
        await browser.get(stack.proxy.url + side.page)
        await browser.log_in_at_op(side.op, side.user["login"])
        echo = await browser.json_page(stack.proxy.url + side.page)
        self.assertServed(echo, side.upstream_uri, side.user, side.op)

    async def log_out(self, browser: Browser, stack: TwoProviders, side: Side,
                      query: str) -> None:
        """
        Through the proxy's confirmation page (C{/oidc/logout} + C{query}),
        then C{side}'s OP's end-session page, back to the signed-out page.
        The OP asks to confirm only when it finds its own session in the
        browser: both OPs live on 127.0.0.1, where a browser's cookies are
        one jar for every port, so the OP signed in with last holds it.
        """
        proxy = stack.proxy
        await browser.get(proxy.url + "/oidc/logout" + query)
        await browser.click("form[action$='/oidc/logout'] button[type=submit]")
        ends = (side.op.issuer + "/session/end", proxy.url + SIGNED_OUT)
        await deferToThread(browser._wait, lambda d: d.current_url.startswith(ends),
                            f"{ends[0]} or {ends[1]}")
        if (await browser.url()).startswith(ends[0]):
            await browser.click("button[name=logout]")
            await browser.wait_for_url(ends[1])

    def end_sessions(self, stack: TwoProviders) -> Tuple[int, int]:
        """How many RP-initiated logouts OP 1 and OP 2 have done (the OP writes the line first)."""
        return (len(stack.op1.events("end_session.success")),
                len(stack.op2.events("end_session.success")))

    async def assertOnlyOneEnded(self, browser: Browser, stack: TwoProviders, ended: Side,
                                 kept: Side, kept_cookie: str) -> None:
        """
        Only C{kept}'s session cookie is left in the browser; with it,
        C{ended}'s route sends a browser to log in at C{ended}'s OP, and
        C{kept}'s route still serves C{kept}'s user (to the browser too).
        """
        proxy = stack.proxy
        cookies = await deferToThread(lambda: {
            c["name"]: c["value"] for c in browser.driver.get_cookies()
            if c["name"].startswith("oidcproxy") and "csrf" not in c["name"]})
        self.assertEqual(sorted(cookies), [kept_cookie])
        held = "; ".join(f"{name}={value}" for name, value in cookies.items())
        response, _ = await WebClient(self).request(
            "GET", proxy.url + ended.page, headers=dict(NAVIGATE, Cookie=held), keep_cookies=False)
        self.assertEqual(response.code, 302)
        location = response.headers.getRawHeaders(b"location", [b""])[0].decode()
        self.assertTrue(location.startswith(ended.op.issuer + "/auth?"), location)
        await browser.get(proxy.url + kept.page)
        echo = await browser.json_page(proxy.url + kept.page)
        self.assertServed(echo, kept.upstream_uri, kept.user, kept.op)

    async def both_then_log_out_each(self, store: str, first: str) -> None:
        """
        Signed in with both providers (C{first}'s first): logging out of
        partners (C{?provider=partners}) leaves [oidc]'s session working;
        signed in again with partners, logging out without C{provider} (the
        default, [oidc]'s, since the browser holds both) leaves partners'
        session working. Each logout goes to its own provider's OP.
        """
        require_chromium()
        stack = await start_two_providers(self, store)
        browser = await Browser.start(self)
        sides = stack.sides()
        staff, partners = sides["oidc"], sides[PARTNERS]
        for side in sorted(sides.values(), key=lambda side: side is not sides[first]):
            await self.sign_in(browser, stack, side)

        await self.log_out(browser, stack, partners, f"?provider={PARTNERS}")
        self.assertEqual(self.end_sessions(stack), (0, 1))
        await self.assertOnlyOneEnded(browser, stack, partners, staff, "oidcproxy")
        # Signed in with partners again (OP 2's session is gone: its login form).
        await self.sign_in(browser, stack, partners)

        await self.log_out(browser, stack, staff, "")
        self.assertEqual(self.end_sessions(stack), (1, 1))
        await self.assertOnlyOneEnded(browser, stack, staff, partners, f"oidcproxy-{PARTNERS}")

    async def test_partners_first_cookie(self) -> None:
        """Cookie sessions, partners signed in first: each logout ends its provider's only."""
        await self.both_then_log_out_each("cookie", PARTNERS)

    async def test_default_first_cookie(self) -> None:
        """Cookie sessions, [oidc] signed in first: each logout ends its provider's only."""
        await self.both_then_log_out_each("cookie", "oidc")

    async def test_partners_first_redis(self) -> None:
        """Redis sessions, partners signed in first: each logout ends its provider's only."""
        await self.both_then_log_out_each("redis", PARTNERS)

    async def test_default_first_redis(self) -> None:
        """Redis sessions, [oidc] signed in first: each logout ends its provider's only."""
        await self.both_then_log_out_each("redis", "oidc")


class ChooserTests(TestCase, TwoProvidersMixin):
    """The route C{/shared} with C{providers = ["oidc", "partners"]}."""

    timeout = 120

    async def choose(self, store: str, name: str) -> None:
        """
        A fresh browser asks for the shared page and gets the sign-in page
        with one button per provider; the button of C{name} logs in at its
        OP, and the browser lands on the shared page served to that OP's user.
        """
        require_chromium()
        stack = await start_two_providers(self, store)
        side = stack.sides()[name]
        browser = await Browser.start(self)
        proxy = stack.proxy
        await browser.get(proxy.url + SHARED)
        target = quote(SHARED, safe="")
        self.assertEqual(sorted(await hrefs(browser, "main a.button")), [
            f"{proxy.url}/oidc/login?rd={target}",
            f"{proxy.url}/oidc/login?rd={target}&provider={PARTNERS}",
        ])
        selector = (f"main a.button[href*='provider={PARTNERS}']" if name == PARTNERS
                    else "main a.button:not([href*='provider='])")
        await browser.click(selector)
        await browser.log_in_at_op(side.op, side.user["login"])
        echo = await browser.json_page(proxy.url + SHARED)
        self.assertServed(echo, "/echo" + SHARED, side.user, side.op)

    async def test_partners_button(self) -> None:
        """The partners button: a login at OP 2, back on the shared page as bob."""
        await self.choose("cookie", PARTNERS)

    async def test_default_button_redis(self) -> None:
        """[oidc]'s button (Redis sessions): a login at OP 1, back on the shared page as alice."""
        await self.choose("redis", "oidc")

    async def test_login_link_skips_the_chooser(self) -> None:
        """
        C{/oidc/login?provider=partners&rd=<the shared page>} goes straight
        to OP 2 and back to the page, served to OP 2's user; an API client
        on the shared page gets 401 naming both issuers.
        """
        stack = await start_two_providers(self, "cookie")
        proxy = stack.proxy
        client = WebClient(self)
        url = f"{proxy.url}/oidc/login?" + urlencode({"provider": PARTNERS, "rd": SHARED})
        response, body, final_url, _ = await browse(client, url, fill_login(BOB["login"]))
        self.assertEqual(response.code, 200, f"{body[:500]!r}\n{client.history}")
        self.assertEqual(final_url, proxy.url + SHARED)
        self.assertEqual(sorted({url.split("/")[2] for _, url, _ in client.history}),
                         sorted({urlsplit(proxy.url).netloc, urlsplit(stack.op2.issuer).netloc}),
                         client.history)
        self.assertServed(json.loads(body), "/echo" + SHARED, BOB, stack.op2)

        response, body = await WebClient(self).request("GET", proxy.url + SHARED, headers=API)
        self.assertEqual(response.code, 401, body[:300])
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [
            f'Bearer realm="oidcproxy", issuers="{stack.op1.issuer} {stack.op2.issuer}"'
            .encode("ascii")])
