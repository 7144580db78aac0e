"""The shared NetworkPolicy -> NodePort scenarios as objects to apply and probes to send (pure; reads the file).

One place turns a case of `../shared/scenarios/cases.json` into what a runner needs: the Pods,
Services and NetworkPolicies (moved into fresh namespaces), the expectations as packet probes
(protocol, source, NodePort, allowed or not), and the notes a reader of the results must see:

- a Service of the case that is single-stack (IPv4) while an expectation comes from an IPv6 source
  is made dual-stack (`RequireDualStack`, IPv4 then IPv6), otherwise no IPv6 packet could reach its
  NodePort at all; the IPv4 verdicts are unchanged by that, each family being judged on its own;
- sources in 192.0.2.0/24 (TEST-NET-1, the range of this machine's own root-namespace address) are
  only ever configured inside the isolated client namespace (see `RESERVED_RANGE_NOTE`).

Used by the packet oracle (`tests/scenario_oracle.py`, `tests/e2e/test_scenarios_packets.py`) and
reusable by the benchmark and the demo. Cases are loaded from the file, never copied into code.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Obj = dict[str, Any]
CASES_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "scenarios" / "cases.json"
RESERVED_RANGE = ipaddress.ip_network("192.0.2.0/24")
RESERVED_RANGE_NOTE = (
    "sources in 192.0.2.0/24 (the range of this machine's root-namespace address): they are real "
    "addresses on the client end of a veth pair whose both ends live in namespaces created for the "
    "test; no link, route or neighbour of the root namespace is involved, so they are proven by "
    "packets like every other source (the root namespace's addresses and routes are compared before "
    "and after the suite)"
)
ProbeProtocol = Literal["tcp", "udp", "sctp"]
NODEPORT_RANGE = (30000, 32767)
RENUMBER_FROM = 31000  # renumbered NodePorts start here, away from the cases' own 300xx numbers


@dataclass(frozen=True, slots=True)
class Expectation:
    """One line of a case's `expect`: may `source` open a new connection to `node_port`/`protocol`?"""

    index: int
    node_port: int
    protocol: str  # as in the case file: TCP, UDP, SCTP
    source: str
    allowed: bool

    @property
    def probe_protocol(self) -> ProbeProtocol:
        proto = self.protocol.lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise ValueError(f"expectation {self.index}: protocol {self.protocol!r} cannot be probed")
        return proto  # type: ignore[return-value]

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.source).version

    def describe(self) -> str:
        return f"{self.protocol} {self.node_port} from {self.source}"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    services: tuple[Obj, ...]
    pods: tuple[Obj, ...]
    policies: tuple[Obj, ...]
    expectations: tuple[Expectation, ...]
    note: str
    # A case may say the webhook must reject it ("invalid": true); none of today's cases does.
    invalid: bool

    @property
    def namespaces(self) -> tuple[str, ...]:
        names = {_namespace_of(o) for o in (*self.services, *self.policies)}
        names |= {p.get("namespace", "default") for p in self.pods}
        return tuple(sorted(names))


@dataclass(frozen=True, slots=True)
class CaseObjects:
    """What to apply for one case, in order (Pods and Services first, then the policies), and the notes."""

    workloads: tuple[Obj, ...]
    policies: tuple[Obj, ...]
    notes: tuple[str, ...]


def _namespace_of(obj: Obj) -> str:
    ns: str = obj.get("metadata", {}).get("namespace", "default")
    return ns


def parse_case(raw: Obj) -> Case:
    expectations = tuple(
        Expectation(i, int(e["nodePort"]), str(e["protocol"]), str(e["source"]), bool(e["allowed"]))
        for i, e in enumerate(raw["expect"])
    )
    return Case(
        name=raw["name"],
        services=tuple(raw.get("services", ())),
        pods=tuple(raw.get("pods", ())),
        policies=tuple(raw.get("policies", ())),
        expectations=expectations,
        note=raw.get("note", ""),
        invalid=bool(raw.get("invalid", False)),
    )


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the acceptance scenarios live in ../shared beside the repo")
    return [parse_case(c) for c in json.loads(path.read_text(encoding="utf-8"))]


def _pod(spec: Obj, namespace: str) -> Obj:
    container: Obj = {"name": "app", "image": "registry.invalid/app:1"}
    if spec.get("containerPorts"):
        container["ports"] = spec["containerPorts"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": spec["name"], "namespace": namespace, "labels": spec.get("labels", {})},
        "spec": {"containers": [container]},
    }


def _moved(obj: Obj, mapping: dict[str, str]) -> Obj:
    moved: Obj = copy.deepcopy(obj)
    moved["metadata"]["namespace"] = mapping[_namespace_of(obj)]
    return moved


def _serves(service: Obj, node_port: int, protocol: str) -> bool:
    return any(
        p.get("nodePort") == node_port and p.get("protocol", "TCP") == protocol
        for p in service.get("spec", {}).get("ports", [])
    ) or service.get("spec", {}).get("healthCheckNodePort") == node_port


def _is_dual_stack(service: Obj) -> bool:
    return "IPv6" in (service.get("spec", {}).get("ipFamilies") or ["IPv4"])


PodBuilder = Callable[[Obj, str], list[Obj]]


def build_objects(case: Case, mapping: dict[str, str], pod_builder: PodBuilder | None = None) -> CaseObjects:
    """The case's objects in the namespaces of `mapping` (case namespace -> real namespace).

    `pod_builder(spec, namespace)` makes the Pod objects of one pod of the case (default: one Pod
    that never runs, for a control plane without nodes; a cluster runs real servers instead).
    """
    notes: list[str] = []
    services = []
    for service in case.services:
        moved = _moved(service, mapping)
        ipv6 = [e for e in case.expectations if e.family == 6 and _serves(service, e.node_port, e.protocol)]
        if ipv6 and not _is_dual_stack(service):
            moved["spec"]["ipFamilyPolicy"] = "RequireDualStack"
            moved["spec"]["ipFamilies"] = ["IPv4", "IPv6"]
            sources = ", ".join(sorted({e.source for e in ipv6}))
            notes.append(
                f"Service {service['metadata']['name']} is single-stack in the case; applied as dual-stack "
                f"(RequireDualStack, IPv4+IPv6) so that IPv6 expectations from {sources} can be proven"
            )
        services.append(moved)
    build = pod_builder or (lambda spec, ns: [_pod(spec, ns)])
    pods = [obj for p in case.pods for obj in build(p, mapping[p.get("namespace", "default")])]
    reserved = [e for e in case.expectations if ipaddress.ip_address(e.source) in RESERVED_RANGE]
    if reserved:
        notes.append(
            f"{len(reserved)} expectation(s) from 192.0.2.0/24: those addresses exist only in the test's isolated "
            "client namespace (docs/semantics.md, what is proven by packets)"
        )
    return CaseObjects(
        workloads=(*pods, *services),
        policies=tuple(_moved(p, mapping) for p in case.policies),
        notes=tuple(notes),
    )


def serve_ports(case: Case) -> list[int]:
    """Every port number a backend of the case may be asked on after DNAT (container ports, numeric
    targetPorts, a Service `port` without targetPort): a real backend listens on all of them."""
    ports = {int(c["containerPort"]) for p in case.pods for c in p.get("containerPorts") or []}
    for service in case.services:
        for port in service.get("spec", {}).get("ports", []):
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, int):
                ports.add(target)
    return sorted(ports)


def has_local_service(case: Case) -> bool:
    """Whether a Service of the case keeps external traffic on the node it arrives at (Local policy)."""
    return any(s.get("spec", {}).get("externalTrafficPolicy") == "Local" for s in case.services)


def reserved_count(cases: list[Case]) -> int:
    """Expectations whose source lies in 192.0.2.0/24 (see RESERVED_RANGE_NOTE)."""
    return sum(ipaddress.ip_address(e.source) in RESERVED_RANGE for c in cases for e in c.expectations)


def sources_of(cases: list[Case]) -> list[str]:
    """Every source address the cases probe from (the client namespace holds them all)."""
    addresses = {ipaddress.ip_address(e.source) for c in cases for e in c.expectations}
    return [str(a) for a in sorted(addresses, key=lambda a: (a.version, a))]


def ports_of(cases: list[Case]) -> list[int]:
    """Every port a case probes (NodePorts and healthCheckNodePorts): the node answers on all of them."""
    return sorted({e.node_port for c in cases for e in c.expectations})


def as_list(objects: tuple[Obj, ...]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


# --- NodePorts are cluster-wide: renumbering and rounds for a real cluster ----------------------


def node_ports_of(case: Case) -> set[int]:
    """Every NodePort and healthCheckNodePort the case's Services ask for."""
    ports: set[int] = set()
    for service in case.services:
        spec = service.get("spec", {})
        ports |= {int(p["nodePort"]) for p in spec.get("ports", []) if p.get("nodePort")}
        if spec.get("healthCheckNodePort"):
            ports.add(int(spec["healthCheckNodePort"]))
    return ports


def pinned_node_ports(case: Case) -> set[int]:
    """The NodePorts whose number the case's policies name (a policy port or port..endPort covers it).

    Their number is part of what the case tests (e.g. "a policy port equal to the NodePort does not
    match"), so they are never renumbered; every other NodePort is only an allocation.
    """
    ranges = []
    for policy in case.policies:
        for rule in policy.get("spec", {}).get("ingress") or []:
            for entry in rule.get("ports") or []:
                port = entry.get("port")
                if isinstance(port, int):
                    ranges.append((port, int(entry.get("endPort", port))))
    return {p for p in node_ports_of(case) if any(lo <= p <= hi for lo, hi in ranges)}


def renumber(case: Case, mapping: dict[int, int]) -> Case:
    """The case with its NodePorts (Services and expectations) renumbered by `mapping` (others unchanged)."""
    if not mapping:
        return case
    services = []
    for service in case.services:
        moved: Obj = copy.deepcopy(service)
        spec = moved.get("spec", {})
        for port in spec.get("ports", []):
            if port.get("nodePort") in mapping:
                port["nodePort"] = mapping[port["nodePort"]]
        if spec.get("healthCheckNodePort") in mapping:
            spec["healthCheckNodePort"] = mapping[spec["healthCheckNodePort"]]
        services.append(moved)
    expectations = tuple(
        dataclasses.replace(e, node_port=mapping.get(e.node_port, e.node_port)) for e in case.expectations
    )
    return dataclasses.replace(case, services=tuple(services), expectations=expectations)


def describe_renumbering(mapping: dict[int, int]) -> str:
    pairs = ", ".join(f"{a}->{b}" for a, b in sorted(mapping.items()))
    return (f"NodePorts renumbered {pairs} (NodePorts are cluster-wide and the cases run side by side; "
            "no policy of the case names these numbers)")


@dataclass(frozen=True, slots=True)
class Planned:
    """A case as it runs on a shared cluster: renumbered, with the original NodePort of each new one."""

    case: Case
    renumbered: dict[int, int]  # original NodePort -> the one used

    @property
    def original(self) -> dict[int, int]:
        return {new: old for old, new in self.renumbered.items()}


def plan_rounds(
    cases: Sequence[Case], taken: set[int], max_pods: int, pods_of: Callable[[Case], int]
) -> list[list[Planned]]:
    """Group the cases into rounds that can share one cluster at once.

    Inside a round no two Services may ask for the same NodePort: every NodePort that no policy
    names gets a fresh number (from RENUMBER_FROM, never one in `taken` or pinned by any case);
    cases whose pinned NodePorts clash go to different rounds. A round holds at most `max_pods`
    pods (`pods_of(case)` each). Raises ValueError when a pinned port is already `taken`.
    """
    pinned = {c.name: pinned_node_ports(c) for c in cases}
    blocked = set(taken).union(*pinned.values()) if pinned else set(taken)
    for case in cases:
        clash = pinned[case.name] & taken
        if clash:
            raise ValueError(
                f"case {case.name}: NodePort(s) {sorted(clash)} are allocated by other Services of the cluster; "
                "delete those Services first (the case's policies name these numbers, so they cannot move)"
            )
    fresh = (p for p in range(RENUMBER_FROM, NODEPORT_RANGE[1] + 1) if p not in blocked)
    rounds: list[list[Planned]] = []
    used: list[set[int]] = []
    pods: list[int] = []
    for case in cases:
        try:
            mapping = {p: next(fresh) for p in sorted(node_ports_of(case) - pinned[case.name])}
        except StopIteration:
            raise ValueError("not enough free NodePorts to run the cases side by side") from None
        need = pods_of(case)
        for i in range(len(rounds)):
            if not used[i] & pinned[case.name] and pods[i] + need <= max_pods:
                break
        else:
            rounds.append([])
            used.append(set())
            pods.append(0)
            i = len(rounds) - 1
        rounds[i].append(Planned(renumber(case, mapping), mapping))
        used[i] |= pinned[case.name]
        pods[i] += need
    return rounds


# Not in the case file (none of its cases is invalid today): the packet oracles (netns and cluster)
# run it to prove their "rejected at admission" path through the real webhook.
SYNTHETIC_INVALID: dict[str, Any] = {
    "name": "synthetic-host-bits-set",
    "services": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                  "spec": {"type": "NodePort", "selector": {"app": "web"},
                           "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}}],
    "pods": [{"name": "web-1", "labels": {"app": "web"}}],
    "policies": [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "sloppy"},
                  "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.7/24"}}]}]}}],
    "expect": [{"nodePort": 30080, "protocol": "TCP", "source": "203.0.113.5", "allowed": True}],
    "invalid": True,
}
