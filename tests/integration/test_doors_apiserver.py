"""Doors through the real kube-apiserver: the load-balancer status written through the status subresource (as
MetalLB does) and externalIPs edited on the Service; the reconciler keeps each policy's doors pair true."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from contract.annotation import NODEPORTS_KEY
from contract.doors import DOORS_KEY
from tests.components import WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy

HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def _eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.05)


def _annotations(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    obj = plane.kubectl_json("get", "networkpolicy", name, "-n", namespace)
    return {k: v for k, v in (obj["metadata"].get("annotations") or {}).items() if k.startswith("nodeport-guard.io/")}


def _doors(plane: ControlPlane, namespace: str, name: str) -> list[tuple[str, str, int]]:
    value = _annotations(plane, namespace, name).get(DOORS_KEY)
    if value is None:
        return []
    return sorted((a["ip"], a["source"], e["servicePort"]) for e in json.loads(value)["doors"] for a in e["addresses"])


def _set_status(plane: ControlPlane, namespace: str, ips: list[str]) -> None:
    body = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips] or None}}}
    plane.kubectl("patch", "service", "lb", "-n", namespace, "--subresource=status", "--type=merge",
                  "-p", json.dumps(body))


def test_the_reconciler_follows_the_load_balancer_status_and_external_ips(
    control_plane: ControlPlane, namespace: str, webhook: WebhookServer
) -> None:
    objects = as_list(
        pod("web-1", {"app": "web"}, HTTP),
        nodeport_service("lb", {"app": "web"}, [{"port": 8080, "targetPort": "http"}], service_type="LoadBalancer",
                         allocateLoadBalancerNodePorts=False),
        policy("deny-all", {}, []),
    )
    assert control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=objects, check=False).returncode == 0
    # No NodePort, no LB IP yet: nothing to annotate.
    assert _annotations(control_plane, namespace, "deny-all") == {}
    _set_status(control_plane, namespace, ["198.51.100.200"])
    _eventually(lambda: _doors(control_plane, namespace, "deny-all") == [("198.51.100.200", "loadBalancer", 8080)],
                what="the LB IP named as a door")
    assert NODEPORTS_KEY not in _annotations(control_plane, namespace, "deny-all")
    _set_status(control_plane, namespace, ["198.51.100.210"])
    _eventually(lambda: _doors(control_plane, namespace, "deny-all") == [("198.51.100.210", "loadBalancer", 8080)],
                what="the changed LB IP")
    control_plane.kubectl("patch", "service", "lb", "-n", namespace, "--type=merge",
                          "-p", json.dumps({"spec": {"externalIPs": ["198.51.100.201"]}}))
    _eventually(lambda: _doors(control_plane, namespace, "deny-all") == [
        ("198.51.100.201", "externalIP", 8080), ("198.51.100.210", "loadBalancer", 8080)], what="the externalIP")
    # The policy re-applied as is: admission computes the same doors pair and validation admits it.
    again = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(policy("deny-all", {}, [])),
                                  check=False)
    assert again.returncode == 0, again.stderr
    _set_status(control_plane, namespace, [])
    control_plane.kubectl("patch", "service", "lb", "-n", namespace, "--type=json",
                          "-p", json.dumps([{"op": "remove", "path": "/spec/externalIPs"}]))
    _eventually(lambda: _annotations(control_plane, namespace, "deny-all") == {}, what="the doors pair removed")
