"""The webhook keeps doors true: the cache keeps the fields, the reconciler follows status.loadBalancer and
externalIPs, Node addresses never become doors, and admission writes and checks the doors pair (pure)."""

from __future__ import annotations

import json
from typing import Any

from contract.doors import DOORS_KEY, DOORS_SIGNATURE_KEY
from contract.signing import Signer
from tests.builders import ip_from, pod, policy, service
from tests.unit.test_admission import apply_patch, req
from webhook.admission import AdmissionConfig, AnnotationMemo, mutate, resolve_all_annotations, validate
from webhook.cache import TRIMMERS, ClusterCache
from webhook.snapshot import StaticClusterView

KEY = Signer.from_seed(b"doors-webhook-test-key-000000001")
CONFIG = AdmissionConfig(signing_key=KEY)
NS = "shop"
HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def _lb(ips: list[str], external: list[str] | None = None, allocate: bool = True) -> dict[str, Any]:
    port: dict[str, Any] = {"port": 8080, "targetPort": "http", "protocol": "TCP"}
    if allocate:
        port["nodePort"] = 30080
    svc = service("lb", {"app": "web"}, [port], type_="LoadBalancer", namespace=NS)
    svc["spec"]["allocateLoadBalancerNodePorts"] = allocate
    if external is not None:
        svc["spec"]["externalIPs"] = external
    svc["spec"]["loadBalancerSourceRanges"] = ["198.51.100.0/24"]
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP", "ports": []} for ip in ips]}}
    return svc


def _node(name: str, address: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"x": "y"}}, "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": address}], "capacity": {"cpu": "2"}}}


def test_trimmers_keep_what_doors_need() -> None:
    trimmed = TRIMMERS["services"](_lb(["198.51.100.200"], ["198.51.100.201"], allocate=False))
    assert trimmed["spec"]["externalIPs"] == ["198.51.100.201"]
    assert trimmed["spec"]["allocateLoadBalancerNodePorts"] is False
    assert trimmed["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    assert trimmed["status"] == {"loadBalancer": {"ingress": [{"ip": "198.51.100.200", "ipMode": "VIP"}]}}
    assert "status" not in TRIMMERS["services"](service("web", {"app": "web"}, [{"port": 80, "nodePort": 30080}]))
    node = TRIMMERS["nodes"](_node("a", "198.51.100.1"))
    assert node == {"metadata": {"name": "a", "namespace": ""},
                    "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"}]}}


def _cache(svc: dict[str, Any]) -> ClusterCache:
    cache = ClusterCache()
    cache.replace("services", [TRIMMERS["services"](svc)], "1")
    cache.replace("pods", [TRIMMERS["pods"](pod("web-1", {"app": "web"}, HTTP, namespace=NS, phase="Running"))], "1")
    spec = {"podSelector": {}, "ingress": [{"from": ip_from("203.0.113.0/24")}]}
    cache.replace("networkpolicies", [TRIMMERS["networkpolicies"](policy("allow", spec, namespace=NS, uid="u1"))],
                  "1")
    return cache


def _doors(cache: ClusterCache, memo: AnnotationMemo) -> list[tuple[str, str]]:
    with_memo = resolve_all_annotations(NS, cache, KEY, annotations=memo)
    assert with_memo == resolve_all_annotations(NS, cache, KEY)
    desired = with_memo["allow"] or {}
    if DOORS_KEY not in desired:
        return []
    return [(a["ip"], a["source"]) for e in json.loads(desired[DOORS_KEY])["doors"] for a in e["addresses"]]


def test_the_reconciler_follows_the_load_balancer_status_and_external_ips() -> None:
    cache = _cache(_lb([]))
    memo = AnnotationMemo()
    changes: list[tuple[str, str, str | None]] = []
    cache.add_listener(lambda kind, ns, name: changes.append((kind, ns, name)))
    assert _doors(cache, memo) == []
    # The load-balancer controller writes the status after creation (as MetalLB does).
    cache.apply("services", "MODIFIED", TRIMMERS["services"](_lb(["198.51.100.200"])))
    assert changes[-1] == ("services", NS, "lb")
    assert _doors(cache, memo) == [("198.51.100.200", "loadBalancer")]
    cache.apply("services", "MODIFIED", TRIMMERS["services"](_lb(["198.51.100.210"], ["2001:db8:5::1"])))
    # An IPv6 externalIP of an IPv4-only Service is no door.
    assert _doors(cache, memo) == [("198.51.100.210", "loadBalancer")]
    cache.apply("services", "MODIFIED", TRIMMERS["services"](_lb(["198.51.100.210"], ["198.51.100.201"])))
    assert _doors(cache, memo) == [("198.51.100.201", "externalIP"), ("198.51.100.210", "loadBalancer")]
    cache.apply("services", "MODIFIED", TRIMMERS["services"](_lb([])))
    assert _doors(cache, memo) == []


def test_a_node_taking_a_door_address_removes_the_door_and_re_resolves_every_namespace() -> None:
    cache = _cache(_lb(["198.51.100.200"], ["198.51.100.201"]))
    memo = AnnotationMemo()
    changes: list[tuple[str, str, str | None]] = []
    cache.add_listener(lambda kind, ns, name: changes.append((kind, ns, name)))
    assert len(_doors(cache, memo)) == 2
    cache.replace("nodes", [TRIMMERS["nodes"](_node("a", "198.51.100.1"))], "1")
    assert changes == [("nodes", NS, None)]
    cache.apply("nodes", "MODIFIED", TRIMMERS["nodes"](_node("a", "198.51.100.201")))
    assert changes[-1] == ("nodes", NS, None)
    assert cache.node_addresses() == frozenset({"198.51.100.201"})
    assert "" not in cache.namespaces()
    # The memo's Service fingerprint includes the doors, so the Node change is seen.
    assert _doors(cache, memo) == [("198.51.100.200", "loadBalancer")]
    changes.clear()
    cache.apply("nodes", "MODIFIED", {**TRIMMERS["nodes"](_node("a", "198.51.100.201")), "extra": 1})
    assert changes == [], "a Node change that moves no address re-resolves nothing"


def test_admission_writes_the_doors_pair_and_validation_admits_it() -> None:
    svc = _lb(["198.51.100.200"], allocate=False)
    obj = policy("deny", {"podSelector": {}, "policyTypes": ["Ingress"]}, namespace=NS)
    view = StaticClusterView(services=[svc], pods=[pod("web-1", {"app": "web"}, HTTP, namespace=NS)],
                             policies=[], default_namespace=NS)
    request = req("CREATE", obj)
    answer = mutate(request, view, CONFIG)
    assert answer["response"]["allowed"]
    final = apply_patch(obj, answer)
    annotations = final["metadata"]["annotations"]
    assert set(annotations) == {DOORS_KEY, DOORS_SIGNATURE_KEY}
    assert any("doors 198.51.100.200:8080" in w for w in answer["response"]["warnings"])
    assert validate(req("CREATE", final), view, CONFIG)["response"]["allowed"]
    # A doors value edited by hand is refused.
    forged = json.loads(json.dumps(final))
    forged["metadata"]["annotations"][DOORS_KEY] = annotations[DOORS_KEY].replace("198.51.100.200", "198.51.100.9")
    denied = validate(req("CREATE", forged), view, CONFIG)["response"]
    assert not denied["allowed"] and DOORS_KEY in denied["status"]["message"]
    assert not mutate(req("CREATE", forged), view, CONFIG)["response"]["allowed"]


def test_too_many_doors_are_refused_with_field_limit_and_fix() -> None:
    ips = [f"198.51.100.{i}" for i in range(10, 20)]
    svc = _lb(ips)
    obj = policy("deny", {"podSelector": {}, "policyTypes": ["Ingress"]}, namespace=NS)
    view = StaticClusterView(services=[svc], pods=[pod("web-1", {"app": "web"}, HTTP, namespace=NS)],
                             default_namespace=NS)
    config = AdmissionConfig(signing_key=KEY, max_doors_per_policy=9)
    response = mutate(req("CREATE", obj), view, config)["response"]
    assert not response["allowed"]
    message = response["status"]["message"]
    assert message.startswith("spec.podSelector:") and "10 doors" in message and "NPG_MAX_DOORS_PER_POLICY" in message
    assert mutate(req("CREATE", obj), view, AdmissionConfig(signing_key=KEY, max_doors_per_policy=10))["response"][
        "allowed"]
