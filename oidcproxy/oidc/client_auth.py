"""
How this client authenticates to the provider's token endpoint (OpenID
Connect Core 1.0, 9): C{client_secret_basic}, C{client_secret_post},
C{private_key_jwt} (a signed, short-lived assertion per request) or
C{none}. The token, revocation and introspection requests all use it.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, List, Optional, Tuple
from urllib.parse import quote_plus

import attr
import jwt
from cryptography.hazmat.primitives import serialization
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

__all__ = ["ASSERTION_ALGORITHMS", "ASSERTION_LIFETIME", "CLIENT_AUTH_METHODS", "ClientAuth",
           "ClientAuthenticator"]

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")

# Algorithms a private_key_jwt client assertion may be signed with.
ASSERTION_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

ASSERTION_LIFETIME = 60
"""Seconds a private_key_jwt client assertion is valid."""

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _load_private_key(pem: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        # The message names the problem (not PEM, encrypted...), never the key.
        raise ValueError(
            f"private_key_pem is not an unencrypted PEM private key ({type(e).__name__})"
        ) from None


@attr.s(frozen=True, auto_attribs=True)
class ClientAuth:
    """
    How this client authenticates to the token endpoint (OpenID Connect Core
    1.0, 9). Secrets are left out of C{repr}.

    @raise ValueError: an unknown method, or a method without what it needs.
    """

    client_id: str
    method: str = "client_secret_basic"
    client_secret: Optional[str] = attr.ib(default=None, repr=False)
    private_key_pem: Optional[bytes] = attr.ib(default=None, repr=False)
    private_key_id: Optional[str] = None
    private_key_alg: str = "RS256"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ValueError("client_id must be a non-empty string")
        if self.method not in CLIENT_AUTH_METHODS:
            raise ValueError(f"unknown client authentication method {self.method!r}; "
                             f"use one of {', '.join(CLIENT_AUTH_METHODS)}")
        if self.method in ("client_secret_basic", "client_secret_post"):
            if not isinstance(self.client_secret, str) or not self.client_secret:
                raise ValueError(f"{self.method} needs a non-empty client_secret")
        if self.method == "private_key_jwt":
            if not isinstance(self.private_key_pem, bytes) or not self.private_key_pem:
                raise ValueError("private_key_jwt needs private_key_pem (PEM bytes)")
            if self.private_key_alg not in ASSERTION_ALGORITHMS:
                raise ValueError(f"private_key_alg {self.private_key_alg!r} is not one of "
                                 f"{', '.join(sorted(ASSERTION_ALGORITHMS))}")
            if self.private_key_id is not None and (
                not isinstance(self.private_key_id, str) or not self.private_key_id
            ):
                raise ValueError("private_key_id must be a non-empty string or None")
            key = _load_private_key(self.private_key_pem)
            try:
                jwt.encode({"probe": True}, key, algorithm=self.private_key_alg)
            except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
                raise ValueError(
                    f"the private key cannot sign {self.private_key_alg} (wrong key type or curve?)"
                ) from None


class ClientAuthenticator:
    """
    Adds a L{ClientAuth}'s credentials to the form and headers of a request
    to the token endpoint (or the revocation or introspection endpoint,
    which authenticate the same way).

    @param clock: the time of the assertions' C{iat} and C{exp}.
    """

    def __init__(self, client: ClientAuth, clock: IReactorTime) -> None:
        self.client = client
        self._clock = clock
        self._private_key: Any = None
        if client.method == "private_key_jwt" and client.private_key_pem is not None:
            self._private_key = _load_private_key(client.private_key_pem)

    def _client_assertion(self, audience: str) -> str:
        now = int(self._clock.seconds())
        claims = {
            "iss": self.client.client_id,
            "sub": self.client.client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self.client.private_key_id} if self.client.private_key_id else None
        return jwt.encode(claims, self._private_key, algorithm=self.client.private_key_alg, headers=headers)

    def authenticate(
        self, token_endpoint: str, fields: List[Tuple[str, str]], headers: Headers
    ) -> List[str]:
        """
        Add the client authentication to a request; a C{private_key_jwt}
        assertion names the token endpoint as its audience (it names the
        authorization server, whichever of its endpoints is asked).

        @return: the secret values added, to keep them out of logs.
        """
        client = self.client
        if client.method == "client_secret_basic":
            assert client.client_secret is not None
            # RFC 6749, 2.3.1: both form-urlencoded before the Basic encoding
            # (standard base64 with padding: RFC 7617, not base64url).
            userpass = quote_plus(client.client_id, safe="") + ":" + quote_plus(client.client_secret, safe="")
            headers.setRawHeaders(
                b"authorization", [b"Basic " + base64.b64encode(userpass.encode("ascii"))]
            )
            return [client.client_secret]
        if client.method == "client_secret_post":
            assert client.client_secret is not None
            fields.append(("client_id", client.client_id))
            fields.append(("client_secret", client.client_secret))
            return [client.client_secret]
        if client.method == "private_key_jwt":
            assertion = self._client_assertion(token_endpoint)
            fields.append(("client_id", client.client_id))
            fields.append(("client_assertion_type", _ASSERTION_TYPE))
            fields.append(("client_assertion", assertion))
            return [assertion]
        fields.append(("client_id", client.client_id))
        return []
