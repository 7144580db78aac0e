"""The HTTP shell around the pure admission: status codes, error bodies, probes, metrics (Flask test client)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY, decode
from contract.signing import Signer
from webhook.admission import AdmissionConfig
from webhook.app import Runtime, build_app
from webhook.snapshot import StaticClusterView

KEY = Signer.from_seed(b"k" * 32)
SERVICE = {
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080}]},
}
POD = {"metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}}, "spec": {"containers": []}}


def _client(ready: bool = True, max_body_bytes: int = 3 * 1024 * 1024) -> FlaskClient:
    view = StaticClusterView(services=[SERVICE], pods=[POD])
    runtime = Runtime(
        view=view, config=AdmissionConfig(signing_key=KEY), ready=lambda: ready, max_body_bytes=max_body_bytes
    )
    return build_app(runtime).test_client()


def _review(operation: str = "CREATE", obj: dict[str, Any] | None = None) -> dict[str, Any]:
    policy = obj or {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "default"},
        "spec": {"podSelector": {}, "ingress": []},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f8e-1",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "NetworkPolicy"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "networkpolicies"},
            "operation": operation,
            "namespace": "default",
            "name": "deny",
            "object": policy,
            "oldObject": None,
            "dryRun": False,
        },
    }


def test_mutate_returns_review_with_patch_adding_annotation() -> None:
    resp = _client().post("/mutate", json=_review())
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == "0f8e-1" and body["response"]["allowed"] is True
    patch = json.loads(base64.b64decode(body["response"]["patch"]))
    assert body["response"]["patchType"] == "JSONPatch"
    # The policy has no annotations yet: one op adds the map with both of ours.
    assert [op["op"] for op in patch] == ["add"] and patch[0]["path"] == "/metadata/annotations"
    annotation = decode(patch[0]["value"][NODEPORTS_KEY])
    assert [(v.node_port, v.service) for v in annotation.node_ports] == [(30080, "web")]
    assert patch[0]["value"][SIGNATURE_KEY].startswith(f"ed25519:{KEY.public.key_id}:")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[]", ""),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), ""),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request"),
    ],
)
def test_malformed_bodies_get_400_with_json_error(payload: bytes, fragment: str) -> None:
    resp = _client().post("/mutate", data=payload, content_type="application/json")
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert isinstance(error, str) and fragment in error


def test_oversize_body_gets_400_naming_the_limit() -> None:
    resp = _client(max_body_bytes=1024).post("/validate", data=b"x" * 4096, content_type="application/json")
    assert resp.status_code == 400
    assert "1024" in resp.get_json()["error"]


def test_readyz_follows_cache_sync_and_healthz_is_always_ok() -> None:
    assert _client(ready=False).get("/readyz").status_code == 503
    assert _client(ready=True).get("/readyz").status_code == 200
    assert _client(ready=False).get("/healthz").status_code == 200


def test_metrics_count_requests_and_rejections() -> None:
    client = _client()
    bad = _review()
    bad["request"]["object"]["spec"]["ingress"] = [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]
    assert client.post("/mutate", json=bad).get_json()["response"]["allowed"] is False
    client.post("/mutate", json=_review())
    text = client.get("/metrics").get_data(as_text=True)
    assert 'nodeport_guard_admission_requests_total{endpoint="mutate",result="denied"} 1.0' in text
    assert 'nodeport_guard_admission_requests_total{endpoint="mutate",result="allowed"} 1.0' in text
    assert 'nodeport_guard_admission_rejections_total{endpoint="mutate"} 1.0' in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(body=json_values | st.binary(max_size=200).map(lambda b: {"raw": b.hex()}))
def test_random_bodies_never_500(body: Any) -> None:
    resp = _client().post("/mutate", data=json.dumps(body), content_type="application/json")
    assert resp.status_code in (200, 400)
    if resp.status_code == 200:
        assert resp.get_json()["kind"] == "AdmissionReview"
