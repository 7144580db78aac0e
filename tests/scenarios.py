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
import ipaddress
import json
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


def build_objects(case: Case, mapping: dict[str, str]) -> CaseObjects:
    """The case's objects in the namespaces of `mapping` (case namespace -> real namespace)."""
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
    pods = [_pod(p, mapping[p.get("namespace", "default")]) for p in case.pods]
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
