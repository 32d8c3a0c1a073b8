"""
The development OpenID Provider: the parts (L{login}, L{tokens}, the
L{records} they share) behind one resource tree, with discovery, JWKS,
C{/userinfo} and C{/end_session}.
"""

from __future__ import annotations

from html import escape
from typing import Any, Dict, Optional, Sequence
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource

from .accounts import DEMO_USERS, SCOPES, DemoClient, DemoUser
from .login import Authorization
from .pages import BadRequest, Endpoint, Root, page, read_query, send, send_json, with_query
from .records import Grant, Ledger
from .tokens import Signer, TokenEndpoint, claims_of

log = Logger(namespace="oidcproxy.tools.demo")


class DevelopmentProvider:
    """
    An OpenID Provider for trying the proxy out; B{not for production}.

    It knows one client and a few users (L{DEMO_USERS}), keeps pending
    logins, codes and refresh tokens in memory, and has no single sign-on
    session of its own: every login shows the form. It checks what a real
    provider checks: the client id and the exact redirect URI (else an error
    page, never a redirect), C{response_type=code}, the C{openid} scope,
    C{state}, C{nonce} and a PKCE S256 challenge (else an error redirect);
    the client's secret (Basic or in the body), the code's redirect URI and
    PKCE verifier at the token endpoint. A code works once, within
    L{CODE_LIFETIME} seconds; a second use revokes what the first one got.
    Refresh tokens are rotated on every use; using a rotated one again
    revokes the whole login's tokens.

    @param issuer: the provider's URL (C{http://127.0.0.1:PORT}).
    @param clock: an C{IReactorTime}; every time here comes from it.
    @param signing_key: the RSA key that signs tokens (default: a new one).
    """

    def __init__(self, issuer: str, client: DemoClient, clock: Any,
                 users: Sequence[DemoUser] = DEMO_USERS,
                 signing_key: Optional[rsa.RSAPrivateKey] = None) -> None:
        self.issuer = issuer.rstrip("/")
        self.client = client
        self.clock = clock
        self.users = {user.username: user for user in users}
        self._signer = Signer(self.issuer, client.client_id, clock, signing_key)
        self.key_id = self._signer.key_id
        parts = urlsplit(self.issuer)
        self._ledger = Ledger(clock)
        self._authorization = Authorization(self.issuer, client, self.users, self._ledger,
                                            f"{parts.scheme}://{parts.netloc}".encode("ascii"))
        self._tokens = TokenEndpoint(self.issuer, client, self._ledger, self._signer)

    @property
    def _grants(self) -> Dict[str, Grant]:
        """The live refresh tokens."""
        return self._ledger.grants

    def resource(self) -> IResource:
        """The provider as a resource tree, to be served at the issuer URL."""
        root = Root()
        root.putChild(b"", Endpoint(self._home, (b"GET",)))
        well_known = Resource()
        well_known.putChild(b"openid-configuration", Endpoint(self._discovery, (b"GET",)))
        root.putChild(b".well-known", well_known)
        root.putChild(b"jwks", Endpoint(self._jwks, (b"GET",)))
        root.putChild(b"authorize", Endpoint(self._authorization.render, (b"GET", b"POST")))
        root.putChild(b"token", Endpoint(self._tokens.token, (b"POST",)))
        root.putChild(b"userinfo", Endpoint(self._userinfo, (b"GET", b"POST")))
        root.putChild(b"end_session", Endpoint(self._end_session, (b"GET",)))
        root.putChild(b"revoke", Endpoint(self._tokens.revoke, (b"POST",)))
        return root

    # -- metadata

    def discovery_document(self) -> Dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "jwks_uri": base + "/jwks",
            "userinfo_endpoint": base + "/userinfo",
            "end_session_endpoint": base + "/end_session",
            "revocation_endpoint": base + "/revoke",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic",
                                                           "client_secret_post"],
            "scopes_supported": list(SCOPES),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce",
                                 "at_hash", "sid", "name", "preferred_username", "email",
                                 "email_verified", "groups"],
            "authorization_response_iss_parameter_supported": True,
        }

    def public_jwk(self) -> Dict[str, Any]:
        return self._signer.public_jwk()

    def _home(self, request: Any) -> bytes:
        rows = "".join(
            f"<tr><td>{escape(name)}</td><td>{escape(url)}</td></tr>"
            for name, url in self.discovery_document().items() if name.endswith("endpoint")
            or name in ("issuer", "jwks_uri"))
        return send(request, 200, b"text/html; charset=utf-8", page(
            "oidcproxy demo identity provider",
            "<p>This provider exists to try oidcproxy out. It knows two users, whose "
            "passwords are public, and forgets everything when it stops.</p>"
            f"<table>{rows}</table>"))

    def _discovery(self, request: Any) -> bytes:
        return send_json(request, 200, self.discovery_document())

    def _jwks(self, request: Any) -> bytes:
        return send_json(request, 200, {"keys": [self.public_jwk()]})

    # -- /userinfo, /end_session

    def _userinfo(self, request: Any) -> bytes:
        header = (request.requestHeaders.getRawHeaders(b"authorization") or [b""])[0]
        scheme, _, token = header.partition(b" ")
        claims = None
        if scheme.lower() == b"bearer" and token:
            claims = self._signer.verify(token.decode("ascii", "replace"), "at+jwt", check_exp=True)
        if claims is None or claims.get("sid") in self._ledger.revoked_sids or \
                claims.get("jti") in self._ledger.revoked_jtis:
            return send_json(request, 401, {"error": "invalid_token"}, {
                b"www-authenticate": b'Bearer realm="oidcproxy demo", error="invalid_token"'})
        user = next((u for u in self.users.values() if u.sub == claims["sub"]), None)
        if user is None:
            return send_json(request, 401, {"error": "invalid_token"})
        return send_json(request, 200, {"sub": user.sub,
                                        **claims_of(user, str(claims.get("scope")).split())})

    def _end_session(self, request: Any) -> bytes:
        """
        RP-initiated logout: revoke the login of C{id_token_hint} (expired
        hints are fine) and go back to a registered C{post_logout_redirect_uri}.
        """
        params = read_query(request)
        hint = params.get("id_token_hint")
        claims = self._signer.verify(hint, "JWT", check_exp=False) if hint else None
        if hint and claims is None:
            raise BadRequest("The id_token_hint is not an ID token of this provider.")
        if "client_id" in params and params["client_id"] != self.client.client_id:
            raise BadRequest("Unknown client_id.")
        back = params.get("post_logout_redirect_uri")
        if back is not None:
            if claims is None and "client_id" not in params:
                raise BadRequest("post_logout_redirect_uri needs id_token_hint or client_id.")
            if back not in self.client.post_logout_redirect_uris:
                raise BadRequest("The post_logout_redirect_uri is not registered for this client.")
        if claims is not None and isinstance(claims.get("sid"), str):
            self._ledger.revoke_login(claims["sid"])
            log.info("demo identity provider: logout of {sub}", sub=claims.get("sub"))
        if back is not None:
            state = params.get("state")
            location = with_query(back, [("state", state)]) if state else back
            return send(request, 302, b"text/html; charset=utf-8",
                        page("Logged out", f'<p><a href="{escape(location)}">Continue</a></p>'),
                        {b"location": location.encode("ascii")})
        return send(request, 200, b"text/html; charset=utf-8",
                    page("Logged out", "<p>You are logged out of the demo identity provider.</p>"))
