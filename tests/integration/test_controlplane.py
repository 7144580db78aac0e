"""The local control plane is a real kube-apiserver: readiness, NodePort allocation, round-trips, RBAC."""

from __future__ import annotations

import json
from pathlib import Path

from tests.controlplane.harness import ControlPlane

NODEPORT_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
}

POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-doc"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.7/32"]}}],
                "ports": [{"protocol": "TCP", "port": 8080, "endPort": 8090}],
            }
        ],
    },
}


def test_apiserver_ready_and_kubectl_lists_namespaces(control_plane: ControlPlane) -> None:
    names = {ns["metadata"]["name"] for ns in control_plane.kubectl_json("get", "ns")["items"]}
    assert {"default", "kube-system"} <= names
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_nodeport_allocated_by_apiserver(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(NODEPORT_SERVICE))
    svc = control_plane.kubectl_json("get", "service", "web", "-n", namespace)
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    assert svc["spec"]["clusterIP"].startswith("192.0.2.")


def test_networkpolicy_round_trips_unchanged(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(POLICY))
    stored = control_plane.kubectl_json("get", "networkpolicy", "allow-doc", "-n", namespace)
    assert stored["spec"] == POLICY["spec"]


def test_serviceaccount_without_rbac_is_forbidden(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "nobody", tmp_path / "sa.kubeconfig")
    whoami = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"
    denied = control_plane.kubectl("get", "networkpolicies", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert (
        "forbidden" in denied.stderr.lower()
        and "403"
        in control_plane.kubectl(
            "get", "networkpolicies", "-n", namespace, "-v=6", kubeconfig=kubeconfig, check=False
        ).stderr
    )
