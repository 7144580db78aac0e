"""Throw-away PKI for the local cluster: a CA, the apiserver's serving certificate, client certificates (pure).

Each component gets the identity Kubernetes' default RBAC expects (system:node:<name> in
system:nodes, system:kube-proxy, system:kube-controller-manager, system:kube-scheduler); the
admin is in system:masters and is also the apiserver's client identity towards the kubelets.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pki import key_usage


@dataclass(frozen=True, slots=True)
class Pem:
    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class ClusterPki:
    ca: Pem
    apiserver: Pem
    clients: dict[str, Pem]  # component name -> client certificate
    service_account_key: bytes
    service_account_pub: bytes


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> Pem:
    key = ca_key if ca else ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(key_usage(ca), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def cert_name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def build_cluster_pki(apiserver_ips: list[str], node_names: list[str]) -> ClusterPki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = cert_name("nodeport-guard-localcluster-ca")
    ca = issue_cert(ca_key, ca_name, ca_name, ca=True)
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
           "localhost"]
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ["127.0.0.1", *apiserver_ips]]
    apiserver = issue_cert(ca_key, ca_name, cert_name("kube-apiserver"), san=san, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    identities = {
        "admin": cert_name("localcluster-admin", "system:masters"),
        "kube-proxy": cert_name("system:kube-proxy"),
        "kube-controller-manager": cert_name("system:kube-controller-manager"),
        "kube-scheduler": cert_name("system:kube-scheduler"),
        **{n: cert_name(f"system:node:{n}", "system:nodes") for n in node_names},
    }
    clients = {
        who: issue_cert(ca_key, ca_name, subject, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        for who, subject in identities.items()
    }
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ClusterPki(
        ca=ca,
        apiserver=apiserver,
        clients=clients,
        service_account_key=key_pem(sa_key),
        service_account_pub=sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def render_kubeconfig(server: str, ca: bytes, client: Pem) -> str:
    """A kubeconfig (JSON is valid YAML) with embedded certificates."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    cluster = {"server": server, "certificate-authority-data": b64(ca)}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "localcluster", "cluster": cluster}],
            "users": [
                {
                    "name": "user",
                    "user": {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)},
                }
            ],
            "contexts": [{"name": "localcluster", "context": {"cluster": "localcluster", "user": "user"}}],
            "current-context": "localcluster",
        },
        indent=1,
    )
