"""
Tests for L{oidcproxy.oidc.provider}: discovery, the JWKS cache, the token,
userinfo and revocation endpoints, the RP-initiated logout URL, and the HTTP
client.

A fake identity provider (a twisted.web resource) is reached through treq's
C{StubTreq}; time is a L{Clock}. Nothing touches the network and nothing
sleeps: a hanging answer is a resource that returns C{NOT_DONE_YET}, and the
Clock is advanced past the deadline.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from oidcproxy.oidc import jwks as jwks_module
from oidcproxy.oidc import provider as provider_module
from oidcproxy.oidc import transport as transport_module
from oidcproxy.oidc.provider import (
    ClientAuth,
    Provider,
    ProviderError,
    ProviderMetadata,
    make_http_client,
)
from oidcproxy.oidc.tokens import KeySet

from .fakes import ProviderStack

ISSUER = "https://idp.test/realms/main"
BASE = ISSUER
TOKEN_ENDPOINT = BASE + "/protocol/token"
JWKS_URI = BASE + "/protocol/certs"
USERINFO_ENDPOINT = BASE + "/protocol/userinfo"
REVOCATION_ENDPOINT = BASE + "/protocol/revoke"
END_SESSION_ENDPOINT = BASE + "/protocol/logout"
AUTHORIZATION_ENDPOINT = BASE + "/protocol/auth"
DISCOVERY_PATH = b"/realms/main/.well-known/openid-configuration"
JWKS_PATH = b"/realms/main/protocol/certs"
TOKEN_PATH = b"/realms/main/protocol/token"
USERINFO_PATH = b"/realms/main/protocol/userinfo"
REVOCATION_PATH = b"/realms/main/protocol/revoke"

CLIENT_ID = "a:b"
CLIENT_SECRET = "p@ss w%rd"  # noqa: S105 - a test value that needs form-encoding
CODE = "the-code-4711"
VERIFIER = "v" * 43
REDIRECT_URI = "https://app.test/oidc/callback"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: rsa.RSAPrivateKey, kid: str) -> Dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return jwk


def _pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# Generated once: 2048-bit keys are slow to make (worst on PyPy). Never mutated.
KEY_A = _rsa_key()
KEY_B = _rsa_key()
CLIENT_KEY = _rsa_key()
JWK_A = _public_jwk(KEY_A, "kid-a")
JWK_B = _public_jwk(KEY_B, "kid-b")


def discovery_document(**changes: Any) -> Dict[str, Any]:
    document: Dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": AUTHORIZATION_ENDPOINT,
        "token_endpoint": TOKEN_ENDPOINT,
        "jwks_uri": JWKS_URI,
        "userinfo_endpoint": USERINFO_ENDPOINT,
        "end_session_endpoint": BASE + "/protocol/logout",
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "authorization_response_iss_parameter_supported": True,
        "response_types_supported": ["code"],
    }
    for name, value in changes.items():
        if value is _DROP:
            document.pop(name, None)
        else:
            document[name] = value
    return document


_DROP = object()

TOKENS = {
    "access_token": "AT-1",
    "token_type": "Bearer",
    "id_token": "ID.TOKEN.1",
    "expires_in": 300,
    "refresh_token": "RT-1",
    "scope": "openid email",
}

HOLD = "hold"
"""A handler result: keep the request open (the IdP hangs)."""

Answer = Tuple[int, Any, str]


def answer(body: Any, code: int = 200, content_type: str = "application/json") -> Answer:
    return (code, body, content_type)


class Seen:
    """One request as the fake IdP received it."""

    def __init__(self, request: Any, body: bytes) -> None:
        self.method: bytes = request.method
        self.path: bytes = request.path
        self.uri: bytes = request.uri
        self.args: Dict[bytes, List[bytes]] = dict(request.args) if request.method == b"GET" else {}
        self.body = body
        self.headers: Dict[bytes, List[bytes]] = {
            name.lower(): list(values) for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.lost = False

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def form(self) -> List[Tuple[str, str]]:
        return parse_qsl(self.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


class FakeIdP(Resource):
    """
    An identity provider: discovery, JWKS, token and userinfo endpoints,
    each answered by a replaceable handler; records every request.
    """

    isLeaf = True

    def __init__(self, clock: Any = None) -> None:
        super().__init__()
        self.seen: List[Seen] = []
        self.held: List[Any] = []
        self.handlers: Dict[bytes, Callable[[Any], Any]] = {
            DISCOVERY_PATH: lambda request: answer(discovery_document()),
            JWKS_PATH: lambda request: answer({"keys": [JWK_A]}),
            TOKEN_PATH: lambda request: answer(TOKENS),
            USERINFO_PATH: lambda request: answer({"sub": "user-1", "email": "u@example.test"}),
            REVOCATION_PATH: lambda request: answer(b"", content_type=""),
        }

    def render(self, request: Any) -> Any:
        seen = Seen(request, request.content.read())
        self.seen.append(seen)
        handler = self.handlers.get(request.path)
        if handler is None:
            request.setResponseCode(404)
            return b"not found"
        result = handler(request)
        if result is NOT_DONE_YET:  # the handler answers by itself
            return NOT_DONE_YET
        if result == HOLD:
            def lost(_: Any) -> None:
                seen.lost = True

            request.notifyFinish().addErrback(lost)
            self.held.append(request)
            return NOT_DONE_YET
        code, body, content_type = result
        request.setResponseCode(code)
        if content_type:
            request.setHeader(b"content-type", content_type.encode("ascii"))
        if isinstance(body, bytes):
            return body
        return json.dumps(body).encode("utf-8")

    def count(self, path: bytes) -> int:
        return sum(1 for s in self.seen if s.path == path)

    def last(self, path: bytes) -> Seen:
        return [s for s in self.seen if s.path == path][-1]

    def release(self, body: Any) -> None:
        """Answer every held request with C{body} (JSON)."""
        held, self.held = self.held, []
        for request in held:
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(body).encode("utf-8"))
            request.finish()


def provider_stack(client: Optional[ClientAuth] = None, **kwargs: Any) -> ProviderStack:
    """
    The IdP client part of the fixture stack over this module's L{FakeIdP}:
    for L{ISSUER} (unless told) as L{CLIENT_ID} (unless C{client} is given).
    """
    kwargs.setdefault("issuer", ISSUER)
    return ProviderStack(FakeIdP, client=client or ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET),
                         **kwargs)


def capture_logs(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    """What the provider's modules log from now on (kept from the global log, and from trial)."""
    events: List[Dict[str, Any]] = []
    for module in (provider_module, transport_module, jwks_module):
        case.patch(module, "log", Logger(namespace=module.__name__, observer=events.append))
    return events


def logged_text(events: List[Dict[str, Any]]) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in events)


# -- metadata ----------------------------------------------------------------


class MetadataTests(SynchronousTestCase):
    def test_from_discovery(self):
        """Every field we use is taken; lists become tuples; unknown members are ignored."""
        md = ProviderMetadata.from_discovery(discovery_document(), ISSUER)
        self.assertEqual(md.issuer, ISSUER)
        self.assertEqual(md.authorization_endpoint, AUTHORIZATION_ENDPOINT)
        self.assertEqual(md.token_endpoint, TOKEN_ENDPOINT)
        self.assertEqual(md.jwks_uri, JWKS_URI)
        self.assertEqual(md.userinfo_endpoint, USERINFO_ENDPOINT)
        self.assertEqual(md.end_session_endpoint, BASE + "/protocol/logout")
        self.assertIsNone(md.revocation_endpoint)
        self.assertEqual(md.id_token_signing_alg_values_supported, ("RS256", "ES256"))
        self.assertEqual(md.code_challenge_methods_supported, ("plain", "S256"))
        self.assertTrue(md.authorization_response_iss_parameter_supported)

    def test_defaults(self):
        """Optional members absent (or null): the documented defaults."""
        md = ProviderMetadata.from_discovery(
            discovery_document(
                userinfo_endpoint=None,
                end_session_endpoint=_DROP,
                id_token_signing_alg_values_supported=_DROP,
                code_challenge_methods_supported=_DROP,
                authorization_response_iss_parameter_supported=_DROP,
            ),
            ISSUER,
        )
        self.assertIsNone(md.userinfo_endpoint)
        self.assertIsNone(md.end_session_endpoint)
        self.assertEqual(md.id_token_signing_alg_values_supported, ("RS256",))
        self.assertEqual(md.code_challenge_methods_supported, ())
        self.assertFalse(md.authorization_response_iss_parameter_supported)

    def test_http_endpoints_accepted(self):
        md = ProviderMetadata.from_discovery(
            discovery_document(issuer="http://localhost:8080", token_endpoint="http://localhost:8080/t"),
            "http://localhost:8080",
        )
        self.assertEqual(md.token_endpoint, "http://localhost:8080/t")

    def test_issuer_mismatch(self):
        """The issuer must be exactly the configured one: not another, not a trailing slash more or less."""
        for document_issuer, expected in [
            ("https://evil.test/realms/main", ISSUER),
            (ISSUER + "/", ISSUER),
            (ISSUER, ISSUER + "/"),
            (ISSUER.upper(), ISSUER),
        ]:
            e = self.assertRaises(
                ProviderError,
                ProviderMetadata.from_discovery,
                discovery_document(issuer=document_issuer),
                expected,
            )
            self.assertEqual((e.status, e.reason), (502, "issuer_mismatch"), document_issuer)

    def test_bad_documents(self):
        """Anything unusable is 502 bad_discovery."""
        bad = [
            [],
            "a string",
            None,
            discovery_document(issuer=_DROP),
            discovery_document(issuer=42),
            discovery_document(token_endpoint=_DROP),
            discovery_document(authorization_endpoint=None),
            discovery_document(jwks_uri=""),
            discovery_document(jwks_uri="ftp://idp.test/certs"),
            discovery_document(token_endpoint="/relative/token"),
            discovery_document(token_endpoint="https:///no-host"),
            discovery_document(token_endpoint="https://idp.test/t#fragment"),
            discovery_document(token_endpoint="https://idp.test/t x"),
            discovery_document(token_endpoint=["https://idp.test/t"]),
            discovery_document(userinfo_endpoint="javascript:alert(1)"),
            discovery_document(end_session_endpoint=7),
            discovery_document(id_token_signing_alg_values_supported="RS256"),
            discovery_document(id_token_signing_alg_values_supported=[]),
            discovery_document(code_challenge_methods_supported=["S256", 1]),
            discovery_document(authorization_response_iss_parameter_supported="true"),
        ]
        for document in bad:
            e = self.assertRaises(ProviderError, ProviderMetadata.from_discovery, document, ISSUER)
            self.assertEqual((e.status, e.reason), (502, "bad_discovery"), document)


class ClientAuthTests(SynchronousTestCase):
    def test_valid(self):
        ClientAuth("c", client_secret="s")
        ClientAuth("c", method="client_secret_post", client_secret="s")
        ClientAuth("c", method="none")
        ClientAuth("c", method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY), private_key_id="k1")
        ClientAuth("c", method="private_key_jwt", private_key_alg="ES256",
                   private_key_pem=_pem(ec.generate_private_key(ec.SECP256R1())))

    def test_invalid(self):
        """A method without what it needs is a ValueError."""
        cases = [
            dict(client_id=""),
            dict(client_id="c", method="client_secret_jwt", client_secret="s"),
            dict(client_id="c"),  # basic without a secret
            dict(client_id="c", method="client_secret_post", client_secret=""),
            dict(client_id="c", method="private_key_jwt"),
            dict(client_id="c", method="private_key_jwt", private_key_pem=b"not a key"),
            dict(client_id="c", method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY),
                 private_key_alg="HS256"),
            dict(client_id="c", method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY),
                 private_key_alg="ES256"),  # an RSA key cannot sign ES256
            dict(client_id="c", method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY),
                 private_key_id=""),
        ]
        for kwargs in cases:
            self.assertRaises(ValueError, ClientAuth, **kwargs)

    def test_repr_hides_secrets(self):
        auth = ClientAuth("c", method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY))
        self.assertNotIn("PRIVATE", repr(auth))
        self.assertNotIn("s3cr3t", repr(ClientAuth("c", client_secret="s3cr3t")))


# -- discovery and start-up --------------------------------------------------


class DiscoveryTests(SynchronousTestCase):
    def test_success(self):
        """start() loads the discovery document, then the JWKS; when_ready fires with the provider."""
        h = provider_stack(start=False)
        ready = h.provider.when_ready()
        self.assertFalse(h.provider.ready)
        self.assertNoResult(ready)
        h.provider.start()
        h.flush()
        self.assertIs(self.successResultOf(ready), h.provider)
        self.assertTrue(h.provider.ready)
        self.assertIs(self.successResultOf(h.provider.when_ready()), h.provider)
        self.assertEqual([s.path for s in h.idp.seen], [DISCOVERY_PATH, JWKS_PATH])
        self.assertEqual(h.idp.seen[0].method, b"GET")
        self.assertEqual(h.idp.seen[0].header(b"accept"), b"application/json")
        self.assertIsNone(h.idp.seen[0].header(b"authorization"))
        md = h.provider.metadata
        assert md is not None
        self.assertEqual(md.token_endpoint, TOKEN_ENDPOINT)
        self.assertEqual(md.userinfo_endpoint, USERINFO_ENDPOINT)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        keys = self.successResultOf(h.run(h.provider.keys_for("kid-a")))
        self.assertTrue(keys.has_kid("kid-a"))

    def test_trailing_slash_issuer(self):
        """An issuer ending in '/' loses exactly that one slash before the well-known path."""
        h = provider_stack(start=False, issuer=ISSUER + "/")
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(discovery_document(issuer=ISSUER + "/"))
        h.provider.start()
        h.flush()
        self.assertTrue(h.provider.ready)
        self.assertEqual(h.idp.seen[0].uri, DISCOVERY_PATH)

    def test_issuer_mismatch_refused(self):
        """A document for another issuer (even one slash off) never makes the provider ready."""
        for document_issuer in ["https://evil.test/realms/main", ISSUER + "/"]:
            events = capture_logs(self)
            h = provider_stack(start=False)
            h.idp.handlers[DISCOVERY_PATH] = lambda r, i=document_issuer: answer(
                discovery_document(issuer=i)
            )
            h.provider.start()
            h.flush()
            self.assertFalse(h.provider.ready)
            self.assertIsNone(h.provider.metadata)
            self.assertEqual(h.idp.count(JWKS_PATH), 0)
            self.assertIn("issuer_mismatch", logged_text(events))
            h.provider.stop()

    def test_bad_discovery_answers(self):
        """Non-JSON, a non-object, an error status or a bad document: not ready, one warning each."""
        cases = [
            (answer(b"<html>hello</html>", content_type="text/html"), "bad_json"),
            (answer(b"\xff\xfe{}"), "bad_json"),
            (answer(b"NaN"), "bad_json"),
            (answer([1, 2]), "bad_discovery"),
            (answer(discovery_document(token_endpoint=_DROP)), "bad_discovery"),
            (answer({"error": "x"}, code=500), "bad_status"),
            (answer(discovery_document(), code=302), "bad_status"),
        ]
        for result, reason in cases:
            events = capture_logs(self)
            h = provider_stack(start=False)
            h.idp.handlers[DISCOVERY_PATH] = lambda r, result=result: result
            h.provider.start()
            h.flush()
            self.assertFalse(h.provider.ready, reason)
            self.assertEqual(len(events), 1, reason)
            self.assertEqual(events[0]["log_level"].name, "warn")
            self.assertIn(reason, logged_text(events))
            h.provider.stop()

    def test_backoff_while_down(self):
        """While the IdP is down, retries come after 1, 2, 4, ... seconds, capped; then it is ready."""
        events = capture_logs(self)
        h = provider_stack(start=False, retry_initial=1.0, retry_max=20.0)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(b"down", code=503, content_type="text/plain")
        ready = h.provider.when_ready()
        h.provider.start()
        h.flush()
        delays = []
        for _ in range(8):
            calls = h.clock.getDelayedCalls()
            self.assertEqual(len(calls), 1)
            delay = calls[0].getTime() - h.clock.seconds()
            delays.append(delay)
            h.clock.advance(delay)
            h.flush()
        self.assertEqual(delays, [1, 2, 4, 8, 16, 20, 20, 20])
        self.assertEqual(h.idp.count(DISCOVERY_PATH), 9)
        self.assertEqual(len(events), 9)
        self.assertNoResult(ready)

        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(discovery_document())
        h.clock.advance(20)
        h.flush()
        self.assertIs(self.successResultOf(ready), h.provider)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.idp.count(DISCOVERY_PATH), 10)
        # Ready: no more requests, whatever the time.
        h.clock.advance(1000)
        h.flush()
        self.assertEqual(h.idp.count(DISCOVERY_PATH), 10)

    def test_unreachable_then_retry(self):
        """A connection failure is 'unreachable' and retried like any other failure."""
        events = capture_logs(self)
        clock = Clock()
        http = FailingHTTP()
        provider = Provider(ISSUER, ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET), http, clock)
        provider.start()
        self.assertEqual(http.calls, 1)
        self.assertIn("unreachable", logged_text(events))
        clock.advance(1)
        self.assertEqual(http.calls, 2)
        provider.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_jwks_failure_retries_only_jwks(self):
        """Once discovery succeeded only the JWKS is retried."""
        h = provider_stack(start=False)
        h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": "nope"})
        h.provider.start()
        h.flush()
        self.assertIsNotNone(h.provider.metadata)
        self.assertFalse(h.provider.ready)
        h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": []})  # no usable key: still not ready
        h.clock.advance(1)
        h.flush()
        self.assertFalse(h.provider.ready)
        h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_A]})
        h.clock.advance(2)
        h.flush()
        self.assertTrue(h.provider.ready)
        self.assertEqual(h.idp.count(DISCOVERY_PATH), 1)
        self.assertEqual(h.idp.count(JWKS_PATH), 3)

    def test_discovery_params(self):
        """discovery_params are query parameters of the discovery request (and only of it)."""
        h = provider_stack(discovery_params={"p": "B2C_1_signin", "x": "a b&c"})
        discovery = h.idp.seen[0]
        self.assertEqual(discovery.path, DISCOVERY_PATH)
        self.assertEqual(discovery.args, {b"p": [b"B2C_1_signin"], b"x": [b"a b&c"]})
        self.assertEqual(h.idp.last(JWKS_PATH).args, {})

    def test_manual_endpoints(self):
        """Without discovery the metadata come from `endpoints` and only the JWKS is fetched."""
        h = provider_stack(
            start=False,
            discovery=False,
            endpoints={
                "authorization_endpoint": AUTHORIZATION_ENDPOINT,
                "token_endpoint": TOKEN_ENDPOINT,
                "jwks_uri": JWKS_URI,
                "issuer": ISSUER,
            },
        )
        md = h.provider.metadata
        assert md is not None
        self.assertEqual((md.issuer, md.token_endpoint, md.jwks_uri), (ISSUER, TOKEN_ENDPOINT, JWKS_URI))
        self.assertIsNone(md.userinfo_endpoint)
        self.assertFalse(h.provider.ready)
        h.provider.start()
        h.flush()
        self.assertTrue(h.provider.ready)
        self.assertEqual([s.path for s in h.idp.seen], [JWKS_PATH])

    def test_manual_endpoints_invalid(self):
        auth = ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET)
        good = {"authorization_endpoint": AUTHORIZATION_ENDPOINT, "token_endpoint": TOKEN_ENDPOINT,
                "jwks_uri": JWKS_URI}
        for endpoints in [
            {},
            {k: v for k, v in good.items() if k != "jwks_uri"},
            dict(good, tokenendpoint=TOKEN_ENDPOINT),
            dict(good, token_endpoint="ftp://idp.test/token"),
            dict(good, issuer=ISSUER + "/"),
            dict(good, code_challenge_methods_supported="S256"),
        ]:
            self.assertRaises(
                ValueError, Provider, ISSUER, auth, StubTreq(FakeIdP()), Clock(),
                discovery=False, endpoints=endpoints,
            )
        self.assertRaises(ValueError, Provider, "not a url", auth, StubTreq(FakeIdP()), Clock())

    def test_endpoints_override_discovery(self):
        other = "https://tokens.test/token"
        h = provider_stack(endpoints={"token_endpoint": other})
        md = h.provider.metadata
        assert md is not None
        self.assertEqual(md.token_endpoint, other)
        self.assertEqual(md.jwks_uri, JWKS_URI)

    def test_stop(self):
        """stop() cancels the retry timer and the request in flight; nothing happens afterwards."""
        h = provider_stack(start=False)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(b"", code=500)
        h.provider.start()
        h.flush()
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.provider.stop()
        self.assertEqual(h.clock.getDelayedCalls(), [])

        h = provider_stack(start=False)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: HOLD
        h.provider.start()
        h.flush()
        self.assertEqual(len(h.idp.held), 1)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # the request deadline
        h.provider.stop()
        h.flush()
        self.assertTrue(h.idp.seen[0].lost)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.clock.advance(100)
        h.flush()
        self.assertEqual(len(h.idp.seen), 1)
        self.assertFalse(h.provider.ready)

    def test_discovery_timeout_retried(self):
        """A hanging discovery request times out, is cancelled, and is retried later."""
        events = capture_logs(self)
        h = provider_stack(start=False, timeout=5.0)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: HOLD
        h.provider.start()
        h.flush()
        h.clock.advance(5)
        h.flush()
        self.assertTrue(h.idp.seen[0].lost)
        self.assertIn("timeout", logged_text(events))
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(discovery_document())
        h.clock.advance(1)
        h.flush()
        self.assertTrue(h.provider.ready)


# -- the JWKS cache ----------------------------------------------------------


class KeysTests(SynchronousTestCase):
    def test_not_ready(self):
        h = provider_stack(start=False)
        f = self.failureResultOf(h.run(h.provider.keys_for("kid-a")), ProviderError)
        self.assertEqual((f.value.status, f.value.reason), (503, "not_ready"))

    def test_ttl(self):
        """Keys are served from the cache until jwks_ttl passes, then refetched."""
        h = provider_stack(jwks_ttl=600.0)
        self.assertEqual(h.idp.count(JWKS_PATH), 1)
        first = self.successResultOf(h.run(h.provider.keys_for(None)))
        h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_B]})
        h.clock.advance(599)
        self.assertIs(self.successResultOf(h.run(h.provider.keys_for("kid-a"))), first)
        self.assertIs(self.successResultOf(h.run(h.provider.keys_for(None))), first)
        self.assertEqual(h.idp.count(JWKS_PATH), 1)
        h.clock.advance(1)
        fresh = self.successResultOf(h.run(h.provider.keys_for(None)))
        self.assertTrue(fresh.has_kid("kid-b"))
        self.assertFalse(fresh.has_kid("kid-a"))
        self.assertEqual(h.idp.count(JWKS_PATH), 2)
        self.assertIs(self.successResultOf(h.run(h.provider.keys_for(None))), fresh)
        self.assertEqual(h.idp.count(JWKS_PATH), 2)

    def test_unknown_kid_flood(self):
        """100 calls with unknown kids: one refetch per jwks_min_refresh interval, no more."""
        h = provider_stack(jwks_min_refresh=60.0)
        h.clock.advance(60)  # the start-up load was a fetch too
        h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_A, JWK_B]})
        results = [h.run(h.provider.keys_for(f"unknown-{i}")) for i in range(100)]
        self.assertEqual(h.idp.count(JWKS_PATH), 2)
        for d in results:
            self.assertTrue(self.successResultOf(d).has_kid("kid-b"))
        # Within the interval: the cache, however many unknown kids.
        h.clock.advance(59)
        for i in range(100):
            self.successResultOf(h.run(h.provider.keys_for(f"again-{i}")))
        self.assertEqual(h.idp.count(JWKS_PATH), 2)
        # A known kid never refetches.
        self.successResultOf(h.run(h.provider.keys_for("kid-b")))
        h.clock.advance(1)
        for i in range(100):
            self.successResultOf(h.run(h.provider.keys_for(f"later-{i}")))
        self.assertEqual(h.idp.count(JWKS_PATH), 3)
        self.successResultOf(h.run(h.provider.keys_for("kid-a")))
        self.assertEqual(h.idp.count(JWKS_PATH), 3)

    def test_unknown_kid_right_after_start(self):
        """
        Keys rotated just after the start-up load are found at once: the load
        does not count against jwks_min_refresh, the refetches do.
        """
        h = provider_stack(jwks_min_refresh=60.0)
        h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_A, JWK_B]})
        keys = self.successResultOf(h.run(h.provider.keys_for("kid-b")))
        self.assertTrue(keys.has_kid("kid-b"))
        self.assertEqual(h.idp.count(JWKS_PATH), 2)
        # Another unknown kid within the interval gets the cache.
        self.successResultOf(h.run(h.provider.keys_for("another-kid")))
        self.assertEqual(h.idp.count(JWKS_PATH), 2)
        h.clock.advance(60)
        self.successResultOf(h.run(h.provider.keys_for("another-kid")))
        self.assertEqual(h.idp.count(JWKS_PATH), 3)

    def test_single_flight(self):
        """Two concurrent callers share one fetch and get the same keys."""
        h = provider_stack(jwks_ttl=600.0)
        h.clock.advance(600)
        h.idp.handlers[JWKS_PATH] = lambda r: HOLD
        one = h.run(h.provider.keys_for(None))
        two = h.run(h.provider.keys_for("kid-b"))
        three = h.run(h.provider.keys_for("another-unknown"))
        self.assertNoResult(one)
        self.assertNoResult(two)
        self.assertNoResult(three)
        self.assertEqual(h.idp.count(JWKS_PATH), 2)
        h.idp.release({"keys": [JWK_B]})
        h.flush()
        keys = self.successResultOf(one)
        self.assertIs(self.successResultOf(two), keys)
        self.assertIs(self.successResultOf(three), keys)
        self.assertTrue(keys.has_kid("kid-b"))
        self.assertEqual(h.idp.count(JWKS_PATH), 2)

    def test_cancelled_caller_does_not_cancel_shared_fetch(self):
        h = provider_stack(jwks_ttl=600.0)
        h.clock.advance(600)
        h.idp.handlers[JWKS_PATH] = lambda r: HOLD
        one = h.run(h.provider.keys_for(None))
        two = h.run(h.provider.keys_for(None))
        one.cancel()
        self.failureResultOf(one)
        h.idp.release({"keys": [JWK_B]})
        h.flush()
        self.assertTrue(self.successResultOf(two).has_kid("kid-b"))

    def test_failed_refetch_keeps_cached_keys(self):
        """A refetch that fails (any way) serves the cached keys and logs; it is not retried at once."""
        for failing in [
            lambda r: answer(b"oops", code=500),
            lambda r: answer(b"not json"),
            lambda r: answer({"keys": "x"}),
            lambda r: answer({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        ]:
            events = capture_logs(self)
            h = provider_stack(jwks_ttl=600.0, jwks_min_refresh=60.0)
            cached = self.successResultOf(h.run(h.provider.keys_for(None)))
            h.idp.handlers[JWKS_PATH] = failing
            h.clock.advance(600)
            self.assertIs(self.successResultOf(h.run(h.provider.keys_for(None))), cached)
            self.assertEqual(h.idp.count(JWKS_PATH), 2)
            self.assertIn("still using the cached keys", logged_text(events))
            # Not hammered: the next tries within jwks_min_refresh use the cache.
            self.assertIs(self.successResultOf(h.run(h.provider.keys_for("unknown"))), cached)
            self.assertEqual(h.idp.count(JWKS_PATH), 2)
            h.clock.advance(60)
            h.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_B]})
            self.assertTrue(self.successResultOf(h.run(h.provider.keys_for(None))).has_kid("kid-b"))

    def test_failed_refetch_timeout_keeps_cached_keys(self):
        h = provider_stack(jwks_ttl=600.0)
        cached = self.successResultOf(h.run(h.provider.keys_for(None)))
        h.clock.advance(600)
        h.idp.handlers[JWKS_PATH] = lambda r: HOLD
        d = h.run(h.provider.keys_for(None))
        self.assertNoResult(d)
        h.clock.advance(5)
        h.flush()
        self.assertIs(self.successResultOf(d), cached)


# -- the token endpoint ------------------------------------------------------


class FailingHTTP:
    """An HTTP client whose every request fails to connect; counts the attempts."""

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred:
        self.calls += 1
        d: Deferred = Deferred()
        d.errback(ConnectionRefusedError("refused"))
        return d


def _ready(case: SynchronousTestCase, **kwargs: Any) -> ProviderStack:
    h = provider_stack(**kwargs)
    case.assertTrue(h.provider.ready)
    return h


class TokenTests(SynchronousTestCase):
    def exchange(self, h: ProviderStack, verifier: Optional[str] = VERIFIER) -> Deferred:
        return h.run(h.provider.exchange_code(CODE, REDIRECT_URI, verifier))

    def failure(self, h: ProviderStack, d: Deferred) -> ProviderError:
        error = self.failureResultOf(d, ProviderError).value
        for secret in (CODE, VERIFIER, CLIENT_SECRET, "RT-1"):
            self.assertNotIn(secret, error.detail)
            self.assertNotIn(secret, str(error))
        return error

    def test_client_secret_basic(self):
        """Basic with the form-encoded id and secret (RFC 6749 2.3.1); nothing secret in the body."""
        h = _ready(self)
        tokens = self.successResultOf(self.exchange(h))
        self.assertEqual(tokens, TOKENS)
        seen = h.idp.last(TOKEN_PATH)
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(seen.header(b"content-type"), b"application/x-www-form-urlencoded")
        self.assertEqual(seen.header(b"accept"), b"application/json")
        self.assertEqual(
            seen.form(),
            [
                ("grant_type", "authorization_code"),
                ("code", CODE),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ],
        )
        authorization = seen.header(b"authorization")
        assert authorization is not None
        scheme, credentials = authorization.split(b" ", 1)
        self.assertEqual(scheme, b"Basic")
        self.assertEqual(base64.b64decode(credentials), b"a%3Ab:p%40ss+w%25rd")
        self.assertIsNone(seen.header(b"cookie"))

    def test_client_secret_post(self):
        client = ClientAuth(CLIENT_ID, method="client_secret_post", client_secret=CLIENT_SECRET)
        h = _ready(self, client=client)
        self.successResultOf(self.exchange(h, verifier=None))
        seen = h.idp.last(TOKEN_PATH)
        self.assertEqual(
            seen.form(),
            [
                ("grant_type", "authorization_code"),
                ("code", CODE),
                ("redirect_uri", REDIRECT_URI),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
        )
        self.assertIn(b"client_id=a%3Ab", seen.body)
        self.assertIn(b"client_secret=p%40ss+w%25rd", seen.body)
        self.assertIsNone(seen.header(b"authorization"))

    def test_none(self):
        h = _ready(self, client=ClientAuth(CLIENT_ID, method="none"))
        self.successResultOf(self.exchange(h))
        seen = h.idp.last(TOKEN_PATH)
        self.assertEqual(
            seen.form(),
            [
                ("grant_type", "authorization_code"),
                ("code", CODE),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
                ("client_id", CLIENT_ID),
            ],
        )
        self.assertIsNone(seen.header(b"authorization"))

    def test_private_key_jwt(self):
        """A fresh client assertion, verifiable with the public key, with the right claims."""
        client = ClientAuth(CLIENT_ID, method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY),
                            private_key_id="client-key-1")
        h = _ready(self, client=client)
        self.successResultOf(self.exchange(h))
        seen = h.idp.last(TOKEN_PATH)
        form = seen.form()
        self.assertEqual(
            [name for name, _ in form],
            ["grant_type", "code", "redirect_uri", "code_verifier", "client_id",
             "client_assertion_type", "client_assertion"],
        )
        fields = dict(form)
        self.assertEqual(fields["client_id"], CLIENT_ID)
        self.assertEqual(fields["client_assertion_type"],
                         "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        self.assertIsNone(seen.header(b"authorization"))
        assertion = fields["client_assertion"]
        self.assertEqual(jwt.get_unverified_header(assertion),
                         {"alg": "RS256", "typ": "JWT", "kid": "client-key-1"})
        claims = jwt.decode(
            assertion,
            CLIENT_KEY.public_key(),
            algorithms=["RS256"],
            audience=TOKEN_ENDPOINT,
            options={"verify_exp": False, "verify_iat": False},
        )
        self.assertEqual(claims["iss"], CLIENT_ID)
        self.assertEqual(claims["sub"], CLIENT_ID)
        self.assertEqual(claims["aud"], TOKEN_ENDPOINT)
        self.assertEqual(claims["iat"], 1_700_000_000)
        self.assertEqual(claims["exp"], 1_700_000_060)
        self.assertGreaterEqual(len(claims["jti"]), 16)
        # Another exchange: another jti.
        self.successResultOf(self.exchange(h))
        again = dict(h.idp.last(TOKEN_PATH).form())["client_assertion"]
        self.assertNotEqual(jwt.decode(again, options={"verify_signature": False})["jti"], claims["jti"])
        # No kid configured: no kid header.
        h = _ready(self, client=ClientAuth(CLIENT_ID, method="private_key_jwt",
                                           private_key_pem=_pem(CLIENT_KEY)))
        self.successResultOf(self.exchange(h))
        header = jwt.get_unverified_header(dict(h.idp.last(TOKEN_PATH).form())["client_assertion"])
        self.assertNotIn("kid", header)

    def test_not_ready(self):
        h = provider_stack(start=False)
        error = self.failure(h, self.exchange(h))
        self.assertEqual((error.status, error.reason), (503, "not_ready"))
        self.assertEqual(h.idp.seen, [])

    def test_not_retried(self):
        """A failed code exchange is made once: no second request, no timer left behind."""
        for result in [
            answer(b"", code=500),
            answer(b"", code=502),
            answer({"error": "temporarily_unavailable"}, code=503),
        ]:
            h = _ready(self)
            h.idp.handlers[TOKEN_PATH] = lambda r, result=result: result
            error = self.failure(h, self.exchange(h))
            self.assertEqual(error.status, 502)
            error = self.failure(h, self.exchange(h))
            self.assertEqual(error.status, 502)
            h.clock.advance(1000)
            h.flush()
            self.assertEqual(h.idp.count(TOKEN_PATH), 2)
            self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_unreachable_not_retried(self):
        clock = Clock()
        http = FailingHTTP()
        provider = Provider(
            ISSUER, ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET), http, clock, discovery=False,
            endpoints={"authorization_endpoint": AUTHORIZATION_ENDPOINT, "token_endpoint": TOKEN_ENDPOINT,
                       "jwks_uri": JWKS_URI},
        )
        d = Deferred.fromCoroutine(provider.exchange_code(CODE, REDIRECT_URI, None))
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "unreachable"))
        self.assertEqual(http.calls, 1)
        clock.advance(1000)
        self.assertEqual(http.calls, 1)

    def classify(self, result: Answer) -> ProviderError:
        h = _ready(self)
        h.idp.handlers[TOKEN_PATH] = lambda r: result
        return self.failure(h, self.exchange(h))

    @staticmethod
    def without(name: str) -> Dict[str, Any]:
        return {k: v for k, v in TOKENS.items() if k != name}

    def test_error_classification(self):
        without = self.without
        cases: List[Tuple[Answer, int, str, Optional[str]]] = [
            (answer({"error": "invalid_grant", "error_description": "Code not valid"}, code=400),
             401, "token_error", "invalid_grant"),
            (answer({"error": "invalid_client"}, code=401), 502, "token_error", "invalid_client"),
            (answer({"error": "unauthorized_client"}, code=400), 502, "token_error", "unauthorized_client"),
            (answer(b"<html>bad request</html>", code=400, content_type="text/html"),
             502, "bad_token_response", None),
            (answer({"error_description": "no code"}, code=400), 502, "bad_token_response", None),
            (answer(b"internal error", code=500, content_type="text/plain"), 502, "bad_token_response", None),
            (answer({"error": "server_error"}, code=500), 502, "bad_token_response", None),
            (answer(TOKENS, code=201), 502, "bad_token_response", None),
            (answer(b"access_token=x&token_type=bearer", content_type="application/x-www-form-urlencoded"),
             502, "bad_json", None),
            (answer(b"{\"access_token\": "), 502, "bad_json", None),
            (answer([TOKENS]), 502, "bad_token_response", None),
            (answer(dict(TOKENS, id_token=None)), 502, "bad_token_response", None),
            (answer(without("id_token")), 502, "bad_token_response", None),
            (answer(without("access_token")), 502, "bad_token_response", None),
            (answer(dict(TOKENS, access_token=7)), 502, "bad_token_response", None),
            (answer(dict(TOKENS, token_type="mac")), 502, "bad_token_response", None),
            (answer(dict(TOKENS, token_type="DPoP")), 502, "bad_token_response", None),
            (answer(without("token_type")), 502, "bad_token_response", None),
            (answer(dict(TOKENS, expires_in=True)), 502, "bad_token_response", None),
            (answer(dict(TOKENS, expires_in="3600")), 502, "bad_token_response", None),
            (answer(dict(TOKENS, expires_in=1.5)), 502, "bad_token_response", None),
            (answer(dict(TOKENS, refresh_token=12)), 502, "bad_token_response", None),
        ]
        for result, status, reason, oauth_error in cases:
            error = self.classify(result)
            self.assertEqual((error.status, error.reason, error.oauth_error), (status, reason, oauth_error),
                             result)

    def test_accepted_variants(self):
        """token_type in any case; expires_in and refresh_token optional; extra members kept."""
        for tokens in [
            dict(TOKENS, token_type="bearer"),
            dict(TOKENS, token_type="BEARER"),
            {k: v for k, v in TOKENS.items() if k not in ("expires_in", "refresh_token")},
            dict(TOKENS, expires_in=0, session_state="abc"),
        ]:
            h = _ready(self)
            h.idp.handlers[TOKEN_PATH] = lambda r, tokens=tokens: answer(tokens)
            self.assertEqual(self.successResultOf(self.exchange(h)), tokens)

    def test_error_description_never_echoes_secrets(self):
        """An error_description that repeats the code (or a secret) is dropped from the detail."""
        error = self.classify(answer({"error": "invalid_grant", "error_description": f"code {CODE} expired"},
                                     code=400))
        self.assertEqual(error.oauth_error, "invalid_grant")
        error = self.classify(
            answer({"error": "invalid_grant", "error_description": "Code\nexpired"}, code=400)
        )
        self.assertIn("Code?expired", error.detail)

    def test_refresh(self):
        h = _ready(self)
        refreshed = {"access_token": "AT-2", "token_type": "Bearer", "expires_in": 300}
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(refreshed)
        self.assertEqual(self.successResultOf(h.run(h.provider.refresh("RT-1"))), refreshed)
        seen = h.idp.last(TOKEN_PATH)
        self.assertEqual(seen.form(), [("grant_type", "refresh_token"), ("refresh_token", "RT-1")])
        self.assertEqual(base64.b64decode(seen.header(b"authorization").split()[1]), b"a%3Ab:p%40ss+w%25rd")

        h.idp.handlers[TOKEN_PATH] = lambda r: answer(dict(refreshed, id_token="ID.TOKEN.2"))
        self.assertEqual(self.successResultOf(h.run(h.provider.refresh("RT-1")))["id_token"], "ID.TOKEN.2")
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(dict(refreshed, id_token=5))
        self.assertEqual(self.failure(h, h.run(h.provider.refresh("RT-1"))).reason, "bad_token_response")

        h.idp.handlers[TOKEN_PATH] = lambda r: answer({"error": "invalid_grant"}, code=400)
        error = self.failure(h, h.run(h.provider.refresh("RT-1")))
        self.assertEqual(
            (error.status, error.reason, error.oauth_error), (401, "token_error", "invalid_grant")
        )

    def test_refresh_returns_what_the_caller_needs(self):
        """The whole answer comes back: new access token, expiry, rotated refresh token, ID token, scope."""
        h = _ready(self)
        rotated = {"access_token": "AT-2", "token_type": "Bearer", "expires_in": 600, "refresh_token": "RT-2",
                   "id_token": "ID.TOKEN.2", "scope": "openid email"}
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(rotated)
        self.assertEqual(self.successResultOf(h.run(h.provider.refresh("RT-1"))), rotated)
        # null optional members are passed on as None (keep the old refresh token).
        nulls = {"access_token": "AT-3", "token_type": "Bearer", "expires_in": None, "refresh_token": None,
                 "id_token": None}
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(nulls)
        self.assertEqual(self.successResultOf(h.run(h.provider.refresh("RT-1"))), nulls)
        h.idp.handlers[TOKEN_PATH] = lambda r: answer({"error": "invalid_client"}, code=401)
        error = self.failure(h, h.run(h.provider.refresh("RT-1")))
        self.assertEqual(
            (error.status, error.reason, error.oauth_error), (502, "token_error", "invalid_client")
        )
        self.assertEqual(h.idp.count(TOKEN_PATH), 3)

    def test_timeout(self):
        """No complete answer within the timeout: 504, and the request is cancelled."""
        h = _ready(self, timeout=5.0)
        h.idp.handlers[TOKEN_PATH] = lambda r: HOLD
        d = self.exchange(h)
        h.clock.advance(4.9)
        h.flush()
        self.assertNoResult(d)
        h.clock.advance(0.1)
        h.flush()
        error = self.failure(h, d)
        self.assertEqual((error.status, error.reason), (504, "timeout"))
        self.assertTrue(h.idp.last(TOKEN_PATH).lost)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeout_while_reading_body(self):
        """The deadline covers the body too: headers sent, body never finished."""
        h = _ready(self, timeout=5.0)

        def slow(request: Any) -> Any:
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"access_token": ')
            return HOLD

        h.idp.handlers[TOKEN_PATH] = slow
        d = self.exchange(h)
        self.assertNoResult(d)
        h.clock.advance(5)
        h.flush()
        error = self.failure(h, d)
        self.assertEqual((error.status, error.reason), (504, "timeout"))
        self.assertTrue(h.idp.last(TOKEN_PATH).lost)

    def test_too_large(self):
        """An answer over max_response_size is refused, with or without a Content-Length."""
        h = _ready(self, max_response_size=1000)
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(dict(TOKENS, padding="x" * 1000))
        error = self.failure(h, self.exchange(h))
        self.assertEqual((error.status, error.reason), (502, "response_too_large"))

        def chunked(request: Any) -> Any:
            request.setHeader(b"content-type", b"application/json")
            for _ in range(30):
                request.write(b" " * 100)
            request.write(json.dumps(TOKENS).encode())
            request.finish()
            return NOT_DONE_YET

        h.idp.handlers[TOKEN_PATH] = chunked
        error = self.failure(h, self.exchange(h))
        self.assertEqual((error.status, error.reason), (502, "response_too_large"))

        # Just at the limit: fine; one byte more: refused.
        big = dict(TOKENS, padding="x" * 2000)
        body = json.dumps(big).encode()
        h = _ready(self, max_response_size=len(body))
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(body)
        self.assertEqual(self.successResultOf(self.exchange(h)), big)
        h = _ready(self, max_response_size=len(body) - 1)
        h.idp.handlers[TOKEN_PATH] = lambda r: answer(body)
        self.assertEqual(self.failure(h, self.exchange(h)).reason, "response_too_large")

    def test_stop_cancels_exchange(self):
        h = _ready(self)
        h.idp.handlers[TOKEN_PATH] = lambda r: HOLD
        d = self.exchange(h)
        h.provider.stop()
        h.flush()
        error = self.failure(h, d)
        self.assertEqual((error.status, error.reason), (503, "stopped"))
        self.assertTrue(h.idp.last(TOKEN_PATH).lost)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_caller_cancel(self):
        """A caller that cancels gets CancelledError; the request is aborted."""
        h = _ready(self)
        h.idp.handlers[TOKEN_PATH] = lambda r: HOLD
        d = self.exchange(h)
        d.cancel()
        h.flush()
        from twisted.internet.defer import CancelledError

        self.failureResultOf(d, CancelledError)
        self.assertTrue(h.idp.last(TOKEN_PATH).lost)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_nothing_secret_logged(self):
        events = capture_logs(self)
        h = _ready(self)
        for result in [answer({"error": "invalid_grant", "error_description": CODE}, code=400),
                       answer(b"", code=500), HOLD]:
            h.idp.handlers[TOKEN_PATH] = lambda r, result=result: result
            d = self.exchange(h)
            h.clock.advance(10)
            h.flush()
            self.failure(h, d)
        text = logged_text(events) + repr(events)
        for secret in (CODE, VERIFIER, CLIENT_SECRET, "YSUzQWI6cCU0MHNzK3clMjVyZA"):
            self.assertNotIn(secret, text)


class ConcurrencyTests(SynchronousTestCase):
    """
    At most max_concurrent_requests requests to the IdP in flight; up to
    max_queued_requests more wait, within their deadline; beyond that 503
    C{busy} at once, without reaching the IdP.
    """

    def storm(self, h: ProviderStack, count: int) -> List[Deferred]:
        h.idp.handlers[TOKEN_PATH] = lambda r: HOLD
        calls = [Deferred.fromCoroutine(h.provider.exchange_code(f"code-{i}", REDIRECT_URI,
                                                                 VERIFIER))
                 for i in range(count)]
        h.flush()
        return calls

    def busy(self, d: Deferred) -> ProviderError:
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual((error.status, error.reason), (503, "busy"))
        return error

    def test_login_storm_is_bounded(self):
        """
        With the default limits, 1,000 code exchanges at once against an IdP
        that does not answer: 64 reach it, 256 wait, the other 680 get 503
        at once (without them, all 1,000 were sent).
        """
        h = _ready(self)
        calls = self.storm(h, 1000)
        self.assertEqual(h.idp.count(TOKEN_PATH), 64)
        for d in calls[:320]:
            self.assertNoResult(d)
        for d in calls[320:]:
            self.busy(d)

    def test_line_moves_on_answers(self):
        """The waiting requests go out, in order, as the ones in flight are answered."""
        h = _ready(self, max_concurrent_requests=2, max_queued_requests=3)
        calls = self.storm(h, 10)
        self.assertEqual(h.idp.count(TOKEN_PATH), 2)
        for d in calls[5:]:
            self.busy(d)
        h.idp.release(TOKENS)
        h.flush()
        self.assertEqual([self.successResultOf(d) for d in calls[:2]], [TOKENS, TOKENS])
        self.assertEqual([f[1] for s in h.idp.seen if s.path == TOKEN_PATH
                          for f in s.form() if f[0] == "code"],
                         ["code-0", "code-1", "code-2", "code-3"])
        h.idp.release(TOKENS)
        h.flush()
        h.idp.release(TOKENS)
        h.flush()
        self.assertEqual([self.successResultOf(d) for d in calls[2:5]], [TOKENS] * 3)
        self.assertEqual(h.idp.count(TOKEN_PATH), 5)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_wait_bounded_by_timeout(self):
        """
        A request that waits the timeout for a slot fails with 503 busy (not
        504: the IdP never saw it), counted as C{busy}; one that got its slot
        after waiting has the whole timeout from then for its answer.
        """
        from oidcproxy.core.metrics import Metrics

        metrics = Metrics()
        h = _ready(self, max_concurrent_requests=1, timeout=5.0, metrics=metrics)
        first, second, third = self.storm(h, 3)
        h.clock.advance(4.0)
        h.idp.release(TOKENS)
        h.flush()
        self.assertEqual(self.successResultOf(first), TOKENS)
        self.assertEqual(h.idp.count(TOKEN_PATH), 2)  # the second went out at 4 s
        h.clock.advance(1.0)
        h.flush()
        self.busy(third)
        h.clock.advance(3.9)
        h.flush()
        self.assertNoResult(second)  # 8.9 s after it was asked for, 4.9 s after it went out
        h.idp.release(TOKENS)
        h.flush()
        self.assertEqual(self.successResultOf(second), TOKENS)
        self.assertEqual(h.idp.count(TOKEN_PATH), 2)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        text = metrics.render().decode("utf-8")
        self.assertIn('oidcproxy_idp_request_seconds_count{endpoint="token",outcome="busy"} 1.0',
                      text)
        self.assertIn('oidcproxy_idp_request_seconds_count{endpoint="token",outcome="ok"} 2.0',
                      text)
        # The second is timed from when it went out, not from when it was asked for.
        self.assertIn('oidcproxy_idp_request_seconds_bucket{endpoint="token",le="5.0",outcome="ok"} '
                      '2.0', text)

    def test_waited_then_timed_out(self):
        """A request that got its slot late and then gets no answer in time: 504 after its timeout."""
        h = _ready(self, max_concurrent_requests=1, timeout=5.0)
        first, second = self.storm(h, 2)
        h.clock.advance(5.0)
        h.flush()
        self.assertEqual(self.failureResultOf(first, ProviderError).value.status, 504)
        self.assertEqual(h.idp.count(TOKEN_PATH), 2)
        h.clock.advance(4.9)
        h.flush()
        self.assertNoResult(second)
        h.clock.advance(0.1)
        h.flush()
        self.assertEqual(self.failureResultOf(second, ProviderError).value.status, 504)

    def test_no_line(self):
        """max_queued_requests = 0: a request that finds every slot taken fails at once."""
        h = _ready(self, max_concurrent_requests=1, max_queued_requests=0)
        first, second = self.storm(h, 2)
        self.assertNoResult(first)
        self.busy(second)

    def test_cancelled_waiter_leaves_the_line(self):
        """A caller that cancels while waiting leaves the line; the slot goes to the next."""
        from twisted.internet.defer import CancelledError

        h = _ready(self, max_concurrent_requests=1, max_queued_requests=1)
        first, second = self.storm(h, 2)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        third = self.storm(h, 1)[0]  # the place in line is free again
        self.assertNoResult(third)
        h.idp.release(TOKENS)
        h.flush()
        self.assertEqual(self.successResultOf(first), TOKENS)
        h.idp.release(TOKENS)
        h.flush()
        self.assertEqual(self.successResultOf(third), TOKENS)
        self.assertEqual(h.idp.count(TOKEN_PATH), 2)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_ends_the_line(self):
        """stop() fails the waiting requests too (503 stopped), leaving nothing behind."""
        h = _ready(self, max_concurrent_requests=1)
        first, second = self.storm(h, 2)
        h.provider.stop()
        h.flush()
        for d in (first, second):
            self.assertEqual(self.failureResultOf(d, ProviderError).value.reason, "stopped")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.provider._transport.slots.waiting, 0)

    def test_bad_limits(self):
        """The limits are integers: at least 1 in flight, at least 0 waiting."""
        auth = ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET)
        for kwargs in ({"max_concurrent_requests": 0}, {"max_queued_requests": -1},
                       {"max_concurrent_requests": 2.5}, {"max_queued_requests": True}):
            self.assertRaises(ValueError, Provider, ISSUER, auth, StubTreq(FakeIdP()), Clock(),
                              **kwargs)


# -- userinfo ----------------------------------------------------------------


class UserinfoTests(SynchronousTestCase):
    def test_success(self):
        h = _ready(self)
        claims = self.successResultOf(h.run(h.provider.userinfo("AT-1")))
        self.assertEqual(claims, {"sub": "user-1", "email": "u@example.test"})
        seen = h.idp.last(USERINFO_PATH)
        self.assertEqual(seen.method, b"GET")
        self.assertEqual(seen.header(b"authorization"), b"Bearer AT-1")
        self.assertEqual(seen.header(b"accept"), b"application/json")

    def test_subject_left_to_the_caller(self):
        """
        A JSON object is returned as it is, with or without a (string) sub:
        whether it is about the ID token's subject is the login's decision
        (a refused login), not a bad answer from the IdP (a 502).
        """
        for document in ({"email": "u@example.test"}, {"sub": ""}, {"sub": "   "},
                         {"sub": 42}, {"sub": None}):
            h = _ready(self)
            h.idp.handlers[USERINFO_PATH] = lambda r, document=document: answer(document)
            self.assertEqual(self.successResultOf(h.run(h.provider.userinfo("AT-1"))), document)

    def test_bad_answers(self):
        cases = [
            (answer(["sub"]), "bad_userinfo"),
            (answer(b"eyJhbGciOiJSUzI1NiJ9.e30.c2ln", content_type="application/jwt"),
             "unsupported_userinfo"),
            (answer(b"nope", content_type="text/plain"), "bad_json"),
            (answer({"error": "invalid_token"}, code=401), "bad_status"),
        ]
        for result, reason in cases:
            h = _ready(self)
            h.idp.handlers[USERINFO_PATH] = lambda r, result=result: result
            error = self.failureResultOf(h.run(h.provider.userinfo("AT-1")), ProviderError).value
            self.assertEqual((error.status, error.reason), (502, reason), result)
            self.assertNotIn("AT-1", str(error))

    def test_no_endpoint(self):
        h = _ready(self, endpoints=None)
        h.provider.metadata = ProviderMetadata(ISSUER, AUTHORIZATION_ENDPOINT, TOKEN_ENDPOINT, JWKS_URI)
        error = self.failureResultOf(h.run(h.provider.userinfo("AT-1")), ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "no_userinfo_endpoint"))

    def test_dropped_body_noted(self):
        """
        An answer whose Content-Length is over the limit is dropped unread:
        the failed reading of its body is logged (at debug level), not lost.
        """
        events = capture_logs(self)
        h = _ready(self, max_response_size=2000)
        h.idp.handlers[USERINFO_PATH] = lambda r: answer({"sub": "u", "x": "y" * 2000})
        error = self.failureResultOf(h.run(h.provider.userinfo("AT-1")), ProviderError).value
        self.assertEqual(error.reason, "response_too_large")
        dropped = [e for e in events if "dropped unread" in e.get("log_format", "")]
        self.assertEqual(len(dropped), 1)
        self.assertIn("userinfo endpoint", logged_text(dropped))

    def test_too_large_and_timeout(self):
        h = _ready(self, max_response_size=2000, timeout=2.0)
        h.idp.handlers[USERINFO_PATH] = lambda r: answer({"sub": "u", "x": "y" * 2000})
        error = self.failureResultOf(h.run(h.provider.userinfo("AT-1")), ProviderError).value
        self.assertEqual(error.reason, "response_too_large")
        h.idp.handlers[USERINFO_PATH] = lambda r: HOLD
        d = h.run(h.provider.userinfo("AT-1"))
        h.clock.advance(2)
        h.flush()
        self.assertEqual(self.failureResultOf(d, ProviderError).value.status, 504)
        self.assertEqual(h.idp.count(USERINFO_PATH), 2)  # not retried


# -- logout: revocation and RP-initiated logout --------------------------------


def _revoking(case: SynchronousTestCase, **kwargs: Any) -> ProviderStack:
    """A ready provider whose revocation endpoint comes from the configuration."""
    return _ready(case, endpoints={"revocation_endpoint": REVOCATION_ENDPOINT}, **kwargs)


class RevocationTests(SynchronousTestCase):
    def revoke(self, h: ProviderStack, token: str = "RT-1",
               hint: Optional[str] = "refresh_token") -> Deferred:
        return h.run(h.provider.revoke(token, hint))

    def failure(self, h: ProviderStack, d: Deferred) -> ProviderError:
        error = self.failureResultOf(d, ProviderError).value
        for secret in ("RT-1", CLIENT_SECRET):
            self.assertNotIn(secret, error.detail)
            self.assertNotIn(secret, str(error))
        return error

    def test_client_secret_basic(self):
        """The RFC 7009 form (token, token_type_hint) and Basic client authentication, as for tokens."""
        h = _revoking(self)
        self.assertIsNone(self.successResultOf(self.revoke(h)))
        seen = h.idp.last(REVOCATION_PATH)
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(seen.uri, REVOCATION_PATH)
        self.assertEqual(seen.header(b"content-type"), b"application/x-www-form-urlencoded")
        self.assertEqual(seen.header(b"accept"), b"application/json")
        self.assertEqual(seen.form(), [("token", "RT-1"), ("token_type_hint", "refresh_token")])
        self.assertEqual(seen.body, b"token=RT-1&token_type_hint=refresh_token")
        authorization = seen.header(b"authorization")
        assert authorization is not None
        scheme, credentials = authorization.split(b" ", 1)
        self.assertEqual(scheme, b"Basic")
        self.assertEqual(base64.b64decode(credentials), b"a%3Ab:p%40ss+w%25rd")
        self.assertIsNone(seen.header(b"cookie"))
        self.assertEqual(h.idp.count(TOKEN_PATH), 0)

    def test_client_secret_post(self):
        """client_secret_post: id and secret in the form, after the token; no Authorization."""
        client = ClientAuth(CLIENT_ID, method="client_secret_post", client_secret=CLIENT_SECRET)
        h = _revoking(self, client=client)
        self.successResultOf(self.revoke(h, "AT-1", "access_token"))
        seen = h.idp.last(REVOCATION_PATH)
        self.assertEqual(
            seen.form(),
            [
                ("token", "AT-1"),
                ("token_type_hint", "access_token"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
        )
        self.assertEqual(
            seen.body,
            b"token=AT-1&token_type_hint=access_token&client_id=a%3Ab&client_secret=p%40ss+w%25rd",
        )
        self.assertIsNone(seen.header(b"authorization"))

    def test_no_hint(self):
        """Without a hint (None or empty) only the token is sent."""
        for hint in (None, ""):
            h = _revoking(self)
            self.successResultOf(self.revoke(h, hint=hint))
            self.assertEqual(h.idp.last(REVOCATION_PATH).form(), [("token", "RT-1")])

    def test_token_form_encoded(self):
        """A token with reserved characters is form-encoded and arrives intact."""
        h = _revoking(self)
        odd = "a+b/c=d&e f"
        self.successResultOf(self.revoke(h, odd, None))
        seen = h.idp.last(REVOCATION_PATH)
        self.assertEqual(seen.body, b"token=a%2Bb%2Fc%3Dd%26e+f")
        self.assertEqual(seen.form(), [("token", odd)])

    def test_public_client(self):
        """Method none: the client_id in the form, no Authorization."""
        h = _revoking(self, client=ClientAuth(CLIENT_ID, method="none"))
        self.successResultOf(self.revoke(h))
        seen = h.idp.last(REVOCATION_PATH)
        self.assertEqual(
            seen.form(), [("token", "RT-1"), ("token_type_hint", "refresh_token"), ("client_id", CLIENT_ID)]
        )
        self.assertIsNone(seen.header(b"authorization"))

    def test_private_key_jwt(self):
        """private_key_jwt: a fresh assertion whose audience is the token endpoint (the AS)."""
        client = ClientAuth(CLIENT_ID, method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY))
        h = _revoking(self, client=client)
        self.successResultOf(self.revoke(h))
        form = h.idp.last(REVOCATION_PATH).form()
        self.assertEqual(
            [name for name, _ in form],
            ["token", "token_type_hint", "client_id", "client_assertion_type", "client_assertion"],
        )
        claims = jwt.decode(
            dict(form)["client_assertion"], CLIENT_KEY.public_key(), algorithms=["RS256"],
            audience=TOKEN_ENDPOINT, options={"verify_exp": False, "verify_iat": False},
        )
        self.assertEqual((claims["iss"], claims["sub"], claims["iat"]), (CLIENT_ID, CLIENT_ID, 1_700_000_000))

    def test_success_body_ignored(self):
        """200 is success whatever the body: empty, JSON, not JSON."""
        for result in (
            answer(b"", content_type=""),
            answer({}),
            answer(b"<html>ok</html>", content_type="text/html"),
            answer(b"{broken"),
        ):
            h = _revoking(self)
            h.idp.handlers[REVOCATION_PATH] = lambda r, result=result: result
            self.assertIsNone(self.successResultOf(self.revoke(h)))

    def test_failures(self):
        """Any other status: 502 revocation_failed, with the OAuth error of a 4xx JSON answer."""
        cases: List[Tuple[Answer, Optional[str]]] = [
            (answer({"error": "unsupported_token_type"}, code=400), "unsupported_token_type"),
            (answer({"error": "invalid_request", "error_description": "bad"}, code=400), "invalid_request"),
            (answer({"error": "invalid_client"}, code=401), "invalid_client"),
            (answer({"error_description": "no error code"}, code=400), None),
            (answer(b"<html>bad request</html>", code=400, content_type="text/html"), None),
            (answer(b"", code=404, content_type=""), None),
            (answer(b"internal error", code=500, content_type="text/plain"), None),
            (answer({"error": "temporarily_unavailable"}, code=503), None),
            (answer(b"", code=302, content_type=""), None),
            (answer(b"", code=204, content_type=""), None),
        ]
        for result, oauth_error in cases:
            h = _revoking(self)
            h.idp.handlers[REVOCATION_PATH] = lambda r, result=result: result
            error = self.failure(h, self.revoke(h))
            self.assertEqual(
                (error.status, error.reason, error.oauth_error),
                (502, "revocation_failed", oauth_error),
                result,
            )
            self.assertIn(f"HTTP {result[0]}", error.detail)
            self.assertEqual(h.idp.count(REVOCATION_PATH), 1)

    def test_error_description(self):
        """The description is kept when harmless, dropped when it echoes the token or the secret."""
        h = _revoking(self)
        h.idp.handlers[REVOCATION_PATH] = lambda r: answer(
            {"error": "invalid_request", "error_description": "Token\nmissing"}, code=400)
        self.assertIn("invalid_request: Token?missing", self.failure(h, self.revoke(h)).detail)
        for description in ("token RT-1 unknown", f"secret {CLIENT_SECRET} wrong"):
            h.idp.handlers[REVOCATION_PATH] = lambda r, d=description: answer(
                {"error": "invalid_request", "error_description": d}, code=400)
            detail = self.failure(h, self.revoke(h)).detail
            self.assertEqual(detail, "the revocation endpoint answered HTTP 400 invalid_request")

    def test_not_retried(self):
        """A failed revocation is made once: no second request, no timer left behind."""
        h = _revoking(self)
        h.idp.handlers[REVOCATION_PATH] = lambda r: answer(b"", code=503, content_type="")
        self.failure(h, self.revoke(h))
        h.clock.advance(1000)
        h.flush()
        self.assertEqual(h.idp.count(REVOCATION_PATH), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeout(self):
        """No answer within the timeout: 504 timeout, the request is cancelled, not retried."""
        h = _revoking(self, timeout=3.0)
        h.idp.handlers[REVOCATION_PATH] = lambda r: HOLD
        d = self.revoke(h)
        h.clock.advance(2.9)
        h.flush()
        self.assertNoResult(d)
        h.clock.advance(0.1)
        h.flush()
        error = self.failure(h, d)
        self.assertEqual((error.status, error.reason), (504, "timeout"))
        self.assertTrue(h.idp.last(REVOCATION_PATH).lost)
        h.clock.advance(1000)
        h.flush()
        self.assertEqual(h.idp.count(REVOCATION_PATH), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_unreachable(self):
        """A connection failure: 502 unreachable, one attempt."""
        http = FailingHTTP()
        clock = Clock()
        provider = Provider(
            ISSUER, ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET), http, clock, discovery=False,
            endpoints={"authorization_endpoint": AUTHORIZATION_ENDPOINT, "token_endpoint": TOKEN_ENDPOINT,
                       "jwks_uri": JWKS_URI, "revocation_endpoint": REVOCATION_ENDPOINT},
        )
        error = self.failureResultOf(Deferred.fromCoroutine(provider.revoke("RT-1")), ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "unreachable"))
        clock.advance(1000)
        self.assertEqual(http.calls, 1)

    def test_no_endpoint(self):
        """No revocation endpoint: 502 no_revocation_endpoint, nothing sent."""
        h = _ready(self)
        self.assertIsNone(h.provider.metadata.revocation_endpoint)
        before = len(h.idp.seen)
        error = self.failure(h, self.revoke(h))
        self.assertEqual((error.status, error.reason), (502, "no_revocation_endpoint"))
        self.assertEqual(len(h.idp.seen), before)

    def test_endpoint_from_discovery(self):
        """The revocation_endpoint of the discovery document is used."""
        h = provider_stack(start=False)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(
            discovery_document(revocation_endpoint=REVOCATION_ENDPOINT))
        h.provider.start()
        h.flush()
        self.successResultOf(self.revoke(h))
        self.assertEqual(h.idp.count(REVOCATION_PATH), 1)

    def test_not_ready(self):
        """Before discovery: 503 not_ready."""
        h = provider_stack(start=False, endpoints={"revocation_endpoint": REVOCATION_ENDPOINT})
        error = self.failure(h, self.revoke(h))
        self.assertEqual((error.status, error.reason), (503, "not_ready"))
        self.assertEqual(h.idp.seen, [])

    def test_stop_cancels(self):
        """stop() while a revocation is in flight: 503 stopped."""
        h = _revoking(self)
        h.idp.handlers[REVOCATION_PATH] = lambda r: HOLD
        d = self.revoke(h)
        h.provider.stop()
        h.flush()
        self.assertEqual(self.failure(h, d).reason, "stopped")

    def test_nothing_secret_logged(self):
        events = capture_logs(self)
        h = _revoking(self)
        for result in (answer({"error": "invalid_request", "error_description": "RT-1"}, code=400),
                       answer(b"", code=500), HOLD):
            h.idp.handlers[REVOCATION_PATH] = lambda r, result=result: result
            d = self.revoke(h)
            h.clock.advance(10)
            h.flush()
            self.failure(h, d)
        text = logged_text(events) + repr(events)
        for secret in ("RT-1", CLIENT_SECRET, "YSUzQWI6cCU0MHNzK3clMjVyZA"):
            self.assertNotIn(secret, text)


class EndSessionURLTests(SynchronousTestCase):
    def test_all_parameters(self):
        """id_token_hint, client_id, post_logout_redirect_uri and state, in that order, form-encoded."""
        h = _ready(self)
        url = h.provider.end_session_url("eyJ.hint.sig", "https://app.test/bye?a=1&b=2", "st/1")
        self.assertEqual(
            url,
            END_SESSION_ENDPOINT + "?id_token_hint=eyJ.hint.sig&client_id=a%3Ab"
            "&post_logout_redirect_uri=https%3A%2F%2Fapp.test%2Fbye%3Fa%3D1%26b%3D2&state=st%2F1",
        )
        self.assertEqual(
            parse_qsl(urlsplit(url).query, strict_parsing=True),
            [("id_token_hint", "eyJ.hint.sig"), ("client_id", CLIENT_ID),
             ("post_logout_redirect_uri", "https://app.test/bye?a=1&b=2"), ("state", "st/1")],
        )

    def test_only_what_is_given(self):
        """client_id always; the others only when given (None or empty: left out)."""
        h = _ready(self)
        self.assertEqual(h.provider.end_session_url(None, None), END_SESSION_ENDPOINT + "?client_id=a%3Ab")
        self.assertEqual(h.provider.end_session_url("", "", ""), END_SESSION_ENDPOINT + "?client_id=a%3Ab")
        self.assertEqual(h.provider.end_session_url("T", None),
                         END_SESSION_ENDPOINT + "?id_token_hint=T&client_id=a%3Ab")
        self.assertEqual(
            h.provider.end_session_url(None, "https://app.test/"),
            END_SESSION_ENDPOINT + "?client_id=a%3Ab&post_logout_redirect_uri=https%3A%2F%2Fapp.test%2F",
        )

    def test_existing_query_kept(self):
        """A query already in the endpoint URL is kept as written, ours appended."""
        endpoint = "https://idp.test/logout?tenant=a%20b&p=x+y&flag"
        h = _ready(self, endpoints={"end_session_endpoint": endpoint})
        self.assertEqual(
            h.provider.end_session_url("T", "https://app.test/"),
            endpoint + "&id_token_hint=T&client_id=a%3Ab&post_logout_redirect_uri=https%3A%2F%2Fapp.test%2F",
        )
        self.assertEqual(h.provider.end_session_url(None, None), endpoint + "&client_id=a%3Ab")

    def test_existing_query_same_name_replaced(self):
        """A parameter of the endpoint URL that we set is replaced, never sent twice; others stay."""
        endpoint = "https://idp.test/logout?client_id=old&x=1&state=old&post_logout_redirect_uri=kept"
        h = _ready(self, endpoints={"end_session_endpoint": endpoint})
        self.assertEqual(
            h.provider.end_session_url("T", None, "s"),
            "https://idp.test/logout?x=1&post_logout_redirect_uri=kept&id_token_hint=T&client_id=a%3Ab&state=s",
        )
        encoded = "https://idp.test/logout?client%5Fid=old&y=2"
        h = _ready(self, endpoints={"end_session_endpoint": encoded})
        self.assertEqual(h.provider.end_session_url(None, None), "https://idp.test/logout?y=2&client_id=a%3Ab")

    def test_empty_query(self):
        """An endpoint ending in a bare '?' gets a clean query."""
        h = _ready(self, endpoints={"end_session_endpoint": "https://idp.test/logout?"})
        self.assertEqual(h.provider.end_session_url(None, None), "https://idp.test/logout?client_id=a%3Ab")

    def test_no_endpoint(self):
        """No end_session_endpoint in the metadata: None."""
        h = provider_stack(start=False)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(discovery_document(end_session_endpoint=_DROP))
        h.provider.start()
        h.flush()
        self.assertTrue(h.provider.ready)
        self.assertIsNone(h.provider.end_session_url("T", "https://app.test/", "s"))

    def test_metadata_not_loaded(self):
        """Before discovery succeeded: None, and nothing is requested."""
        h = provider_stack(start=False)
        self.assertIsNone(h.provider.end_session_url("T", "https://app.test/"))
        self.assertEqual(h.idp.seen, [])

    def test_manual_endpoints(self):
        """Without discovery: the configured end_session_endpoint, or None without one."""
        endpoints = {"authorization_endpoint": AUTHORIZATION_ENDPOINT, "token_endpoint": TOKEN_ENDPOINT,
                     "jwks_uri": JWKS_URI}
        h = provider_stack(start=False, discovery=False, endpoints=endpoints)
        self.assertIsNone(h.provider.end_session_url("T", None))
        h = provider_stack(start=False, discovery=False,
                    endpoints=dict(endpoints, end_session_endpoint=END_SESSION_ENDPOINT))
        self.assertEqual(h.provider.end_session_url("T", None),
                         END_SESSION_ENDPOINT + "?id_token_hint=T&client_id=a%3Ab")


# -- the HTTP client ---------------------------------------------------------


class CookieSetter(Resource):
    """Sets a cookie on every answer and records the Cookie headers it receives."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.cookies: List[Optional[List[bytes]]] = []

    def render(self, request: Any) -> bytes:
        self.cookies.append(request.requestHeaders.getRawHeaders(b"cookie"))
        request.addCookie(b"tracker", b"t1", path=b"/")
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


class MemoryNetwork:
    """
    Connects the TCP connections an Agent asks a MemoryReactor for to a
    twisted.web Site, in memory.
    """

    def __init__(self, resource: Resource) -> None:
        self.reactor = MemoryReactorClock()
        self.site = Site(resource)
        self.pumps: List[iosim.IOPump] = []
        self.connected = 0

    def flush(self) -> None:
        for _ in range(20):
            while self.connected < len(self.reactor.tcpClients):
                factory = self.reactor.tcpClients[self.connected][2]
                self.connected += 1
                client = factory.buildProtocol(None)
                server = self.site.buildProtocol(None)
                self.pumps.append(iosim.connect(
                    server, iosim.FakeTransport(server, isServer=True),
                    client, iosim.FakeTransport(client, isServer=False),
                    greet=False,
                ))
            for pump in self.pumps:
                pump.pump()
            self.reactor.advance(0)

    def get(self, case: SynchronousTestCase, client: HTTPClient, url: str) -> bytes:
        d = client.get(url)
        d.addCallback(lambda response: response.content())
        self.flush()
        return case.successResultOf(d)


class HTTPClientTests(SynchronousTestCase):
    def test_cookie_jar_keeps_nothing(self):
        """make_http_client's client never sends a cookie an answer set."""
        idp = CookieSetter()
        net = MemoryNetwork(idp)
        client = make_http_client(net.reactor, timeout_connect=3.0)
        net.get(self, client, "http://127.0.0.1:8080/one")
        net.get(self, client, "http://127.0.0.1:8080/two")
        self.assertEqual(idp.cookies, [None, None])
        self.assertEqual(net.reactor.tcpClients[0][3], 3.0)  # the connect timeout
        self.assertEqual(len(net.reactor.tcpClients), 1)  # the persistent pool kept the connection

    def test_control_default_client_keeps_cookies(self):
        """The harness detects cookies: a default treq client would have sent it back."""
        idp = CookieSetter()
        net = MemoryNetwork(idp)
        client = HTTPClient(Agent(net.reactor))
        net.get(self, client, "http://127.0.0.1:8080/one")
        net.get(self, client, "http://127.0.0.1:8080/two")
        self.assertEqual(idp.cookies, [None, [b"tracker=t1"]])

    def test_provider_over_real_client(self):
        """The provider works over make_http_client's client (plain http)."""
        idp = FakeIdP()
        issuer = "http://127.0.0.1:8080/realms/main"

        def document(request: Any) -> Answer:
            return answer(discovery_document(
                issuer=issuer, jwks_uri=issuer + "/protocol/certs", token_endpoint=issuer + "/protocol/token",
            ))

        idp.handlers[DISCOVERY_PATH] = document
        net = MemoryNetwork(idp)
        provider = Provider(issuer, ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET),
                            make_http_client(net.reactor), net.reactor)
        provider.start()
        net.flush()
        self.assertTrue(provider.ready)
        d = Deferred.fromCoroutine(provider.exchange_code(CODE, REDIRECT_URI, VERIFIER))
        net.flush()
        self.assertEqual(self.successResultOf(d), TOKENS)
        self.assertEqual(dict(idp.last(TOKEN_PATH).form())["code"], CODE)
        provider.stop()

    def test_ca_bundle(self):
        """A bundle with certificates is accepted; a file without any is a ValueError."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
        import datetime

        now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        bundle = self.mktemp()
        with open(bundle, "wb") as f:
            f.write(b"# a comment\n" + cert.public_bytes(serialization.Encoding.PEM) * 2)
        self.assertIsInstance(make_http_client(MemoryReactorClock(), ca_bundle=bundle), HTTPClient)
        empty = self.mktemp()
        with open(empty, "wb") as f:
            f.write(b"no certificates here\n")
        self.assertRaises(ValueError, make_http_client, MemoryReactorClock(), ca_bundle=empty)


class ErrorTests(SynchronousTestCase):
    def test_attributes(self):
        e = ProviderError(401, "token_error", "the token endpoint answered", oauth_error="invalid_grant")
        self.assertEqual((e.status, e.reason, e.oauth_error, e.detail),
                         (401, "token_error", "invalid_grant", "the token endpoint answered"))
        self.assertIn("token_error", str(e))
        self.assertIsNone(ProviderError(504, "timeout").oauth_error)

    def test_keyset_type(self):
        h = _ready(self)
        self.assertIsInstance(self.successResultOf(h.run(h.provider.keys_for(None))), KeySet)


# -- introspection -----------------------------------------------------------

INTROSPECTION_ENDPOINT = BASE + "/protocol/token/introspect"
INTROSPECTION_PATH = b"/realms/main/protocol/token/introspect"
ACTIVE = {"active": True, "sub": "user-1", "scope": "api", "exp": 2_000_000_000, "client_id": "api-client"}


def _introspecting(case: SynchronousTestCase, result: Any = None, **kwargs: Any) -> ProviderStack:
    """A ready provider whose introspection endpoint comes from the configuration."""
    h = _ready(case, endpoints={"introspection_endpoint": INTROSPECTION_ENDPOINT}, **kwargs)
    h.idp.handlers[INTROSPECTION_PATH] = lambda r: answer(ACTIVE) if result is None else result
    return h


class IntrospectionTests(SynchronousTestCase):
    def introspect(self, h: ProviderStack, token: str = "AT-1") -> Deferred:
        return h.run(h.provider.introspect(token))

    def failure(self, h: ProviderStack, d: Deferred) -> ProviderError:
        error = self.failureResultOf(d, ProviderError).value
        for secret in ("AT-1", CLIENT_SECRET):
            self.assertNotIn(secret, error.detail)
            self.assertNotIn(secret, str(error))
        return error

    def test_client_secret_basic(self):
        """The RFC 7662 form (token, token_type_hint=access_token) with Basic auth; the answer as sent."""
        h = _introspecting(self)
        self.assertEqual(self.successResultOf(self.introspect(h)), ACTIVE)
        seen = h.idp.last(INTROSPECTION_PATH)
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(seen.uri, INTROSPECTION_PATH)
        self.assertEqual(seen.header(b"content-type"), b"application/x-www-form-urlencoded")
        self.assertEqual(seen.header(b"accept"), b"application/json")
        self.assertEqual(seen.body, b"token=AT-1&token_type_hint=access_token")
        authorization = seen.header(b"authorization")
        assert authorization is not None
        scheme, credentials = authorization.split(b" ", 1)
        self.assertEqual(scheme, b"Basic")
        self.assertEqual(base64.b64decode(credentials), b"a%3Ab:p%40ss+w%25rd")
        self.assertIsNone(seen.header(b"cookie"))
        self.assertEqual(h.idp.count(TOKEN_PATH), 0)

    def test_client_secret_post(self):
        client = ClientAuth(CLIENT_ID, method="client_secret_post", client_secret=CLIENT_SECRET)
        h = _introspecting(self, client=client)
        self.successResultOf(self.introspect(h))
        seen = h.idp.last(INTROSPECTION_PATH)
        self.assertEqual(
            seen.body,
            b"token=AT-1&token_type_hint=access_token&client_id=a%3Ab&client_secret=p%40ss+w%25rd",
        )
        self.assertIsNone(seen.header(b"authorization"))

    def test_public_client(self):
        h = _introspecting(self, client=ClientAuth(CLIENT_ID, method="none"))
        self.successResultOf(self.introspect(h))
        seen = h.idp.last(INTROSPECTION_PATH)
        self.assertEqual(
            seen.form(), [("token", "AT-1"), ("token_type_hint", "access_token"), ("client_id", CLIENT_ID)]
        )
        self.assertIsNone(seen.header(b"authorization"))

    def test_private_key_jwt(self):
        """A fresh assertion whose audience is the token endpoint (the authorization server)."""
        client = ClientAuth(CLIENT_ID, method="private_key_jwt", private_key_pem=_pem(CLIENT_KEY))
        h = _introspecting(self, client=client)
        self.successResultOf(self.introspect(h))
        form = h.idp.last(INTROSPECTION_PATH).form()
        self.assertEqual(
            [name for name, _ in form],
            ["token", "token_type_hint", "client_id", "client_assertion_type", "client_assertion"],
        )
        self.assertEqual(dict(form)["client_assertion_type"],
                         "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        claims = jwt.decode(
            dict(form)["client_assertion"], CLIENT_KEY.public_key(), algorithms=["RS256"],
            audience=TOKEN_ENDPOINT, options={"verify_exp": False, "verify_iat": False},
        )
        self.assertEqual((claims["iss"], claims["sub"], claims["iat"]), (CLIENT_ID, CLIENT_ID, 1_700_000_000))

    def test_token_form_encoded(self):
        h = _introspecting(self)
        odd = "a+b/c=d&e f"
        self.successResultOf(self.introspect(h, odd))
        seen = h.idp.last(INTROSPECTION_PATH)
        self.assertEqual(seen.body, b"token=a%2Bb%2Fc%3Dd%26e+f&token_type_hint=access_token")

    def test_answers_returned_as_sent(self):
        """active false is an answer, not an error; nothing else in the answer is judged here."""
        for document in (
            {"active": False},
            {"active": True},
            {"active": True, "exp": "soon", "aud": 7, "iss": "https://elsewhere.test"},
            dict(ACTIVE, active=False),
        ):
            h = _introspecting(self, answer(document))
            self.assertEqual(self.successResultOf(self.introspect(h)), document)

    def test_bad_answers(self):
        """Not JSON, not an object, no boolean active: 502, with its own reason."""
        cases = [
            (answer(b"active=true", content_type="text/plain"), "bad_json"),
            (answer(b"{\"active\": tr"), "bad_json"),
            (answer(b"NaN"), "bad_json"),
            (answer([ACTIVE]), "bad_introspection"),
            (answer("active"), "bad_introspection"),
            (answer({}), "bad_introspection"),
            (answer({"active": "true"}), "bad_introspection"),
            (answer({"active": 1}), "bad_introspection"),
            (answer({"active": None}), "bad_introspection"),
        ]
        for result, reason in cases:
            h = _introspecting(self, result)
            error = self.failure(h, self.introspect(h))
            self.assertEqual((error.status, error.reason), (502, reason), result)

    def test_error_statuses(self):
        """Any status but 200: 502 introspection_failed, with the OAuth error of a 4xx JSON answer."""
        cases: List[Tuple[Answer, Optional[str]]] = [
            (answer({"error": "invalid_client"}, code=401), "invalid_client"),
            (answer({"error": "invalid_request", "error_description": "token missing"}, code=400),
             "invalid_request"),
            (answer({"error_description": "no error code"}, code=400), None),
            (answer(b"<html>forbidden</html>", code=403, content_type="text/html"), None),
            (answer(b"", code=404, content_type=""), None),
            (answer({"error": "server_error"}, code=500), None),
            (answer(ACTIVE, code=201), None),
            (answer(b"", code=302, content_type=""), None),
        ]
        for result, oauth_error in cases:
            h = _introspecting(self, result)
            error = self.failure(h, self.introspect(h))
            self.assertEqual(
                (error.status, error.reason, error.oauth_error), (502, "introspection_failed", oauth_error),
                result,
            )
            self.assertIn(f"HTTP {result[0]}", error.detail)
            self.assertEqual(h.idp.count(INTROSPECTION_PATH), 1)

    def test_error_description_never_echoes_secrets(self):
        h = _introspecting(self, answer({"error": "invalid_request", "error_description": "token AT-1 bad"},
                                        code=400))
        detail = self.failure(h, self.introspect(h)).detail
        self.assertEqual(detail, "the introspection endpoint answered HTTP 400 invalid_request")

    def test_no_endpoint(self):
        """No introspection endpoint: 502 no_introspection_endpoint, nothing sent."""
        h = _ready(self)
        self.assertIsNone(h.provider.metadata.introspection_endpoint)
        before = len(h.idp.seen)
        error = self.failure(h, self.introspect(h))
        self.assertEqual((error.status, error.reason), (502, "no_introspection_endpoint"))
        self.assertEqual(len(h.idp.seen), before)

    def test_endpoint_from_discovery(self):
        h = provider_stack(start=False)
        h.idp.handlers[DISCOVERY_PATH] = lambda r: answer(
            discovery_document(introspection_endpoint=INTROSPECTION_ENDPOINT))
        h.idp.handlers[INTROSPECTION_PATH] = lambda r: answer(ACTIVE)
        h.provider.start()
        h.flush()
        self.assertEqual(self.successResultOf(self.introspect(h)), ACTIVE)
        self.assertEqual(h.idp.count(INTROSPECTION_PATH), 1)

    def test_not_ready(self):
        h = provider_stack(start=False, endpoints={"introspection_endpoint": INTROSPECTION_ENDPOINT})
        error = self.failure(h, self.introspect(h))
        self.assertEqual((error.status, error.reason), (503, "not_ready"))
        self.assertEqual(h.idp.seen, [])

    def test_timeout_not_retried(self):
        """No answer within the timeout: 504, the request cancelled, no second attempt, no timer left."""
        h = _introspecting(self, HOLD, timeout=3.0)
        d = self.introspect(h)
        h.clock.advance(2.9)
        h.flush()
        self.assertNoResult(d)
        h.clock.advance(0.1)
        h.flush()
        error = self.failure(h, d)
        self.assertEqual((error.status, error.reason), (504, "timeout"))
        self.assertTrue(h.idp.last(INTROSPECTION_PATH).lost)
        h.clock.advance(1000)
        h.flush()
        self.assertEqual(h.idp.count(INTROSPECTION_PATH), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_failure_not_retried(self):
        h = _introspecting(self, answer(b"", code=503, content_type=""))
        self.failure(h, self.introspect(h))
        h.clock.advance(1000)
        h.flush()
        self.assertEqual(h.idp.count(INTROSPECTION_PATH), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_too_large(self):
        h = _introspecting(self, answer(dict(ACTIVE, padding="x" * 2000)), max_response_size=1000)
        self.assertEqual(self.failure(h, self.introspect(h)).reason, "response_too_large")

    def test_unreachable(self):
        http = FailingHTTP()
        clock = Clock()
        provider = Provider(
            ISSUER, ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET), http, clock, discovery=False,
            endpoints={"authorization_endpoint": AUTHORIZATION_ENDPOINT, "token_endpoint": TOKEN_ENDPOINT,
                       "jwks_uri": JWKS_URI, "introspection_endpoint": INTROSPECTION_ENDPOINT},
        )
        error = self.failureResultOf(Deferred.fromCoroutine(provider.introspect("AT-1")), ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "unreachable"))
        clock.advance(1000)
        self.assertEqual(http.calls, 1)

    def test_stop_cancels(self):
        h = _introspecting(self, HOLD)
        d = self.introspect(h)
        h.provider.stop()
        h.flush()
        self.assertEqual(self.failure(h, d).reason, "stopped")
        self.assertTrue(h.idp.last(INTROSPECTION_PATH).lost)

    def test_nothing_secret_logged(self):
        events = capture_logs(self)
        for result in (answer({"error": "invalid_request", "error_description": "AT-1"}, code=400),
                       answer(b"AT-1", code=500, content_type="text/plain"), answer(b"AT-1"), HOLD):
            h = _introspecting(self, result)
            d = self.introspect(h)
            h.clock.advance(10)
            h.flush()
            self.failure(h, d)
        text = logged_text(events) + repr(events)
        for secret in ("AT-1", CLIENT_SECRET, "YSUzQWI6cCU0MHNzK3clMjVyZA"):
            self.assertNotIn(secret, text)
