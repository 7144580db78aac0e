"""Backend pods for trying nodeport-guard: TCP and UDP servers that answer with their pod name (pure data).

A DaemonSet (one pod per node, the product image's Python) behind four dual-stack Services with
fixed nodePorts: NodePort and LoadBalancer, each with externalTrafficPolicy Cluster and Local.
`python -m localcluster backends` applies them (`kubectl apply -f -` of `render_backends()`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from localcluster.versions import IMAGE_NAME

NAMESPACE = "demo"
APP = "echo"
PORT = 8080

SERVER = r"""
import os, socket, threading
name = os.environ["POD_NAME"].encode() + b"\n"
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 8080)); s.listen(128)
    while True:
        c, _ = s.accept()
        try: c.sendall(name)
        except OSError: pass
        finally: c.close()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 8080))
    while True:
        _, addr = s.recvfrom(2048)
        s.sendto(name, addr)
threading.Thread(target=udp, daemon=True).start()
tcp()
"""


@dataclass(frozen=True, slots=True)
class BackendService:
    name: str
    type: Literal["NodePort", "LoadBalancer"]
    traffic_policy: Literal["Cluster", "Local"]
    node_port: int


SERVICES = (
    BackendService("echo", "NodePort", "Cluster", 30080),
    BackendService("echo-local", "NodePort", "Local", 30081),
    BackendService("echo-lb", "LoadBalancer", "Cluster", 30082),
    BackendService("echo-lb-local", "LoadBalancer", "Local", 30083),
)


def _daemonset() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
                    "containers": [{
                        "name": "echo",
                        "image": IMAGE_NAME,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-c", SERVER],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [
                            {"name": "tcp", "containerPort": PORT, "protocol": "TCP"},
                            {"name": "udp", "containerPort": PORT, "protocol": "UDP"},
                        ],
                        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    }


def _service(svc: BackendService) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": NAMESPACE},
        "spec": {
            "type": svc.type,
            "externalTrafficPolicy": svc.traffic_policy,
            "ipFamilyPolicy": "PreferDualStack",
            "selector": {"app": APP},
            "ports": [
                {"name": "tcp", "protocol": "TCP", "port": PORT, "targetPort": "tcp", "nodePort": svc.node_port},
                {"name": "udp", "protocol": "UDP", "port": PORT, "targetPort": "udp", "nodePort": svc.node_port},
            ],
        },
    }


def render_backends() -> str:
    """The namespace, the DaemonSet and the four Services as one `kubectl apply -f -` document."""
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        _daemonset(),
        *(_service(s) for s in SERVICES),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1)
