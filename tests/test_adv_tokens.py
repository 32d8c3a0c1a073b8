"""
Adversarial suite, class 5: tokens, end to end.

One table of hostile JWTs (L{CASES}: signatures, C{alg: none} in every case,
HMAC with the RSA public key or the client secret, algorithms outside the
allow-list, C{jwk}/C{jku}/C{x5u}/C{x5c}/C{crit} headers, hostile C{kid}s,
every claim wrong or missing, the leeway one second either side, malformed
JWTs) goes through every path that takes a token:

  - ID tokens at the callback (the IdP's token response carries it);
  - ID tokens at a refresh;
  - access tokens on a bearer route;
  - logout tokens at back-channel logout.

Refused means the path's clean answer (401 at the callback and for API
clients, 400 for logout tokens), no session and nothing upstream; accepted
controls prove the table is not vacuous. Every request is checked to have
been answered (the Clock never moves on its own: a hang fails the test).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Callable, Dict, FrozenSet, List, Tuple
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm, get_default_algorithms
from twisted.trial.unittest import SynchronousTestCase

from .adversarial import (
    API,
    CLIENT_ID,
    CLIENT_SECRET,
    ISSUER,
    Failures,
    casings,
    parse_response,
)
from .fakes import SESSION_COOKIE, ProxyStack, make_config
from .idp import KEY_ID, SIGNING_KEY

ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
LEEWAY = 60
NEAR_EXPIRY = 300 - 60 + 1

CALLBACK, REFRESH, BEARER, LOGOUT = "callback", "refresh", "bearer", "logout"
ALL: FrozenSet[str] = frozenset({CALLBACK, REFRESH, BEARER, LOGOUT})
ID = frozenset({CALLBACK, REFRESH})
ID_BEARER = frozenset({CALLBACK, REFRESH, BEARER})
ID_LOGOUT = frozenset({CALLBACK, REFRESH, LOGOUT})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def assemble(header: Any, payload: Any, signature: bytes = b"") -> str:
    """A compact JWS from raw parts (no checks at all)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return b64(h) + "." + b64(p) + "." + b64(signature)


def sign(claims: Any, key: Any = SIGNING_KEY, alg: str = "RS256", **header: Any) -> str:
    headers = {"kid": KEY_ID}
    headers.update(header)
    for name in [k for k, v in headers.items() if v is DROP]:
        del headers[name]
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    # Signed by hand: pyjwt would refuse to write some of these headers.
    head = {"alg": alg, "typ": "JWT", **headers}
    signing_input = (b64(json.dumps(head).encode()) + "." + b64(payload)).encode("ascii")
    algorithm = get_default_algorithms()[alg]
    return signing_input.decode("ascii") + "." + b64(algorithm.sign(signing_input, key))


def hmac_signed(claims: Dict[str, Any], secret: bytes, alg: str = "HS256",
                **header: Any) -> str:
    head = {"alg": alg, "typ": "JWT", **header}
    signing_input = (b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return signing_input.decode() + "." + b64(hmac.new(secret, signing_input, digest).digest())


DROP = object()
PUBLIC_PEM = SIGNING_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
ATTACKER_JWK = json.loads(RSAAlgorithm.to_jwk(ATTACKER.public_key()))


def with_claims(**changes: Any) -> Callable[[Dict[str, Any]], str]:
    def forge(claims: Dict[str, Any]) -> str:
        claims = dict(claims)
        for name, value in changes.items():
            if value is DROP:
                claims.pop(name, None)
            elif callable(value):
                claims[name] = value(claims)
            else:
                claims[name] = value
        return sign(claims)
    return forge


def now_plus(delta: int) -> Callable[[Dict[str, Any]], int]:
    """A time claim C{delta} seconds from the token's own C{iat} (the Clock's now)."""
    return lambda claims: int(claims["iat"]) + delta


def flip_signature(claims: Dict[str, Any]) -> str:
    head, body, sig = sign(claims).split(".")
    middle = len(sig) // 2
    return ".".join([head, body, sig[:middle] + ("A" if sig[middle] != "A" else "B") + sig[middle + 1:]])


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


Forge = Callable[[Dict[str, Any]], str]
Case = Tuple[str, Forge, FrozenSet[str], bool]
"""(label, forge from valid claims, the paths it applies to, accepted)."""


def cases() -> List[Case]:
    out: List[Case] = [
        ("valid", sign, ALL, True),
        ("kid absent, one key", lambda c: sign(c, kid=DROP), ALL, True),
        ("bad signature", flip_signature, ALL, False),
        ("signed by another key, our kid", lambda c: sign(c, ATTACKER), ALL, False),
        ("signed by another key, its kid", lambda c: sign(c, ATTACKER, kid="attacker"), ALL, False),
        ("empty signature", lambda c: sign(c).rsplit(".", 1)[0] + ".", ALL, False),
    ]
    for spelled in casings("none", count=6):
        out.append((f"alg {spelled}", lambda c, a=spelled: assemble({"alg": a, "kid": KEY_ID}, c),
                    ALL, False))
        out.append((f"alg {spelled} with a signature",
                    lambda c, a=spelled: assemble({"alg": a}, c, b"sig"), ALL, False))
    for alg in ("HS256", "HS384", "HS512"):
        out.append((f"{alg} with the RSA public key",
                    lambda c, a=alg: hmac_signed(c, PUBLIC_PEM, a, kid=KEY_ID), ALL, False))
        out.append((f"{alg} with the client secret",
                    lambda c, a=alg: hmac_signed(c, CLIENT_SECRET.encode(), a), ALL, False))
        out.append((f"{alg} with the JWK's n", lambda c, a=alg: hmac_signed(
            c, ATTACKER_JWK["n"].encode(), a, kid=KEY_ID), ALL, False))
    for alg in ("RS384", "RS512", "PS256", "PS512"):
        out.append((f"{alg} (not allowed)", lambda c, a=alg: sign(c, alg=a), ALL, False))
    out += [
        ("ES256 (not allowed)", lambda c: sign(c, EC_KEY, "ES256", kid="ec"), ALL, False),
        ("EdDSA (not allowed)", lambda c: sign(c, ED_KEY, "EdDSA", kid="ed"), ALL, False),
        ("unknown alg", lambda c: assemble({"alg": "XS256", "kid": KEY_ID}, c, b"x"), ALL, False),
        ("alg not a string", lambda c: assemble({"alg": ["RS256"], "kid": KEY_ID}, c, b"x"), ALL,
         False),
        ("embedded jwk", lambda c: sign(c, ATTACKER, jwk=ATTACKER_JWK, kid=DROP), ALL, False),
        ("embedded jwk, our kid", lambda c: sign(c, ATTACKER, jwk=ATTACKER_JWK), ALL, False),
        ("jku", lambda c: sign(c, ATTACKER, jku="https://evil.test/jwks", kid="attacker"), ALL,
         False),
        ("x5u", lambda c: sign(c, ATTACKER, x5u="https://evil.test/cert.pem", kid=DROP), ALL,
         False),
        ("x5c", lambda c: sign(c, ATTACKER, x5c=[b64(b"not a certificate")], kid=DROP), ALL, False),
        ("crit", lambda c: sign(c, crit=["exp"]), ALL, False),
        ("crit empty", lambda c: sign(c, crit=[]), ALL, False),
    ]
    for kid in ("../../../../etc/passwd", "' OR '1'='1", "a" * 300, "", "\u0000", KEY_ID + " ",
                KEY_ID.upper(), "attacker", "https://evil.test/key"):
        out.append((f"kid {kid[:20]!r}", lambda c, k=kid: sign(c, kid=k), ALL, False))
    for kid in (123, None, ["x"], {"a": 1}, True):
        out.append((f"kid {kid!r}", lambda c, k=kid: sign(c, kid=k), ALL, False))
    out += [
        ("iss missing", with_claims(iss=DROP), ALL, False),
        ("iss other", with_claims(iss="https://evil.test"), ALL, False),
        ("iss trailing slash", with_claims(iss=ISSUER + "/"), ALL, False),
        ("iss upper case", with_claims(iss=ISSUER.upper()), ALL, False),
        ("iss list", with_claims(iss=[ISSUER]), ALL, False),
        ("aud missing", with_claims(aud=DROP), ALL, False),
        ("aud other", with_claims(aud="other"), ALL, False),
        ("aud empty list", with_claims(aud=[]), ALL, False),
        ("aud list without us", with_claims(aud=["other", "more"]), ALL, False),
        ("aud number", with_claims(aud=123), ALL, False),
        ("aud list, no azp", with_claims(aud=[CLIENT_ID, "other"]), ID, False),
        ("azp other", with_claims(aud=[CLIENT_ID, "other"], azp="other"), ID, False),
        ("azp other, one aud", with_claims(azp="other"), ID, False),
        ("nonce missing", with_claims(nonce=DROP), frozenset({CALLBACK}), False),
        ("nonce wrong", with_claims(nonce="attacker"), frozenset({CALLBACK}), False),
        ("nonce number", with_claims(nonce=1), frozenset({CALLBACK}), False),
        ("sub missing", with_claims(sub=DROP), ID, False),
        ("sub empty", with_claims(sub=""), ID_LOGOUT, False),
        ("sub number", with_claims(sub=123), ID_LOGOUT, False),
        ("sub too long", with_claims(sub="s" * 300), ID_LOGOUT, False),
        ("iat missing", with_claims(iat=DROP), ID_LOGOUT, False),
        ("iat string", with_claims(iat="now"), ALL, False),
        ("iat bool", with_claims(iat=True), ALL, False),
        ("iat future beyond leeway", with_claims(iat=now_plus(LEEWAY + 1)), ALL, False),
        ("iat future within leeway", with_claims(iat=now_plus(LEEWAY - 1)), ALL, True),
        ("exp missing", with_claims(exp=DROP), ID_BEARER, False),
        ("exp string", with_claims(exp="later"), ALL, False),
        ("exp past beyond leeway", with_claims(exp=now_plus(-LEEWAY - 1)), ALL, False),
        ("exp past within leeway", with_claims(exp=now_plus(-LEEWAY + 1)), ALL, True),
        ("exp NaN-ish huge", lambda c: sign(json.dumps(c)[:-1].encode() + b', "exp": 1e400}'),
         ALL, False),
        ("nbf future beyond leeway", with_claims(nbf=now_plus(LEEWAY + 1)), ALL, False),
        ("nbf future within leeway", with_claims(nbf=now_plus(LEEWAY - 1)), ALL, True),
        ("nbf string", with_claims(nbf="soon"), ALL, False),
        ("two segments", lambda c: ".".join(sign(c).split(".")[:2]), ALL, False),
        ("four segments", lambda c: sign(c) + ".e30", ALL, False),
        ("one segment", lambda c: sign(c).replace(".", ""), ALL, False),
        ("bad base64", lambda c: "!!!." + sign(c).split(".", 1)[1], ALL, False),
        ("padded base64", lambda c: sign(c).split(".")[0] + "==." + sign(c).split(".", 1)[1], ALL,
         False),
        ("payload a list", lambda c: sign(b"[1, 2]"), ALL, False),
        ("payload a string", lambda c: sign(b'"text"'), ALL, False),
        ("payload null", lambda c: sign(b"null"), ALL, False),
        ("payload not JSON", lambda c: sign(b"\xff\xfe"), ALL, False),
        ("duplicate claim", lambda c: sign(json.dumps(c)[:-1].encode() + b', "sub": "admin"}'), ALL,
         False),
        ("header a list", lambda c: assemble(b'["RS256"]', c, b"x"), ALL, False),
        ("deeply nested header", lambda c: assemble(nested(100_000), c, b"x"), ALL, False),
        ("deeply nested payload", lambda c: sign(nested(50_000)), ALL, False),
        ("deeply nested claim", lambda c: sign(json.dumps(c)[:-1].encode() + b', "x": '
                                                + nested(50_000) + b"}"), ALL, False),
        ("1 MB token", lambda c: sign(dict(c, pad="p" * 1_000_000)), ALL, False),
        ("not ASCII", lambda c: sign(c) + "\u00e9", ALL, False),
    ]
    return out


CASES = cases()


def logout_claims(stack: ProxyStack, jti: str) -> Dict[str, Any]:
    now = int(stack.clock.seconds())
    return {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "jti": jti, "sub": "user-1",
            "sid": "sid-1", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}


def access_claims(stack: ProxyStack) -> Dict[str, Any]:
    now = int(stack.clock.seconds())
    return {"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now, "exp": now + 300,
            "scope": "read"}


def expected(path: str, accepted: bool, label: str) -> Tuple[int, ...]:
    if accepted:
        return {CALLBACK: (302,), REFRESH: (200,), BEARER: (200,), LOGOUT: (200,)}[path]
    if path == BEARER and label.startswith(("1 MB", "deeply nested")):
        # Over the site's header limit in an Authorization header: 431.
        return (431,)
    if label == "1 MB token":
        # The IdP's answer is over oidc.max_response_size: a failed login (502),
        # or a refresh that failed (the old tokens are still good).
        return {CALLBACK: (401, 502), REFRESH: (200, 401), LOGOUT: (400,)}[path]
    return {CALLBACK: (401,), REFRESH: (401,), BEARER: (401,), LOGOUT: (400,)}[path]


class TokenTableTests(SynchronousTestCase):
    def run_path(self, path: str, attempt: Callable[[ProxyStack, Forge, int], Tuple[int, bool]],
                 stack: ProxyStack) -> None:
        failures = Failures(self, f"tokens at the {path}")
        for index, (label, forge, paths, accepted) in enumerate(CASES):
            if path not in paths:
                continue
            before = len(stack.upstream.requests)
            status, clean = attempt(stack, forge, index)
            reached = len(stack.upstream.requests) - before
            want = expected(path, accepted, label)
            # (A refresh and a logout are checked with a request of the session afterwards.)
            ok = status in want and clean and (accepted or path in (REFRESH, LOGOUT) or reached == 0)
            failures.check(ok, label, path, f"{status} (expected {want}), clean: {clean}, "
                           f"upstream requests: {reached}")
        failures.done(60)

    def test_callback(self):
        """ID tokens at the callback: refused ones give 401 and no session cookie."""
        stack = ProxyStack(self)
        browser = stack.browser()

        def attempt(stack: ProxyStack, forge: Forge, _: int) -> Tuple[int, bool]:
            browser.jar.clear()
            stack.idp.forge = None
            start = browser.navigate("/x")
            from .idp import authorize_params

            params = authorize_params(start)
            code = stack.idp.issue_code(nonce=params["nonce"],
                                        code_verifier_challenge=params["code_challenge"])
            stack.idp.forge = forge
            page = browser.navigate("/oidc/callback?" + urlencode(
                {"code": code, "state": params["state"]}))
            stack.idp.forge = None
            got_session = SESSION_COOKIE in browser.jar
            return page.code, got_session == (page.code == 302)

        self.run_path(CALLBACK, attempt, stack)

    def test_refresh(self):
        """ID tokens at a refresh: a refused one ends the session (401), never a 500."""
        stack = ProxyStack(self, memory_store=True)
        browser = stack.browser()

        def attempt(stack: ProxyStack, forge: Forge, _: int) -> Tuple[int, bool]:
            browser.jar.clear()
            stack.idp.forge = None
            stack.login(browser)
            stack.clock.advance(NEAR_EXPIRY)
            stack.idp.forge = forge
            page = browser.get("/x", headers=API)
            stack.idp.forge = None
            if page.code == 401:
                # The session is over for good, not just this request.
                again = browser.get("/x", headers=API)
                return page.code, again.code == 401
            return page.code, True

        self.run_path(REFRESH, attempt, stack)

    def test_bearer(self):
        """Access tokens on a bearer route: refused ones get 401 with a Bearer challenge."""
        stack = ProxyStack(self)
        browser = stack.browser()

        def attempt(stack: ProxyStack, forge: Forge, _: int) -> Tuple[int, bool]:
            token = forge(access_claims(stack))
            if len(token) > 60_000:
                out = stack.raw(b"GET /api/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer "
                                + token.encode("ascii") + b"\r\n\r\n")
                return parse_response(out)[0], True
            page = browser.get("/api/x", headers={
                b"authorization": [b"Bearer " + token.encode("utf-8", "replace")],
                b"accept": [b"application/json"]})
            challenge = page.header(b"www-authenticate") or b""
            return page.code, page.code == 200 or challenge.startswith(b"Bearer ")

        self.run_path(BEARER, attempt, stack)

    def test_backchannel_logout(self):
        """Logout tokens: refused ones get 400 and end no session."""
        stack = ProxyStack(self, memory_store=True)
        browser = stack.browser()
        poster = stack.browser()

        def attempt(stack: ProxyStack, forge: Forge, index: int) -> Tuple[int, bool]:
            browser.jar.clear()
            stack.login(browser, claims={"sid": "sid-1"})
            token = forge(logout_claims(stack, f"jti-{index}"))
            page = poster.request(b"POST", "/oidc/backchannel-logout", headers={
                b"content-type": [b"application/x-www-form-urlencoded"]},
                body=urlencode({"logout_token": token}).encode())
            still = browser.get("/x", headers=API).code
            return page.code, still == (401 if page.code == 200 else 200)

        self.run_path(LOGOUT, attempt, stack)


class KeyChoiceTests(SynchronousTestCase):
    def test_kid_absent_with_several_keys(self):
        """Without a kid and with several keys of the same type, every token is refused."""
        other = json.loads(RSAAlgorithm.to_jwk(ATTACKER.public_key()))
        other.update({"kid": "second", "use": "sig", "alg": "RS256"})
        stack = ProxyStack(self, jwks_extra=[other])
        no_kid = sign(access_claims(stack), kid=DROP)
        page = stack.browser().get("/api/x", headers={b"authorization": [b"Bearer " + no_kid.encode()],
                                                      b"accept": [b"application/json"]})
        self.assertEqual(page.code, 401)
        good = sign(access_claims(stack))
        page = stack.browser().get("/api/x", headers={b"authorization": [b"Bearer " + good.encode()],
                                                      b"accept": [b"application/json"]})
        self.assertEqual(page.code, 200)
        browser = stack.browser()
        stack.idp.forge = lambda c: sign(c, kid=DROP)
        page = stack.login(browser)
        self.assertEqual(page.code, 401)

    def test_userinfo_other_subject(self):
        """UserInfo about another sub than the ID token's: the login fails (401)."""
        stack = ProxyStack(self, config=make_config(oidc={"userinfo": True}))
        page = stack.login(stack.browser(), userinfo_claims={"sub": "someone-else"})
        self.assertEqual(page.code, 401)
        self.assertTrue(all(c.deletes for c in page.set_cookies if c.name == SESSION_COOKIE))

    def test_refresh_for_another_subject(self):
        """A refresh answering with an ID token of another sub ends the session."""
        stack = ProxyStack(self, memory_store=True)
        browser = stack.logged_in()
        stack.idp.refresh_sub = "someone-else"
        stack.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(stack.upstream.requests, [])

    def test_table_size(self):
        """The table holds every class of issue 8 item 5."""
        self.assertGreater(len(CASES), 100)
        self.assertEqual(sum(1 for _, _, _, accepted in CASES if accepted), 5)
