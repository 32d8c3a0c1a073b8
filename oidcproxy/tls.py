"""TLS helpers shared by every client the proxy has (upstreams, the IdP, Redis)."""

from __future__ import annotations

import re
from typing import Any


def trust_root(path: str) -> Any:
    """
    A Twisted trust root of the PEM certificates in C{path} (a CA bundle).

    @raise ValueError: the file holds no PEM certificate.
    @raise OSError: the file cannot be read.
    """
    from twisted.internet import ssl

    with open(path, "rb") as f:
        pem = f.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    if not blocks:
        raise ValueError(f"{path} holds no PEM certificate")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(block) for block in blocks])
