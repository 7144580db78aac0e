"""The production server (gunicorn, TLS) as the apiserver meets it: TLS policy, garbage bodies, cert rotation."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.components import WebhookServer, run_python


def _context(webhook: WebhookServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(webhook.install.certs_dir / "ca.crt"))


def _connection(webhook: WebhookServer) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", webhook.port, context=_context(webhook), timeout=10)


def _served_serial(webhook: WebhookServer) -> int:
    with (
        socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw,
        _context(webhook).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _legacy_tls_client(webhook: WebhookServer) -> ssl.SSLContext:
    ctx = _context(webhook)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer TLS 1.0/1.1 at all
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(webhook: WebhookServer) -> None:
    # The same client completes a TLS 1.1 handshake with a permissive server: the refusal below is the webhook's.
    certs = webhook.install.certs_dir
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        accepted: list[str] = []

        def serve() -> None:
            conn, _ = server.accept()
            with permissive.wrap_socket(conn, server_side=True) as tls:
                accepted.append(str(tls.version()))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            _legacy_tls_client(webhook).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.1"
        thread.join(5)
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        _legacy_tls_client(webhook).wrap_socket(raw, server_hostname="127.0.0.1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
review_like = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "v1"]),
        "kind": st.sampled_from(["AdmissionReview", "Pod"]),
        "request": json_values,
    }
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    review_like.map(lambda v: json.dumps(v).encode()),
)


def test_random_bodies_get_400_or_a_review_and_the_server_stays_up(webhook: WebhookServer) -> None:
    conn = _connection(webhook)
    statuses: dict[int, int] = {}

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=bodies, path=st.sampled_from(["/mutate", "/validate"]))
    def post(body: bytes, path: str) -> None:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload: Any = json.loads(response.read())
        statuses[response.status] = statuses.get(response.status, 0) + 1
        assert response.status in (200, 400), (response.status, payload)
        if response.status == 400:
            assert isinstance(payload["error"], str) and payload["error"]
        else:
            assert payload["kind"] == "AdmissionReview" and "allowed" in payload["response"]

    post()
    conn.close()
    assert sum(statuses.values()) >= 1000 and statuses.get(400, 0) > 0
    check = _connection(webhook)
    check.request("GET", "/healthz")
    assert check.getresponse().status == 200
    check.close()


def test_rotated_certificate_is_served_without_dropping_an_open_connection(webhook: WebhookServer) -> None:
    before = _served_serial(webhook)
    in_flight = _connection(webhook)
    in_flight.request("GET", "/healthz")
    assert in_flight.getresponse().read() == b"ok"
    run_python("-m", "certs", "rotate", "--dir", str(webhook.install.certs_dir), "--force")
    deadline = time.monotonic() + 10
    while _served_serial(webhook) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _served_serial(webhook) != before
    # The connection opened before the rotation keeps working.
    in_flight.request("GET", "/readyz")
    assert in_flight.getresponse().status == 200
    in_flight.close()
