"""
The identity-provider rows of the fault matrix: the real OP (panva's
C{oidc-provider}, with its fault-test hooks: a token endpoint that stalls,
a JWKS endpoint that fails) and a real C{twistd oidcproxy}.

Already covered elsewhere: an unreachable IdP over TLS at start
(L{tests.integration.test_tls}); refresh with the real OP and one refresh
grant for 50 requests across two proxies
(L{tests.integration.test_sessions_redis}); token-endpoint errors, JWKS
refetch throttling and discovery retries on fakes (L{tests.test_provider}).
"""

from __future__ import annotations

import json
import time
from typing import Optional, cast

from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.faults import (
    COOKIE,
    FaultStack,
    LoggedIn,
    WebClient,
    api_get,
    identity_of,
    launch_proxy,
    log_in,
    report,
    start_fault_stack,
    until_callback,
)
from tests.integration.stack import (
    CLIENT_ID,
    NAVIGATE,
    PROTECTED,
    OpenIDProvider,
    location_of,
    proxy_config,
    reserve_port,
    session_secrets,
    start_op,
)

MODULE = "idp"
IDP_TIMEOUT = 1.0
"""The proxies' C{oidc.timeout} here, in seconds."""
REFRESH_LEASE = 2 * IDP_TIMEOUT + 5.0
"""The refresh lock's lease the guard sets for that IdP timeout."""
SLACK = 1.5


class IdPFaultTests(TestCase):
    timeout = 90

    async def assertServes(self, client: WebClient, proxy: procs.Proxy, s: LoggedIn,
                           what: str) -> None:
        response, body = await api_get(client, proxy, s.cookie)
        self.assertEqual(response.code, 200, f"{what}: {body[:300]!r}")
        self.assertEqual(identity_of(body), [s.user], what)

    async def restart_op(self, stack: FaultStack) -> None:
        """The OP stopped and started again on its port: same client, a new signing key."""
        old = stack.op
        await old.child.stop()
        stack.op = await start_op(self, [stack.public_url + "/oidc/callback"],
                                  [stack.public_url + "/"], test_hooks=True, listen_port=old.port,
                                  client_secret=old.client_secret)

    async def test_down_at_start(self) -> None:
        """
        The IdP is down when the proxy starts: the proxy starts anyway;
        a login or a protected page gets 503 (not a 500, not a redirect), a
        public route and the health endpoint answer; once the IdP is up the
        login works without restarting the proxy.
        """
        reserved_op, reserved_proxy = reserve_port(), reserve_port()
        op_port = reserved_op.getsockname()[1]
        reserved_op.close()
        proxy_port = reserved_proxy.getsockname()[1]
        upstream = await procs.start_upstream(self)
        secret = session_secrets()[0]
        absent = OpenIDProvider(cast(procs.Child, None), op_port, CLIENT_ID, secret)
        proxy = await launch_proxy(self, reserved_proxy,
                                   proxy_config(proxy_port, absent, upstream))
        client = WebClient(self)
        for path in ("/oidc/login", PROTECTED):
            response, body = await client.request("GET", proxy.url + path, headers=NAVIGATE,
                                                  keep_cookies=False)
            self.assertEqual(response.code, 503, f"{path}: {body[:300]!r}")
            self.assertIsNone(response.headers.getRawHeaders(b"location"), path)
        response, body = await client.request("GET", proxy.url + "/public/x", keep_cookies=False)
        self.assertEqual(response.code, 200, body[:300])
        response, body = await client.request("GET", proxy.url + "/oidc/health",
                                              keep_cookies=False)
        self.assertEqual(response.code, 200, body[:300])

        op = await start_op(self, [proxy.url + "/oidc/callback"], [proxy.url + "/"],
                            test_hooks=True, listen_port=op_port, client_secret=secret)
        up = time.monotonic()

        async def redirects() -> Optional[bool]:
            response, _ = await client.request("GET", proxy.url + "/oidc/login",
                                               headers=NAVIGATE, keep_cookies=False)
            self.assertIn(response.code, (302, 503))
            return True if response.code == 302 else None

        await procs.poll_async(redirects, 20, interval=0.2, what="the proxy to find the IdP")
        noticed = time.monotonic() - up
        stack = FaultStack(op, upstream, None, [proxy], proxy.url)
        alice = await log_in(self, stack, "user1")
        await self.assertServes(client, proxy, alice, "after the IdP came up")
        report(MODULE, f"down at start: 503 meanwhile; logins {noticed:.2f}s after the IdP "
                       "came up")

    async def test_jwks_failing_with_keys_cached(self) -> None:
        """
        The JWKS endpoint fails (503) after the proxy has loaded the keys,
        and the cached keys expire meanwhile: logins go on working with the
        cached keys, and sessions are served.
        """
        stack = await start_fault_stack(self, oidc={"jwks_cache_ttl": "1s"})
        client = WebClient(self)
        first = await log_in(self, stack, "user1")
        await stack.op_hook(self, "jwks-fail?on=1")
        await procs.sleep(1.5)
        second = await log_in(self, stack, "user2")
        await self.assertServes(client, stack.proxy, second, "a login with the JWKS failing")
        await self.assertServes(client, stack.proxy, first, "an earlier session")
        report(MODULE, "jwks failing: logins go on with the cached keys")

    async def test_key_rotation(self) -> None:
        """
        The OP starts signing with a new key (restarted on its port with a
        fresh key): the next login's ID token has an unknown C{kid}, the proxy
        fetches the new keys and the login works; earlier sessions are
        still served.
        """
        # jwks_min_refresh_interval 1 s: a refetch for an unknown kid within
        # that interval of the last fetch (the start-up load included) is
        # refused by design (tests.test_provider), and the login fails (401)
        # until it has passed; with the 60 s default that is up to a minute.
        stack = await start_fault_stack(self, oidc={"jwks_min_refresh_interval": "1s"})
        client = WebClient(self)
        first = await log_in(self, stack, "user1")
        await procs.sleep(1.0)
        await self.restart_op(stack)
        second = await log_in(self, stack, "user2")
        await self.assertServes(client, stack.proxy, second, "a login with the new key")
        await self.assertServes(client, stack.proxy, first, "a session from the old key")
        report(MODULE, "key rotation: login with the new key works")

    async def test_token_endpoint_hangs_during_callback(self) -> None:
        """
        The token endpoint does not answer when the browser comes back to
        the callback: 504 after the IdP timeout (HTML, no session cookie, no
        500); once it answers again a new navigation logs the user in.
        """
        stack = await start_fault_stack(self, oidc={"timeout": f"{IDP_TIMEOUT:g}s"})
        client = WebClient(self)
        callback = await until_callback(client, stack.proxy.url + PROTECTED, "user3")
        await stack.op_hook(self, "token-stall?seconds=5")
        started = time.monotonic()
        response, body = await client.request("GET", callback, headers=NAVIGATE)
        elapsed = time.monotonic() - started
        await stack.op_hook(self, "token-stall?seconds=0")
        report(MODULE, f"token endpoint hung at the callback: {response.code} after "
                       f"{elapsed:.2f}s")
        self.assertEqual(response.code, 504, body[:300])
        self.assertIn(b"text/html", b"".join(response.headers.getRawHeaders(b"content-type")))
        self.assertLessEqual(elapsed, IDP_TIMEOUT + SLACK)
        self.assertIsNone(client.jar.value(stack.proxy.url, COOKIE))
        again = await log_in(self, stack, "user3")
        await self.assertServes(client, stack.proxy, again, "a new login after the stall")

    async def test_token_endpoint_hangs_during_refresh(self) -> None:
        """
        The token endpoint stalls when a session's access token is due for
        refresh: while the old access token is valid the request is served
        with it (after the IdP timeout); once it has expired the answer is a
        503 (not a 401, not a login redirect, the cookie kept); when the
        endpoint answers again the session is refreshed and served, without
        a new login.
        """
        stack = await start_fault_stack(
            self, oidc={"timeout": f"{IDP_TIMEOUT:g}s"},
            session={"refresh_leeway": "3s"}, access_token_ttl=5)
        op = stack.op
        client = WebClient(self)
        alice = await log_in(self, stack, "user4")
        logged_in = time.monotonic()
        await stack.op_hook(self, "token-stall?seconds=30")
        await procs.sleep(max(0.0, logged_in + 2.3 - time.monotonic()))
        started = time.monotonic()
        await self.assertServes(client, stack.proxy, alice, "refresh stalled, token valid")
        timed_out_at = time.monotonic()
        valid_elapsed = timed_out_at - started
        await procs.sleep(max(0.0, logged_in + 5.5 - time.monotonic()))
        for navigate in (False, True):
            response, body = await api_get(client, stack.proxy, alice.cookie, navigate=navigate,
                                           path=PROTECTED if navigate else "/some/api")
            self.assertEqual(response.code, 503, body[:300])
            self.assertIsNone(response.headers.getRawHeaders(b"location"))
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        await stack.op_hook(self, "token-stall?seconds=0")
        # The grant that timed out may have been carried out by the IdP: the
        # same refresh token is not sent again until the refresh lease is over.
        response, body = await api_get(client, stack.proxy, alice.cookie, path="/some/api")
        self.assertEqual(response.code, 503, body[:300])
        await procs.sleep(max(0.0, timed_out_at + REFRESH_LEASE - time.monotonic()))
        await self.assertServes(client, stack.proxy, alice, "after the stall")
        grants = op.events("grant.success", "refresh_token")
        report(MODULE, f"token endpoint hung at refresh: served with the valid token after "
                       f"{valid_elapsed:.2f}s, then 503, then refreshed "
                       f"({len(grants)} refresh grants)")
        self.assertLessEqual(valid_elapsed, IDP_TIMEOUT + SLACK)
        self.assertEqual(len(grants), 1, stack.describe())

    async def test_invalid_grant_on_refresh(self) -> None:
        """
        The refresh token has expired at the OP (C{invalid_grant}): the
        session ends: an API call gets 401 and the cookie is cleared, a
        navigation is sent to the OP's login.
        """
        stack = await start_fault_stack(self, session={"refresh_leeway": "1s"},
                                        access_token_ttl=2, refresh_token_ttl=2)
        client = WebClient(self)
        alice = await log_in(self, stack, "user5")
        await procs.sleep(2.5)
        response, body = await api_get(client, stack.proxy, alice.cookie)
        self.assertEqual(response.code, 401, body[:300])
        self.assertEqual(json.loads(body)["error"], "unauthenticated")
        cleared = [v for v in response.headers.getRawHeaders(b"set-cookie", [])
                   if v.startswith(b"oidcproxy=") and b"max-age=0" in v.lower()]
        self.assertTrue(cleared, response.headers.getRawHeaders(b"set-cookie"))
        response, _ = await api_get(client, stack.proxy, alice.cookie, navigate=True,
                                    path=PROTECTED)
        self.assertEqual(response.code, 302)
        self.assertTrue(location_of(response, stack.proxy.url).startswith(
            stack.op.issuer + "/auth?"))
        errors = stack.op.events("grant.error", "refresh_token", "invalid_grant")
        self.assertGreaterEqual(len(errors), 1, stack.describe())
        report(MODULE, "invalid_grant on refresh: 401 and the cookie cleared; navigation 302")

