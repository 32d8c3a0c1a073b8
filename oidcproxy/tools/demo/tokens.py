"""
Tokens: the signing key and the RS256 JWTs it makes and checks, and the
client's back channel: C{/token} (authorization code with PKCE, refresh
tokens rotated on every use) and C{/revoke}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ...core.encoding import b64url_encode
from .accounts import DemoClient, DemoUser, same
from .pages import BadRequest, read_form, send, send_json
from .records import REFRESH_LIFETIME, TOKEN_LIFETIME, Grant, Ledger

_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def _s256(verifier: str) -> str:
    return b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())


class OAuthError(Exception):
    """An error answer of the token endpoint (RFC 6749, 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.status = status


class Signer:
    """
    The provider's RSA key: it signs ID tokens and access tokens and checks
    the ones it gets back (hints, bearer tokens), times against C{clock}.
    """

    def __init__(self, issuer: str, audience: str, clock: Any,
                 key: Optional[rsa.RSAPrivateKey] = None) -> None:
        self.issuer = issuer
        self.audience = audience
        self.clock = clock
        self._key = key if key is not None else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = "demo-" + secrets.token_hex(4)

    def public_jwk(self) -> Dict[str, Any]:
        jwk: Dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.key_id, "use": "sig", "alg": "RS256"})
        return jwk

    def sign(self, claims: Dict[str, Any], typ: str) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256",
                          headers={"kid": self.key_id, "typ": typ})

    def verify(self, token: str, typ: str, check_exp: bool) -> Optional[Dict[str, Any]]:
        """The claims of a token this provider signed, for this client; None if it is not."""
        try:
            header = jwt.get_unverified_header(token)
            # Times are checked below, against the injected clock.
            claims = jwt.decode(token, self._key.public_key(), algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False, "verify_aud": False})
        except jwt.PyJWTError:
            return None
        exp = claims.get("exp")
        if header.get("typ") != typ or claims.get("iss") != self.issuer or \
                claims.get("aud") != self.audience or not isinstance(exp, int) or \
                (check_exp and self.clock.seconds() >= exp):
            return None
        return claims


def claims_of(user: DemoUser, scopes: Sequence[str]) -> Dict[str, Any]:
    """The claims of C{user} that C{scopes} ask for."""
    claims: Dict[str, Any] = {}
    if "profile" in scopes:
        claims.update(name=user.name, preferred_username=user.username)
    if "email" in scopes:
        claims.update(email=user.email, email_verified=True)
    if "groups" in scopes:
        claims["groups"] = list(user.groups)
    return claims


class TokenEndpoint:
    """C{/token} and C{/revoke}: the client authenticated, then the grant or the revocation."""

    def __init__(self, issuer: str, client: DemoClient, ledger: Ledger, signer: Signer) -> None:
        self.issuer = issuer
        self.client = client
        self.ledger = ledger
        self.signer = signer

    def token(self, request: Any) -> bytes:
        self.ledger.prune()
        try:
            form = self.client_form(request)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                document = self.code_grant(form)
            elif grant_type == "refresh_token":
                document = self.refresh_grant(form)
            else:
                raise OAuthError("unsupported_grant_type",
                                 "only authorization_code and refresh_token")
        except OAuthError as e:
            headers = {b"pragma": b"no-cache"}
            if e.status == 401:
                headers[b"www-authenticate"] = b'Basic realm="oidcproxy demo"'
            return send_json(request, e.status,
                             {"error": e.error, "error_description": e.description}, headers)
        return send_json(request, 200, document, {b"pragma": b"no-cache"})

    def revoke(self, request: Any) -> bytes:
        """RFC 7009: revoke a refresh token (and its login) or an access token."""
        try:
            form = self.client_form(request)
        except OAuthError as e:
            return send_json(request, e.status, {"error": e.error,
                                                 "error_description": e.description})
        token = form.get("token", "")
        grant = self.ledger.grants.get(token)
        if grant is not None:
            self.ledger.revoke_login(grant.sid)
        else:
            claims = self.signer.verify(token, "at+jwt", check_exp=True)
            if claims is not None:
                self.ledger.revoked_jtis[str(claims.get("jti"))] = float(claims["exp"])
        # An unknown token is no error (RFC 7009, 2.2).
        return send(request, 200, b"application/json", b"{}")

    def client_form(self, request: Any) -> Dict[str, str]:
        """
        The form of a client's back-channel request (token, revocation), the
        client authenticated.

        @raise OAuthError: an unreadable form, or a client that is not ours.
        """
        try:
            form = read_form(request)
        except BadRequest as e:
            raise OAuthError("invalid_request", e.message) from None
        self.authenticate_client(request, form)
        return form

    def authenticate_client(self, request: Any, form: Dict[str, str]) -> None:
        """client_secret_basic or client_secret_post (not both)."""
        header = request.requestHeaders.getRawHeaders(b"authorization")
        if header is not None and "client_secret" in form:
            raise OAuthError("invalid_request", "use one client authentication method")
        if header is not None:
            scheme, _, value = header[0].partition(b" ")
            try:
                if scheme.lower() != b"basic":
                    raise ValueError("not Basic")
                client_id, sep, secret = base64.b64decode(value, validate=True).decode(
                    "utf-8").partition(":")
                if not sep:
                    raise ValueError("no colon")
            except (ValueError, UnicodeDecodeError):
                raise OAuthError("invalid_client", "bad client credentials", 401) from None
            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not (same(client_id, self.client.client_id) and same(secret, self.client.client_secret)):
            raise OAuthError("invalid_client", "bad client credentials", 401)
        if "client_id" in form and form["client_id"] != self.client.client_id:
            raise OAuthError("invalid_client", "bad client credentials", 401)

    def code_grant(self, form: Dict[str, str]) -> Dict[str, Any]:
        code = self.ledger.codes.get(form.get("code", ""))
        if code is None:
            raise OAuthError("invalid_grant", "unknown or expired code")
        if code.used:
            # RFC 6749, 4.1.2: a code used twice revokes what it gave.
            self.ledger.revoke_login(code.sid)
            raise OAuthError("invalid_grant", "the code was used already")
        code.used = True
        if form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri is not the authorization request's")
        verifier = form.get("code_verifier", "")
        if not _PKCE_VERIFIER.fullmatch(verifier) or not same(_s256(verifier), code.challenge):
            raise OAuthError("invalid_grant", "PKCE verification failed")
        return self.issue(code.user, code.scopes, code.sid, code.auth_time, code.nonce)

    def refresh_grant(self, form: Dict[str, str]) -> Dict[str, Any]:
        token = form.get("refresh_token", "")
        grant = self.ledger.grants.get(token)
        if grant is None or grant.sid in self.ledger.revoked_sids:
            raise OAuthError("invalid_grant", "unknown, expired or revoked refresh token")
        if grant.used:
            # A rotated token used again: someone has a copy. End the login.
            self.ledger.revoke_login(grant.sid)
            raise OAuthError("invalid_grant", "the refresh token was used already")
        grant.used = True
        scopes = grant.scopes
        if form.get("scope"):
            asked = tuple(form["scope"].split())
            if not set(asked) <= set(scopes):
                raise OAuthError("invalid_scope", "more scope than the login granted")
            scopes = asked
        return self.issue(grant.user, scopes, grant.sid, grant.auth_time, None)

    def issue(self, user: DemoUser, scopes: Tuple[str, ...], sid: str, auth_time: int,
              nonce: Optional[str]) -> Dict[str, Any]:
        """A token response: a new access token, ID token and refresh token."""
        now = int(self.ledger.clock.seconds())
        profile = claims_of(user, scopes)
        access_token = self.signer.sign({
            "iss": self.issuer, "sub": user.sub, "aud": self.client.client_id,
            "client_id": self.client.client_id, "iat": now, "exp": now + TOKEN_LIFETIME,
            "jti": secrets.token_urlsafe(16), "scope": " ".join(scopes), "sid": sid, **profile,
        }, "at+jwt")
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        id_claims: Dict[str, Any] = {
            "iss": self.issuer, "sub": user.sub, "aud": self.client.client_id,
            "iat": now, "exp": now + TOKEN_LIFETIME, "auth_time": auth_time, "sid": sid,
            "at_hash": b64url_encode(digest[:16]), **profile,
        }
        if nonce is not None:
            id_claims["nonce"] = nonce
        refresh_token = secrets.token_urlsafe(32)
        self.ledger.grants[refresh_token] = Grant(user, scopes, sid, auth_time,
                                                  self.ledger.clock.seconds() + REFRESH_LIFETIME)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "refresh_token": refresh_token,
            "id_token": self.signer.sign(id_claims, "JWT"),
            "scope": " ".join(scopes),
        }
