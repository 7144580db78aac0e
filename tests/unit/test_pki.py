"""certs.pki and certs.store: what the certificates say, that they verify, and that a real TLS handshake works."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.__main__ import main
from certs.pki import (
    KeyPair,
    PkiError,
    SubjectAltNames,
    build_ca,
    build_signing_key,
    expires_within,
    issue_serving_cert,
    list_sans,
    normalize_sans,
    parse_pair,
    service_dns_names,
    verify_issued_by,
)
from certs.store import CertsDir, StoreError, write_atomic
from contract.signing import SigningKeyError, parse_private_key_pem, parse_public_keys_pem

NOW = datetime.datetime(2026, 1, 15, 12, 0, tzinfo=datetime.UTC)
LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return build_ca(NOW)


@pytest.fixture(scope="module")
def serving(ca: KeyPair) -> KeyPair:
    return issue_serving_cert(ca, NOW, [*service_dns_names(), "webhook.example"], [LOOPBACK])


def test_default_names_cover_every_service_form() -> None:
    assert service_dns_names() == (
        "nodeport-guard-webhook",
        "nodeport-guard-webhook.nodeport-guard",
        "nodeport-guard-webhook.nodeport-guard.svc",
        "nodeport-guard-webhook.nodeport-guard.svc.cluster.local",
    )


def test_ca_is_a_ten_year_p256_ca_limited_to_end_entities(ca: KeyPair) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.key.curve.name == "secp256r1"
    assert ca.cert.not_valid_after_utc == NOW + datetime.timedelta(days=3650)
    assert ca.cert.issuer == ca.cert.subject
    verify_issued_by(ca.cert, ca.cert)  # self-signed


def test_serving_cert_names_usage_and_validity(ca: KeyPair, serving: KeyPair) -> None:
    sans = list_sans(serving.cert)
    assert sans == SubjectAltNames(dns=tuple(sorted([*service_dns_names(), "webhook.example"])), ips=(LOOPBACK,))
    assert not serving.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = serving.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert serving.cert.not_valid_after_utc == NOW + datetime.timedelta(days=365)
    assert serving.cert.not_valid_before_utc < NOW  # tolerates a peer clock slightly behind
    assert serving.key.curve.name == "secp256r1"
    assert serving.cert.issuer == ca.cert.subject


def test_serving_cert_verifies_against_its_ca_only(ca: KeyPair, serving: KeyPair) -> None:
    verify_issued_by(serving.cert, ca.cert)
    other = build_ca(NOW)
    with pytest.raises(PkiError, match="CA did not make"):
        verify_issued_by(serving.cert, other.cert)


def test_serving_cert_never_outlives_the_ca() -> None:
    short_ca = build_ca(NOW, days=10)
    cert = issue_serving_cert(short_ca, NOW, ["a.example"], days=365).cert
    assert cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


def test_expired_ca_or_non_ca_or_no_names_is_refused(ca: KeyPair, serving: KeyPair) -> None:
    with pytest.raises(PkiError, match="expired"):
        issue_serving_cert(ca, NOW + datetime.timedelta(days=3651), ["a.example"])
    with pytest.raises(PkiError, match="basicConstraints"):
        issue_serving_cert(serving, NOW, ["a.example"])
    with pytest.raises(PkiError, match="--dns or --ip"):
        issue_serving_cert(ca, NOW, [], [])
    with pytest.raises(PkiError, match="positive"):
        issue_serving_cert(ca, NOW, ["a.example"], days=0)


def test_expires_within_boundaries(serving: KeyPair) -> None:
    end = serving.cert.not_valid_after_utc
    day = datetime.timedelta(days=1)
    assert not expires_within(serving.cert, datetime.timedelta(days=30), now=end - 31 * day)
    assert expires_within(serving.cert, datetime.timedelta(days=30), now=end - 29 * day)
    assert expires_within(serving.cert, datetime.timedelta(0), now=end)  # expired counts
    assert expires_within(serving.cert, datetime.timedelta(0), now=end + day)
    assert not expires_within(serving.cert, datetime.timedelta(0), now=NOW)


def test_sans_are_normalized_sorted_and_validated() -> None:
    v6 = ipaddress.ip_address("2001:db8::1")
    v4 = ipaddress.ip_address("192.0.2.10")
    sans = normalize_sans(["B.example.", "a.example", "b.example"], [v6, v4, v4])
    assert sans == SubjectAltNames(dns=("a.example", "b.example"), ips=(v4, v6))
    with pytest.raises(PkiError, match="punycode"):
        normalize_sans(["bad name"], [])


def test_list_sans_of_a_cert_without_sans_is_empty(ca: KeyPair) -> None:
    assert list_sans(ca.cert) == SubjectAltNames()


def test_signing_keys_are_fresh_ed25519_pairs_that_round_trip_through_pem() -> None:
    keys = [build_signing_key() for _ in range(8)]
    assert len({k.public.raw for k in keys}) == 8 and all(len(k.public.raw) == 32 for k in keys)
    parsed = parse_private_key_pem(keys[0].private_pem(), "test")
    assert parsed.public == keys[0].public
    both = keys[0].public.pem() + keys[1].public.pem()
    assert parse_public_keys_pem(both, "test") == (keys[0].public, keys[1].public)
    signature = keys[0].sign(b"value")
    assert parsed.verifier().verify(b"value", signature) and not keys[1].verifier().verify(b"value", signature)


def test_key_files_name_what_is_wrong_and_the_fix() -> None:
    with pytest.raises(SigningKeyError, match=r"legacy HMAC key\?\); generate one with `python -m certs signing-key"):
        parse_private_key_pem(b"k" * 32, "signing.pem")
    ca_key = build_ca(datetime.datetime.now(datetime.UTC)).key_pem()
    with pytest.raises(SigningKeyError, match=r"key type \w+, not an Ed25519 private key"):
        parse_private_key_pem(ca_key, "signing.pem")
    with pytest.raises(SigningKeyError, match="no PEM public key"):
        parse_public_keys_pem(b"", "ConfigMap x/y")


def test_pem_round_trip_and_mismatched_key(ca: KeyPair, serving: KeyPair) -> None:
    parsed = parse_pair(serving.cert_pem(), serving.key_pem(), "serving")
    assert parsed.cert == serving.cert
    with pytest.raises(PkiError, match="does not belong"):
        parse_pair(serving.cert_pem(), ca.key_pem(), "serving")
    with pytest.raises(PkiError, match="not valid PEM"):
        parse_pair(b"garbage", serving.key_pem(), "serving")


def _serve_once(context: ssl.SSLContext, listener: socket.socket, errors: list[BaseException]) -> None:
    try:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(tls.recv(64).upper())
    except (OSError, ssl.SSLError) as exc:
        errors.append(exc)


def _handshake(cert_dir: Path, server_hostname: str) -> tuple[str, bytes]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    client_ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        server = threading.Thread(target=_serve_once, args=(server_ctx, listener, errors), daemon=True)
        server.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                tls.sendall(b"ping")
                version = tls.version() or ""
                return version, tls.recv(64)
        finally:
            server.join(timeout=10)


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    assert main(["generate", "--out", str(out), "--ip", "127.0.0.1", "--dns", "webhook.example"]) == 0
    return out


def test_tls_handshake_with_generated_files(generated: Path) -> None:
    version, echoed = _handshake(generated, "127.0.0.1")
    assert echoed == b"PING"
    assert version in ("TLSv1.2", "TLSv1.3")


def test_tls_client_rejects_a_name_not_in_the_cert(generated: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
        _handshake(generated, "192.0.2.1")


def test_generate_writes_files_with_modes_and_refuses_to_replace_the_ca(generated: Path) -> None:
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in generated.iterdir()}
    assert modes == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "tls.crt": 0o644,
        "tls.key": 0o600,
        "signing.pem": 0o600,
        "signing.pub": 0o644,
    }
    assert stat.S_IMODE(generated.stat().st_mode) == 0o700
    signer = parse_private_key_pem((generated / "signing.pem").read_bytes(), "signing.pem")
    assert parse_public_keys_pem((generated / "signing.pub").read_bytes(), "signing.pub") == (signer.public,)
    before = {p.name: p.read_bytes() for p in generated.iterdir()}
    assert main(["generate", "--out", str(generated)]) == 2
    assert {p.name: p.read_bytes() for p in generated.iterdir()} == before
    assert main(["generate", "--out", str(generated), "--force"]) == 0
    after = {p.name: p.read_bytes() for p in generated.iterdir()}
    assert after["ca.crt"] != before["ca.crt"] and after["tls.crt"] != before["tls.crt"]
    assert after["signing.pem"] == before["signing.pem"]  # kept unless --new-signing-key
    assert main(["generate", "--out", str(generated), "--force", "--new-signing-key"]) == 0
    assert (generated / "signing.pem").read_bytes() != before["signing.pem"]
    # `signing-key` creates a missing pair, keeps an existing one, and replaces it with --new.
    current = (generated / "signing.pem").read_bytes()
    assert main(["signing-key", "--dir", str(generated)]) == 0
    assert (generated / "signing.pem").read_bytes() == current
    assert main(["signing-key", "--dir", str(generated), "--new"]) == 0
    assert (generated / "signing.pem").read_bytes() != current


def test_rotate_reissues_only_inside_the_window_and_keeps_ca_and_sans(generated: Path) -> None:
    store = CertsDir(generated)
    original = store.read_serving()
    ca_before = (generated / "ca.crt").read_bytes()
    assert main(["rotate", "--dir", str(generated)]) == 0  # 365 days left, 30-day window
    assert store.read_serving().cert == original.cert
    assert main(["rotate", "--dir", str(generated), "--renew-before", "400"]) == 0
    renewed = store.read_serving()
    assert renewed.cert.serial_number != original.cert.serial_number
    assert renewed.key_pem() != original.key_pem()
    assert list_sans(renewed.cert) == list_sans(original.cert)
    assert (generated / "ca.crt").read_bytes() == ca_before
    verify_issued_by(renewed.cert, x509.load_pem_x509_certificate(ca_before))
    assert main(["rotate", "--dir", str(generated), "--force"]) == 0
    assert store.read_serving().cert.serial_number != renewed.cert.serial_number
    assert _handshake(generated, "127.0.0.1")[1] == b"PING"


def test_rotate_without_files_names_the_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["rotate", "--dir", str(tmp_path)]) == 1
    assert "ca.crt does not exist" in caplog.text and "certs generate" in caplog.text


def test_store_rejects_a_serving_cert_from_another_ca(generated: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert main(["generate", "--out", str(other)]) == 0
    (generated / "ca.crt").write_bytes((other / "ca.crt").read_bytes())
    with pytest.raises(StoreError, match=r"not issued by this CA|did not make"):
        CertsDir(generated).read_serving()


def test_write_atomic_replaces_by_rename_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "tls.crt"
    target.write_bytes(b"old")
    old_inode = target.stat().st_ino
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    # A new inode: a reader holding the old file keeps reading the old, complete content.
    assert target.stat().st_ino != old_inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["tls.crt"]
