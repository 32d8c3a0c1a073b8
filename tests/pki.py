"""
A throwaway public key infrastructure for the TLS tests, made with
C{cryptography}: a root CA, an intermediate CA it signed, server and client
certificates, and an unrelated CA that signed look-alikes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Dict, Optional, Sequence

NAMES = (
    "ca",               # the test root CA (the trust anchor: ca_bundle)
    "intermediate",     # an intermediate CA signed by "ca"
    "server",           # leaf for DNS:localhost only, signed by "ca"
    "server_key",
    "server_chained",   # leaf for DNS:localhost and IP:127.0.0.1, signed by "intermediate"
    "server_chained_key",
    "client",           # client certificate (clientAuth), signed by "ca"
    "client_key",
    "client_bundle",    # "client" and "client_key" in one file
    "other_ca",         # an unrelated CA
    "other_client",     # a client certificate signed by "other_ca"
    "other_client_key",
    "encrypted_key",    # "client_key", encrypted with the passphrase "secret"
)


def make_pki(directory: str) -> Dict[str, str]:
    """Write the certificates and keys of L{NAMES} as PEM files; their paths by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(common: str, issuer: Optional[Any], ca: bool,
              sans: Sequence[x509.GeneralName] = (), usage: Optional[Any] = None) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_key, issuer_cert = issuer if issuer is not None else (key, None)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(issuer_cert.subject if issuer_cert is not None else name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return key, builder.sign(issuer_key, hashes.SHA256())

    def cert_pem(pair: Any) -> bytes:
        return pair[1].public_bytes(serialization.Encoding.PEM)

    def key_pem(pair: Any, password: Optional[bytes] = None) -> bytes:
        encryption: Any = serialization.NoEncryption()
        if password is not None:
            encryption = serialization.BestAvailableEncryption(password)
        return pair[0].private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8, encryption)

    localhost = x509.DNSName("localhost")
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    server_auth = ExtendedKeyUsageOID.SERVER_AUTH
    client_auth = ExtendedKeyUsageOID.CLIENT_AUTH

    root = issue("oidcproxy test CA", None, ca=True)
    intermediate = issue("oidcproxy test intermediate CA", root, ca=True)
    server = issue("localhost", root, ca=False, sans=[localhost], usage=server_auth)
    chained = issue("localhost", intermediate, ca=False, sans=[localhost, loopback],
                    usage=server_auth)
    client = issue("oidcproxy client", root, ca=False, usage=client_auth)
    other = issue("unrelated CA", None, ca=True)
    other_client = issue("oidcproxy client", other, ca=False, usage=client_auth)

    files = {
        "ca": cert_pem(root),
        "intermediate": cert_pem(intermediate),
        "server": cert_pem(server),
        "server_key": key_pem(server),
        "server_chained": cert_pem(chained),
        "server_chained_key": key_pem(chained),
        "client": cert_pem(client),
        "client_key": key_pem(client),
        "client_bundle": cert_pem(client) + key_pem(client),
        "other_ca": cert_pem(other),
        "other_client": cert_pem(other_client),
        "other_client_key": key_pem(other_client),
        "encrypted_key": key_pem(client, b"secret"),
    }
    paths = {}
    for label, data in files.items():
        paths[label] = os.path.join(directory, f"{label}.pem")
        with open(paths[label], "wb") as f:
            f.write(data)
    return paths
