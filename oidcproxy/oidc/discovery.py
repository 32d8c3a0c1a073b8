"""
The provider's metadata (OpenID Connect Discovery 1.0): what we use of its
discovery document, checked, and the request that loads it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import attr

from ..config import ENDPOINT_KEYS
from .transport import ACCEPT_JSON, PRINTABLE, ProviderError, Transport, parse_json

__all__ = ["ProviderMetadata", "discover", "is_http_url"]

# Metadata fields that hold URLs; the ones `endpoints` may set.
URL_FIELDS = ("issuer", *ENDPOINT_KEYS)
REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
_OPTIONAL_ENDPOINTS = (
    "userinfo_endpoint",
    "end_session_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
)


def is_http_url(value: Any) -> bool:
    """An absolute http(s) URL with a host, no fragment, no whitespace or controls."""
    if not isinstance(value, str) or not value or PRINTABLE.search(value) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and not parts.fragment and "#" not in value


def _strings(value: Any) -> Optional[Tuple[str, ...]]:
    """A JSON list of strings as a tuple, or None if it is anything else."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return tuple(value)


def _bad_discovery(detail: str) -> ProviderError:
    return ProviderError(502, "bad_discovery", detail)


@attr.s(frozen=True, auto_attribs=True)
class ProviderMetadata:
    """What we use of a provider's discovery document (OpenID Connect Discovery 1.0, 3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: Optional[str] = None
    end_session_endpoint: Optional[str] = None
    revocation_endpoint: Optional[str] = None
    introspection_endpoint: Optional[str] = None
    id_token_signing_alg_values_supported: Tuple[str, ...] = ("RS256",)
    code_challenge_methods_supported: Tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False

    @classmethod
    def from_discovery(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        """
        Validate a parsed discovery document.

        The C{issuer} must be exactly C{expected_issuer} (not even a trailing
        slash may differ: OpenID Connect Discovery 1.0, 4.3). The authorization,
        token and JWKS endpoints are required; every endpoint present must be
        an absolute http(s) URL (C{null} counts as absent). Unknown members are
        ignored.

        @raise ProviderError: 502 C{issuer_mismatch} or C{bad_discovery}.
        """
        if not isinstance(document, dict):
            raise _bad_discovery("the discovery document is not a JSON object")
        issuer = document.get("issuer")
        if not isinstance(issuer, str):
            raise _bad_discovery("the discovery document has no string 'issuer'")
        if issuer != expected_issuer:
            shown = PRINTABLE.sub("?", issuer[:200])
            raise ProviderError(
                502,
                "issuer_mismatch",
                f"the discovery document is for issuer {shown!r}, not {expected_issuer!r}",
            )
        values: Dict[str, Any] = {"issuer": issuer}
        for name in REQUIRED_ENDPOINTS:
            if not is_http_url(document.get(name)):
                raise _bad_discovery(f"'{name}' is missing or not an http(s) URL")
            values[name] = document[name]
        for name in _OPTIONAL_ENDPOINTS:
            value = document.get(name)
            if value is None:
                continue
            if not is_http_url(value):
                raise _bad_discovery(f"'{name}' is not an http(s) URL")
            values[name] = value

        name = "id_token_signing_alg_values_supported"
        if document.get(name) is not None:
            algs = _strings(document[name])
            if not algs:
                raise _bad_discovery(f"'{name}' is not a non-empty list of strings")
            values[name] = algs
        name = "code_challenge_methods_supported"
        if document.get(name) is not None:
            methods = _strings(document[name])
            if methods is None:
                raise _bad_discovery(f"'{name}' is not a list of strings")
            values[name] = methods
        name = "authorization_response_iss_parameter_supported"
        if document.get(name) is not None:
            if not isinstance(document[name], bool):
                raise _bad_discovery(f"'{name}' is not a boolean")
            values[name] = document[name]
        return cls(**values)


def discovery_url(issuer: str) -> str:
    """Where the discovery document of C{issuer} is (one trailing slash of the issuer dropped)."""
    base = issuer[:-1] if issuer.endswith("/") else issuer
    return base + "/.well-known/openid-configuration"


async def discover(
    transport: Transport,
    issuer: str,
    params: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> ProviderMetadata:
    """
    Load and check the discovery document of C{issuer} (an idempotent
    request: retried as the transport allows), with the endpoints in
    C{overrides} put in place of the provider's.

    @param params: extra query parameters of the request.
    @raise ProviderError: 502 C{bad_status}, C{bad_json}, C{bad_discovery},
        C{issuer_mismatch}, C{unreachable}...; 504 C{timeout}.
    """
    answer = await transport.idempotent(
        "discovery", discovery_url(issuer), accept=ACCEPT_JSON, params=params
    )
    if answer.code != 200:
        raise ProviderError(502, "bad_status", f"the discovery request answered HTTP {answer.code}")
    metadata = ProviderMetadata.from_discovery(parse_json(answer, "discovery"), issuer)
    if overrides:
        metadata = attr.evolve(metadata, **overrides)
    return metadata
