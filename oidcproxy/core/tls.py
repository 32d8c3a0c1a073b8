"""TLS helpers shared by every client the proxy has (upstreams, the IdP, Redis)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

_CERTIFICATE_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", flags=re.DOTALL
)


def _certificates(path: str) -> List[Any]:
    """
    The PEM certificates in the file C{path}, as Twisted C{Certificate}s.

    @raise ValueError: none, or one that does not parse.
    @raise OSError: the file cannot be read.
    """
    from OpenSSL import crypto
    from twisted.internet import ssl

    with open(path, "rb") as f:
        blocks = _CERTIFICATE_BLOCK.findall(f.read())
    if not blocks:
        raise ValueError(f"{path} holds no PEM certificate")
    try:
        return [ssl.Certificate.loadPEM(block) for block in blocks]
    except crypto.Error:
        raise ValueError(f"{path} holds an invalid PEM certificate") from None


def trust_root(path: str) -> Any:
    """
    A Twisted trust root of the PEM certificates in C{path} (a CA bundle).

    @raise ValueError: the file holds no (valid) PEM certificate.
    @raise OSError: the file cannot be read.
    """
    from twisted.internet import ssl

    return ssl.trustRootFromCertificates(_certificates(path))


_PRIVATE_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:[A-Z]+ )?)PRIVATE KEY-----\s.*?-----END \1PRIVATE KEY-----", flags=re.DOTALL
)


def client_certificate(cert_path: str, key_path: str) -> Tuple[Any, List[Any]]:
    """
    The client certificate for mutual TLS: the first certificate of
    C{cert_path} with the private key of C{key_path}, as a Twisted
    C{PrivateCertificate}, and the further certificates of C{cert_path}
    (intermediate CAs, sent along as the chain). Both may be the same file.

    @raise ValueError: no certificate, no key, an encrypted key, or a key that
        is not the certificate's.
    @raise OSError: a file cannot be read.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import crypto
    from twisted.internet import ssl
    from twisted.internet.error import VerifyError

    certificates = _certificates(cert_path)
    with open(key_path, "rb") as f:
        key_pem = f.read()
    found = _PRIVATE_KEY_BLOCK.search(key_pem)
    if found is None:
        raise ValueError(f"{key_path} holds no PEM private key")
    try:
        key = load_pem_private_key(found.group(0), password=None)
    except TypeError:
        raise ValueError(
            f"the private key in {key_path} is encrypted; give it unencrypted "
            "(a file only the proxy can read)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{key_path} holds an invalid or unsupported private key") from None
    try:
        pair = ssl.KeyPair(crypto.PKey.from_cryptography_key(key))  # type: ignore[arg-type]
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(certificates[0], pair)
    except TypeError:
        raise ValueError(f"{key_path} holds an unsupported kind of private key") from None
    except VerifyError:
        raise ValueError(
            f"the private key in {key_path} does not belong to the certificate in {cert_path}"
        ) from None
    return private, certificates[1:]


@implementer(IPolicyForHTTPS)
class ClientCertificatePolicy:
    """
    Twisted's C{BrowserLikePolicyForHTTPS} (the server's chain verified
    against C{trust_root}, or the platform's CAs when None, and its name
    against the URL's host) that also presents a client certificate to
    servers that ask for one (mutual TLS).

    @ivar certificate: the C{PrivateCertificate} presented.
    @ivar chain: further C{Certificate}s sent along (intermediate CAs).
    """

    def __init__(self, certificate: Any, chain: Sequence[Any] = (), trust_root: Any = None) -> None:
        self.certificate = certificate
        self.chain = tuple(chain)
        self.trust_root = trust_root

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet.ssl import optionsForClientTLS

        extra: Dict[str, Any] = {}
        if self.chain:
            extra["extraCertChain"] = [c.original for c in self.chain]
        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self.trust_root,
            clientCertificate=self.certificate,
            extraCertificateOptions=extra,
        )


@implementer(IPolicyForHTTPS)
class UnverifiedPolicy:
    """
    A policy that accepts whatever certificate the server shows, for any
    name: C{insecure_skip_verify}, for tests against a self-signed server.
    Still TLS (and still SNI), but anyone on the path can impersonate the
    server. Presents C{certificate} (and C{chain}) when given.
    """

    def __init__(self, certificate: Any = None, chain: Sequence[Any] = ()) -> None:
        from twisted.internet import ssl

        extra: Dict[str, Any] = {}
        if certificate is not None:
            extra = {"privateKey": certificate.privateKey.original,
                     "certificate": certificate.original,
                     "extraCertChain": [c.original for c in chain]}
        self._context = ssl.CertificateOptions(verify=False, **extra).getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return _UnverifiedConnections(self._context, hostname)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedConnections:
    """The connections of L{UnverifiedPolicy}: its context, SNI for host names."""

    def __init__(self, context: Any, hostname: bytes) -> None:
        self._context = context
        self._hostname = hostname

    def clientConnectionForTLS(self, tls_protocol: Any) -> Any:
        import ipaddress

        from OpenSSL import SSL

        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        try:
            ipaddress.ip_address(self._hostname.decode("ascii", "replace"))
        except ValueError:
            connection.set_tlsext_host_name(self._hostname)
        return connection


# Alerts a server sends about the client certificate it was given.
_CLIENT_CERTIFICATE_ALERTS = (
    "unknown ca",
    "bad certificate",
    "certificate unknown",
    "certificate expired",
    "certificate revoked",
    "unsupported certificate",
)


def describe_tls_error(error: Optional[BaseException]) -> Optional[str]:
    """
    A one-line, log-friendly description of a failed TLS handshake, or None
    when C{error} is not a TLS error. Says whether the peer's certificate was
    not trusted, was for another name, or the peer refused us.
    """
    from OpenSSL import SSL
    from service_identity.exceptions import VerificationError

    if isinstance(error, VerificationError):
        names = []
        for mismatch in getattr(error, "errors", None) or ():
            identity = getattr(mismatch, "mismatched_id", None)
            name = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            if name is not None:
                names.append(str(name))
        detail = f" (the certificate is not valid for {', '.join(names)})" if names else ""
        return "TLS: hostname mismatch" + detail
    if not isinstance(error, SSL.Error):
        return None
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else None
    if queue is None:
        # SysCallError and friends: (errno, text).
        text = ", ".join(str(a) for a in error.args[1:] or error.args) or type(error).__name__
        return f"TLS: handshake failed ({text})"
    reasons = [str(e[2]) for e in queue if isinstance(e, tuple) and len(e) == 3 and e[2]]
    if "certificate verify failed" in reasons:
        return "TLS: certificate verify failed (unknown CA, or an expired or otherwise invalid certificate)"
    for reason in reasons:
        if reason.endswith("alert certificate required"):
            return f"TLS: the server requires a client certificate ({reason})"
        if "alert" in reason and reason.endswith(_CLIENT_CERTIFICATE_ALERTS):
            return f"TLS: the server refused the client certificate ({reason})"
        if "alert" in reason:
            return f"TLS: the server refused the handshake ({reason})"
    return "TLS: " + (", ".join(reasons) or "handshake failed")
