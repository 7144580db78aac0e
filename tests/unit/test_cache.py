"""The webhook's watch-fed cache answers like the pure snapshot, through adds, updates, deletes and relists."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kube.listwatch import EventType
from webhook.cache import TRIMMERS, ClusterCache
from webhook.snapshot import StaticClusterView

LABEL_KEYS = ["app", "tier", "team"]
LABEL_VALUES = ["a", "b", "c"]

labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3)
requirements = st.one_of(
    st.builds(
        lambda k, op, vs: {"key": k, "operator": op, "values": vs},
        st.sampled_from(LABEL_KEYS),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(LABEL_KEYS),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
selectors = st.builds(
    lambda ml, me: {**({"matchLabels": ml} if ml else {}), **({"matchExpressions": me} if me else {})},
    labels,
    st.lists(requirements, max_size=2),
)


def _pod(name: str, ns: str, pod_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": pod_labels, "uid": name},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running"},
    }


def _names(pods: Any) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods)


@settings(max_examples=200, deadline=None)
@given(
    first=st.lists(labels, max_size=8),
    updates=st.lists(st.tuples(st.integers(0, 9), labels | st.none()), max_size=8),
    selector=selectors,
)
def test_pods_matching_equals_the_snapshot(
    first: list[dict[str, str]], updates: list[tuple[int, dict[str, str] | None]], selector: dict[str, Any]
) -> None:
    cache = ClusterCache()
    current = {f"p{i}": lb for i, lb in enumerate(first)}
    cache.replace("pods", [TRIMMERS["pods"](_pod(n, "ns", lb)) for n, lb in current.items()], "1")
    for index, new_labels in updates:
        name = f"p{index}"
        if new_labels is None:
            if name in current:
                cache.apply("pods", "DELETED", TRIMMERS["pods"](_pod(name, "ns", current.pop(name))))
        else:
            event: EventType = "MODIFIED" if name in current else "ADDED"
            current[name] = new_labels
            cache.apply("pods", event, TRIMMERS["pods"](_pod(name, "ns", new_labels)))
    snapshot = StaticClusterView(pods=[_pod(n, "ns", lb) for n, lb in current.items()])
    assert _names(cache.pods_matching("ns", selector)) == _names(snapshot.pods_matching("ns", selector))
    assert _names(cache.pods_in("ns")) == sorted(current)


def test_listeners_hear_each_changed_namespace_once_per_change() -> None:
    cache = ClusterCache()
    heard: list[tuple[str, str]] = []
    cache.add_listener(lambda kind, ns, _name: heard.append((kind, ns)))
    pod = TRIMMERS["pods"](_pod("p", "ns1", {"app": "a"}))
    cache.replace("pods", [pod], "1")
    cache.apply("pods", "MODIFIED", pod)  # no change: nobody is told
    cache.apply("pods", "DELETED", pod)
    assert heard == [("pods", "ns1"), ("pods", "ns1")]
    assert cache.sizes()["pods"] == 0


def test_trimmed_policy_keeps_only_our_annotations_and_identity() -> None:
    policy = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "7",
            "annotations": {"nodeport-guard.io/nodeports": "{}", "other/thing": "x"},
            "managedFields": [{"big": "x" * 1000}],
        },
        "spec": {"podSelector": {}},
    }
    trimmed = TRIMMERS["networkpolicies"](policy)
    assert trimmed["metadata"] == {
        "name": "p",
        "namespace": "ns",
        "uid": "u",
        "resourceVersion": "7",
        "annotations": {"nodeport-guard.io/nodeports": "{}"},
    }


def _service(name: str, ns: str, node_ports: list[int], health: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "NodePort", "ports": [{"port": 80 + i, "nodePort": p}
                                                          for i, p in enumerate(node_ports)]}
    if health is not None:
        spec["healthCheckNodePort"] = health
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


@settings(max_examples=200, deadline=None)
@given(
    first=st.lists(st.lists(st.integers(30000, 30005), max_size=2), max_size=4),
    events=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b"]),
                              st.lists(st.integers(30000, 30005), max_size=2) | st.none()), max_size=10),
    relist=st.booleans(),
)
def test_node_port_in_use_equals_the_snapshot(
    first: list[list[int]], events: list[tuple[int, str, list[int] | None]], relist: bool
) -> None:
    """Which NodePorts some Service holds, cluster-wide, through adds, renumbers, deletes and relists."""
    cache = ClusterCache()
    current = {(f"s{i}", "a"): _service(f"s{i}", "a", ports) for i, ports in enumerate(first)}
    cache.replace("services", [TRIMMERS["services"](s) for s in current.values()], "1")
    for index, ns, ports in events:
        key = (f"s{index}", ns)
        if ports is None:
            if key in current:
                cache.apply("services", "DELETED", TRIMMERS["services"](current.pop(key)))
            continue
        kind: EventType = "MODIFIED" if key in current else "ADDED"
        current[key] = _service(key[0], ns, ports, health=30005 if index == 5 else None)
        cache.apply("services", kind, TRIMMERS["services"](current[key]))
    if relist:
        cache.replace("services", [TRIMMERS["services"](s) for s in current.values()], "2")
    snapshot = StaticClusterView(services=list(current.values()))
    for port in range(30000, 30006):
        assert cache.node_port_in_use(port) == snapshot.node_port_in_use(port), port
    held = {p for s in current.values() for p in [*(x["nodePort"] for x in s["spec"]["ports"]),
                                                  s["spec"].get("healthCheckNodePort")] if p}
    assert {p for p in range(30000, 30006) if snapshot.node_port_in_use(p)} == held
