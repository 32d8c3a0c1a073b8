"""
The provider's endpoints that the proxy calls on behalf of a user: the
token endpoint (the code exchange and refresh), userinfo, revocation and
introspection, and the URL of RP-initiated logout.

The code exchange, refresh, revocation and introspection are made once
(a code is single-use; the others change state or are not worth repeating);
only userinfo, an idempotent GET, is retried as the transport allows.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from twisted.web.http_headers import Headers

from .client_auth import ClientAuthenticator
from .discovery import ProviderMetadata
from .transport import ACCEPT_JSON, Answer, ProviderError, Transport, oauth_error_of, parse_json

__all__ = ["Endpoints"]


def _add_query(url: str, params: Sequence[Tuple[str, str]]) -> str:
    """
    C{url} with C{params} added to its query. What the query already holds is
    kept as it is written, except the parameters named in C{params}, which
    are replaced (a parameter must not appear twice: RFC 6749, 3.1).
    """
    parts = urlsplit(url)
    names = {name for name, _ in params}
    kept = [
        piece
        for piece in parts.query.split("&")
        if piece and unquote_plus(piece.split("=", 1)[0]) not in names
    ]
    return urlunsplit(parts._replace(query="&".join([*kept, urlencode(params)])))


class Endpoints:
    """
    The calls to one provider's endpoints.

    @param metadata: the provider's metadata as known now (None before
        discovery): where the endpoints are.
    @param auth: authenticates this client to the token, revocation and
        introspection endpoints.
    """

    def __init__(
        self,
        transport: Transport,
        auth: ClientAuthenticator,
        metadata: Callable[[], Optional[ProviderMetadata]],
    ) -> None:
        self._transport = transport
        self._auth = auth
        self._metadata = metadata

    def _require_metadata(self) -> ProviderMetadata:
        metadata = self._metadata()
        if metadata is None:
            raise ProviderError(503, "not_ready", "the provider metadata is not loaded yet")
        return metadata

    async def _token_request(
        self, grant: str, fields: List[Tuple[str, str]], secrets_sent: List[str], require_id_token: bool
    ) -> Dict[str, Any]:
        metadata = self._require_metadata()
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        secrets_sent = secrets_sent + self._auth.authenticate(metadata.token_endpoint, fields, headers)
        body = urlencode(fields).encode("ascii")
        answer = await self._transport.request(
            "token endpoint", "POST", metadata.token_endpoint, accept=ACCEPT_JSON, headers=headers, body=body
        )
        if answer.code != 200:
            raise self._token_error(grant, answer, secrets_sent)
        document = parse_json(answer, "token endpoint")
        return self._check_tokens(document, require_id_token)

    def _token_error(self, grant: str, answer: Answer, secrets_sent: List[str]) -> ProviderError:
        oauth_error, detail = oauth_error_of(answer, "token endpoint", secrets_sent)
        if oauth_error is None:
            return ProviderError(502, "bad_token_response", detail)
        status = 401 if oauth_error == "invalid_grant" else 502
        return ProviderError(status, "token_error", detail, oauth_error=oauth_error)

    @staticmethod
    def _check_tokens(document: Any, require_id_token: bool) -> Dict[str, Any]:
        def bad(detail: str) -> ProviderError:
            return ProviderError(502, "bad_token_response", detail)

        if not isinstance(document, dict):
            raise bad("the token response is not a JSON object")
        access_token = document.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise bad("the token response has no access_token")
        token_type = document.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise bad("the token_type is not Bearer")
        id_token = document.get("id_token")
        if (require_id_token or id_token is not None) and (not isinstance(id_token, str) or not id_token):
            raise bad("the token response has no id_token")
        if "expires_in" in document and document["expires_in"] is not None:
            expires_in = document["expires_in"]
            if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 0:
                raise bad("expires_in is not a non-negative integer")
        if "refresh_token" in document and document["refresh_token"] is not None:
            refresh_token = document["refresh_token"]
            if not isinstance(refresh_token, str) or not refresh_token:
                raise bad("refresh_token is not a non-empty string")
        return dict(document)

    async def exchange_code(
        self, code: str, redirect_uri: str, code_verifier: Optional[str]
    ) -> Dict[str, Any]:
        """
        Exchange an authorization code for tokens (never retried: a code
        works once).

        @return: the token response: C{access_token}, C{token_type} (Bearer)
            and C{id_token} present; C{expires_in} (int) and
            C{refresh_token} (str) checked when present; other members as the
            provider sent them.
        @raise ProviderError: 401 C{token_error} for C{invalid_grant}; 502
            C{token_error} for another OAuth error; 502
            C{bad_token_response}, C{bad_json}, C{unreachable},
            C{response_too_large}; 504 C{timeout}; 503 C{not_ready}.
        """
        fields = [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect_uri)]
        sent = [code]
        if code_verifier is not None:
            fields.append(("code_verifier", code_verifier))
            sent.append(code_verifier)
        return await self._token_request("authorization_code", fields, sent, require_id_token=True)

    async def refresh(self, refresh_token: str) -> Dict[str, Any]:
        """
        Use a refresh token (RFC 6749, 6; never retried). Like
        L{exchange_code}, but the C{id_token} is optional.

        @return: the token response: the new C{access_token} and
            C{token_type} (Bearer); C{expires_in} (int), C{refresh_token}
            (str: the provider rotated it; absent or None: keep using the
            old one) and C{id_token} (str: to be validated without a nonce,
            and for the same C{sub}) checked when present and not null;
            other members as the provider sent them.
        @raise ProviderError: 401 C{token_error} with C{oauth_error}
            C{invalid_grant} when the refresh token is expired or revoked
            (the session is over); otherwise as L{exchange_code}.
        """
        fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
        return await self._token_request("refresh_token", fields, [refresh_token], require_id_token=False)

    # -- logout

    async def revoke(self, token: str, token_type_hint: Optional[str] = None) -> None:
        """
        Revoke a token at the revocation endpoint (RFC 7009; never retried).

        The request is a form POST of C{token} and, when given,
        C{token_type_hint} (C{access_token} or C{refresh_token}), with the
        client authentication of the token endpoint (a C{private_key_jwt}
        assertion has the token endpoint as its audience, as for the token
        endpoint: it names the authorization server). Only a 200 answer is a
        success; its body is ignored.

        @raise ProviderError: 502 C{no_revocation_endpoint}; 502
            C{revocation_failed} for any other status, with the
            C{oauth_error} of a 4xx JSON error answer (e.g.
            C{unsupported_token_type}), else None; 502 C{unreachable},
            C{response_too_large}; 504 C{timeout}; 503 C{not_ready} or
            C{stopped}.
        """
        metadata = self._require_metadata()
        endpoint = metadata.revocation_endpoint
        if endpoint is None:
            raise ProviderError(502, "no_revocation_endpoint", "the provider has no revocation endpoint")
        fields = [("token", token)]
        if token_type_hint:
            fields.append(("token_type_hint", token_type_hint))
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        secrets_sent = [token, *self._auth.authenticate(metadata.token_endpoint, fields, headers)]
        body = urlencode(fields).encode("ascii")
        answer = await self._transport.request(
            "revocation endpoint", "POST", endpoint, accept=ACCEPT_JSON, headers=headers, body=body
        )
        if answer.code == 200:
            return
        oauth_error, detail = oauth_error_of(answer, "revocation endpoint", secrets_sent)
        raise ProviderError(502, "revocation_failed", detail, oauth_error=oauth_error)

    # -- introspection

    async def introspect(self, token: str) -> Dict[str, Any]:
        """
        Ask the introspection endpoint about an access token (RFC 7662;
        never retried).

        The request is a form POST of C{token} and C{token_type_hint=
        access_token}, with the client authentication of the token endpoint
        (a C{private_key_jwt} assertion has the token endpoint as its
        audience, as for revocation).

        @return: the answer, a JSON object whose C{active} is a boolean, as
            the provider sent it: C{"active": false} is an answer, not an
            error. Nothing else in it is checked here.
        @raise ProviderError: 502 C{no_introspection_endpoint}; 502
            C{introspection_failed} for any status but 200, with the
            C{oauth_error} of a 4xx JSON error answer (e.g.
            C{invalid_client}), else None; 502 C{bad_json}; 502
            C{bad_introspection} (not an object, or no boolean C{active});
            502 C{unreachable}, C{response_too_large}; 504 C{timeout}; 503
            C{not_ready} or C{stopped}.
        """
        metadata = self._require_metadata()
        endpoint = metadata.introspection_endpoint
        if endpoint is None:
            raise ProviderError(
                502, "no_introspection_endpoint", "the provider has no introspection endpoint"
            )
        fields = [("token", token), ("token_type_hint", "access_token")]
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        secrets_sent = [token, *self._auth.authenticate(metadata.token_endpoint, fields, headers)]
        body = urlencode(fields).encode("ascii")
        answer = await self._transport.request(
            "introspection endpoint", "POST", endpoint, accept=ACCEPT_JSON, headers=headers, body=body
        )
        if answer.code != 200:
            oauth_error, detail = oauth_error_of(answer, "introspection endpoint", secrets_sent)
            raise ProviderError(502, "introspection_failed", detail, oauth_error=oauth_error)
        document = parse_json(answer, "introspection endpoint")
        if not isinstance(document, dict):
            raise ProviderError(502, "bad_introspection", "the introspection answer is not a JSON object")
        if not isinstance(document.get("active"), bool):
            raise ProviderError(502, "bad_introspection", "the introspection answer has no boolean 'active'")
        return document

    def end_session_url(
        self,
        id_token_hint: Optional[str],
        post_logout_redirect_uri: Optional[str],
        state: Optional[str] = None,
    ) -> Optional[str]:
        """
        The URL to send the browser to for RP-initiated logout (OpenID
        Connect RP-Initiated Logout 1.0, 2): the C{end_session_endpoint} with
        C{id_token_hint}, C{client_id}, C{post_logout_redirect_uri} and
        C{state} added to its query, in that order. C{client_id} is always
        there; the others only when given (neither None nor empty). A query
        the endpoint URL already holds is kept, less any parameter of the
        same name as one added here.

        @return: the URL, or None when the metadata is not loaded or the
            provider has no C{end_session_endpoint}.
        """
        metadata = self._metadata()
        if metadata is None or not metadata.end_session_endpoint:
            return None
        params: List[Tuple[str, str]] = []
        if id_token_hint:
            params.append(("id_token_hint", id_token_hint))
        params.append(("client_id", self._auth.client.client_id))
        if post_logout_redirect_uri:
            params.append(("post_logout_redirect_uri", post_logout_redirect_uri))
        if state:
            params.append(("state", state))
        return _add_query(metadata.end_session_endpoint, params)

    # -- userinfo

    async def userinfo(self, access_token: str) -> Dict[str, Any]:
        """
        The userinfo claims for an access token.

        Signed or encrypted userinfo answers (C{application/jwt}) are not
        supported: 502 C{unsupported_userinfo}. Whose claims they are (the
        C{sub}, missing or not) is for the caller to judge against the ID
        token: a wrong or missing subject is a refused login, not a bad
        answer from the IdP.

        @raise ProviderError: 502 C{no_userinfo_endpoint}, C{bad_status},
            C{bad_userinfo} (not a JSON object), C{unsupported_userinfo},
            C{bad_json}...
        """
        metadata = self._require_metadata()
        if metadata.userinfo_endpoint is None:
            raise ProviderError(502, "no_userinfo_endpoint", "the provider has no userinfo endpoint")
        headers = Headers({b"authorization": [b"Bearer " + access_token.encode("utf-8")]})
        answer = await self._transport.idempotent(
            "userinfo endpoint", metadata.userinfo_endpoint, accept=ACCEPT_JSON, headers=headers
        )
        if answer.code != 200:
            raise ProviderError(502, "bad_status", f"the userinfo endpoint answered HTTP {answer.code}")
        if answer.content_type() == "application/jwt":
            raise ProviderError(502, "unsupported_userinfo", "signed or encrypted userinfo is not supported")
        document = parse_json(answer, "userinfo endpoint")
        if not isinstance(document, dict):
            raise ProviderError(502, "bad_userinfo", "the userinfo answer is not a JSON object")
        return document
