"""Key and certificate generation for the webhook's TLS and the annotation signing key (pure but for randomness).

The annotation signing key is an Ed25519 pair (contract/signing.py): the private half only for
the webhook, the public half for the enforcers and the kubectl plugin.

No file or network I/O here: callers pass the clock in (`now`) and receive values; PEM
encoding and parsing are plain functions. ECDSA P-256 throughout (small, fast, accepted by
the apiserver and by every TLS stack we talk to).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.signing import Signer

SERVICE_NAME = "nodeport-guard-webhook"
NAMESPACE = "nodeport-guard"
CA_COMMON_NAME = "nodeport-guard-webhook-ca"
CA_DAYS = 3650
SERVING_DAYS = 365
# Tolerate clocks a little behind ours (apiserver, other nodes) when a fresh cert is first used.
CLOCK_SKEW = datetime.timedelta(minutes=5)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PkiError(ValueError):
    """A key, certificate or request is unusable; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass(frozen=True, slots=True)
class SubjectAltNames:
    """The SANs of a certificate, sorted (DNS names by text, addresses by value)."""

    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()


def service_dns_names(service: str = SERVICE_NAME, namespace: str = NAMESPACE) -> tuple[str, ...]:
    """Every name the apiserver or a pod may use for an in-cluster Service."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def build_signing_key() -> Signer:
    """A fresh Ed25519 key pair for the annotation signature."""
    return Signer.generate()


def key_usage(ca: bool) -> x509.KeyUsage:
    """ECDSA keys sign (TLS handshakes); only a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca(now: datetime.datetime, days: int = CA_DAYS, common_name: str = CA_COMMON_NAME) -> KeyPair:
    """A self-signed CA that may sign end-entity certificates only (pathLen 0)."""
    _check_days("CA", days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert=cert, key=key)


def issue_serving_cert(
    ca: KeyPair,
    now: datetime.datetime,
    dns_names: Sequence[str] = service_dns_names(),
    ips: Sequence[IPAddress] = (),
    days: int = SERVING_DAYS,
) -> KeyPair:
    """A TLS server certificate for `dns_names` and `ips`, signed by `ca`, never outliving the CA."""
    _check_days("serving certificate", days)
    sans = normalize_sans(dns_names, ips)
    if not sans.dns and not sans.ips:
        raise PkiError("serving certificate: no DNS name or IP address given; pass at least one --dns or --ip")
    if not _is_ca(ca.cert):
        raise PkiError("CA certificate has no basicConstraints CA=true; regenerate it with `python -m certs generate`")
    if ca.cert.not_valid_after_utc <= now:
        raise PkiError(
            f"CA certificate expired at {ca.cert.not_valid_after_utc.isoformat()}; "
            "create a new CA with `python -m certs generate --force` and run `install` again"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = sans.dns[0] if sans.dns else str(sans.ips[0])
    general_names: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.dns]
    general_names += [x509.IPAddress(ip) for ip in sans.ips]
    not_after = min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert=cert, key=key)


def normalize_sans(dns_names: Iterable[str], ips: Iterable[IPAddress]) -> SubjectAltNames:
    """Lower-case, deduplicate and sort; reject names a certificate cannot carry."""
    dns: set[str] = set()
    for raw in dns_names:
        name = raw.strip().lower().rstrip(".")
        if not name or " " in name or not name.isascii():
            raise PkiError(f"DNS name {raw!r} is not a valid ASCII host name; pass it in punycode without spaces")
        dns.add(name)
    return SubjectAltNames(dns=tuple(sorted(dns)), ips=tuple(sorted(set(ips), key=_ip_sort_key)))


def list_sans(cert: x509.Certificate) -> SubjectAltNames:
    """The DNS names and IP addresses a certificate is valid for (empty if it has no SAN extension)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    ips: list[IPAddress] = []
    for value in ext.get_values_for_type(x509.IPAddress):
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            ips.append(value)
    return normalize_sans(ext.get_values_for_type(x509.DNSName), ips)


def expires_within(cert: x509.Certificate, delta: datetime.timedelta, now: datetime.datetime | None = None) -> bool:
    """True if `cert` is no longer valid at `now + delta` (already expired counts)."""
    current = now if now is not None else datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc <= current + delta


def verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise PkiError unless `ca` signed `cert` (signature and issuer name)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"certificate {cert.subject.rfc4514_string()} was not issued by this CA: {exc}") from exc
    except InvalidSignature as exc:
        raise PkiError(f"certificate {cert.subject.rfc4514_string()} has a signature this CA did not make") from exc


def key_matches(pair: KeyPair) -> bool:
    """True if the private key belongs to the certificate."""
    return pair.cert.public_key() == pair.key.public_key()


def parse_pair(cert_pem: bytes, key_pem: bytes, what: str) -> KeyPair:
    """Parse a PEM certificate and an unencrypted PEM EC private key that belong together."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"{what}: certificate is not valid PEM ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what}: private key is not an unencrypted PEM key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what}: private key is {type(key).__name__}, expected an EC key; regenerate it")
    pair = KeyPair(cert=cert, key=key)
    if not key_matches(pair):
        raise PkiError(f"{what}: private key does not belong to the certificate; regenerate the pair")
    return pair


def parse_cert(cert_pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"{what}: certificate is not valid PEM ({exc})") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_days(what: str, days: int) -> None:
    if days <= 0:
        raise PkiError(f"{what}: validity of {days} days is not positive; pass --days with a positive number")


def _ip_sort_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))
