"""`kubectl nodeport-guard explain|ports` against the real apiserver, found by kubectl as a plugin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.components import WebhookServer, run_kubectl_plugin
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy

HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


@pytest.fixture
def protected(control_plane: ControlPlane, namespace: str, webhook: WebhookServer) -> int:
    workload: list[dict[str, Any]] = [
        pod("web-1", {"app": "web"}, HTTP),
        nodeport_service("web", {"app": "web"}, [{"port": 80, "targetPort": "http"}]),
    ]
    policies = [
        policy("deny-all", {}, []),
        policy("allow-doc", {}, [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.7/32"]}}]}]),
    ]
    # Two applies, as the other webhook tests do: in one apply the webhook's cache may learn of the
    # Service between a policy's mutation and its validation (see operations.md, troubleshooting).
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*workload))
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*policies))
    svc = control_plane.kubectl_json("get", "service", "web", "-n", namespace)
    return int(svc["spec"]["ports"][0]["nodePort"])


def test_explain_table_names_nodeport_and_sources(control_plane: ControlPlane, namespace: str, protected: int) -> None:
    result = run_kubectl_plugin(control_plane, "explain", "-n", namespace, "allow-doc")
    assert result.returncode == 0, result.stderr
    assert f"NetworkPolicy {namespace}/allow-doc: verified" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(str(protected)))
    assert "TCP" in row and "web:80" in row and "198.51.100.0/24 except 198.51.100.7/32" in row


def test_explain_json_and_missing_policy(control_plane: ControlPlane, namespace: str, protected: int) -> None:
    result = run_kubectl_plugin(control_plane, "explain", "-n", namespace, "deny-all", "-o", "json")
    report = json.loads(result.stdout)
    assert report["status"] == "verified"
    assert report["nodePorts"] == [
        {
            "nodePort": protected,
            "protocol": "TCP",
            "service": "web",
            "servicePort": 80,
            "ipFamilies": ["IPv4"],
            "allow": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.7/32"]}],
            "policyAllows": [],  # deny-all's own part: nobody; the NodePort's verdict is the union
        }
    ]
    missing = run_kubectl_plugin(control_plane, "explain", "-n", namespace, "nope")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_ports_lists_each_protected_nodeport_with_its_policies(
    control_plane: ControlPlane, namespace: str, protected: int
) -> None:
    table = run_kubectl_plugin(control_plane, "ports", "-n", namespace)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["NODEPORT", "PROTOCOL", "SERVICE", "POLICIES", "ALLOWED", "SOURCES"]
    rows = json.loads(run_kubectl_plugin(control_plane, "ports", "-n", namespace, "-o", "json").stdout)
    assert [(r["nodePort"], r["protocol"], r["service"], r["policies"]) for r in rows] == [
        (protected, "TCP", "web", ["allow-doc", "deny-all"])
    ]
    assert rows[0]["status"] == ["verified"]


def test_without_access_to_the_key_the_plugin_says_unverified(
    control_plane: ControlPlane, namespace: str, protected: int, tmp_path: Path
) -> None:
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "viewer", tmp_path / "viewer.kubeconfig")
    control_plane.kubectl(
        "create", "role", "np-reader", "-n", namespace, "--verb=get,list", "--resource=networkpolicies"
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "np-reader",
        "-n",
        namespace,
        "--role=np-reader",
        f"--serviceaccount={namespace}:viewer",
    )
    result = run_kubectl_plugin(control_plane, "explain", "-n", namespace, "deny-all", kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stderr
    assert "unverified" in result.stdout and str(protected) in result.stdout
    # Reading the public keys is enough to verify: no Secret is needed (nor readable) for it.
    grant = f"np-public-keys-{namespace}"
    control_plane.kubectl(
        "create",
        "role",
        grant,
        "-n",
        "nodeport-guard",
        "--verb=get",
        "--resource=configmaps",
        "--resource-name=nodeport-guard-signing-public-keys",
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        grant,
        "-n",
        "nodeport-guard",
        f"--role={grant}",
        f"--serviceaccount={namespace}:viewer",
    )
    try:
        result = run_kubectl_plugin(control_plane, "explain", "-n", namespace, "deny-all", kubeconfig=kubeconfig)
        assert result.returncode == 0, result.stderr
        assert f"NetworkPolicy {namespace}/deny-all: verified (signature valid)" in result.stdout
    finally:
        control_plane.kubectl("delete", "rolebinding,role", grant, "-n", "nodeport-guard", check=False)
