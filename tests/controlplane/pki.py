"""Throw-away PKI for the local control plane: serving cert, admin client cert, SA keys (pure)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class Pem:
    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class ControlPlanePki:
    ca: Pem
    serving: Pem
    admin: Pem
    service_account_key: bytes  # private key PEM (signing)
    service_account_pub: bytes  # public key PEM (verification)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    san: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(signer, hashes.SHA256())


def build_pki() -> ControlPlanePki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nodeport-guard-test-ca")])
    ca_cert = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ca_name,
        serving_key.public_key(),
        ca_key,
        ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "nodeport-guard-test-admin"),
            ]
        ),
        ca_name,
        admin_key.public_key(),
        ca_key,
        ca=False,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    return ControlPlanePki(
        ca=Pem(ca_cert.public_bytes(pem), _key_pem(ca_key)),
        serving=Pem(serving_cert.public_bytes(pem), _key_pem(serving_key)),
        admin=Pem(admin_cert.public_bytes(pem), _key_pem(admin_key)),
        service_account_key=_key_pem(sa_key),
        service_account_pub=sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
