"""Throw-away PKI for the local control plane: serving cert, admin client cert, SA keys (pure).

The certificates are issued by the local cluster's issuer (`localcluster.pki`), one code path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from localcluster.pki import Pem, cert_name, issue_cert, key_pem


@dataclass(frozen=True, slots=True)
class ControlPlanePki:
    ca: Pem
    serving: Pem
    admin: Pem
    service_account_key: bytes  # private key PEM (signing)
    service_account_pub: bytes  # public key PEM (verification)


def build_pki() -> ControlPlanePki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = cert_name("nodeport-guard-test-ca")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ControlPlanePki(
        ca=issue_cert(ca_key, ca_name, ca_name, ca=True),
        serving=issue_cert(
            ca_key,
            ca_name,
            cert_name("kube-apiserver"),
            san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        ),
        admin=issue_cert(
            ca_key,
            ca_name,
            cert_name("nodeport-guard-test-admin", "system:masters"),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        service_account_key=key_pem(sa_key),
        service_account_pub=sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
