"""NodePort Services: their filterable ports, families, backing pods, and coverage warnings (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contract.annotation import IP_FAMILIES, PROTOCOLS, IPFamily, Protocol
from webhook.addresses import Addresses
from webhook.objects import NODEPORT_SERVICE_TYPES, TERMINAL_PHASES, KubeObject, NamedPorts
from webhook.semantics import IpBlock, Policy

if TYPE_CHECKING:
    from webhook.cluster_view import ClusterView


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a NodePort Service that nodeport-guard may filter (healthCheckNodePort excluded)."""

    node_port: int
    protocol: Protocol
    service_port: int
    target: int | str  # targetPort, defaulted to the Service port

    def describe(self, service: str) -> str:
        if not self.node_port:
            return f"Service {service} port {self.service_port}/{self.protocol} (no NodePort, doors only)"
        return f"Service {service} port {self.service_port} (NodePort {self.node_port}/{self.protocol})"

def describe_target(sp: ServicePort) -> str:
    """`target port 8080/TCP`, or `target port 'http' (TCP)` for a named one."""
    if isinstance(sp.target, str):
        return f"target port {sp.target!r} ({sp.protocol})"
    return f"target port {sp.target}/{sp.protocol}"

def nodeport_service_ports(service: Mapping[str, Any], doors: bool = False) -> list[ServicePort]:
    """The ports nodeport-guard filters: those with a nodePort, and, when the Service has doors
    (webhook/doors.py), every port (node_port 0 when it has none)."""
    spec = service.get("spec") or {}
    health = spec.get("healthCheckNodePort")
    out: list[ServicePort] = []
    for port in spec.get("ports") or []:
        node_port = port.get("nodePort")
        if not isinstance(node_port, int) or isinstance(node_port, bool) or node_port == health:
            if not doors or node_port is not None:
                continue
            node_port = 0
        protocol = port.get("protocol") or "TCP"
        service_port = port.get("port")
        if protocol not in PROTOCOLS or not isinstance(service_port, int):
            continue
        target = port.get("targetPort")
        out.append(ServicePort(node_port, protocol, service_port, service_port if target in (None, "", 0) else target))
    return out

def allocated_node_ports(service: Mapping[str, Any]) -> set[int]:
    """Every NodePort number the apiserver allocated to `service`, the health check port included."""
    spec = service.get("spec") or {}
    ports = [p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, Mapping)]
    ports.append(spec.get("healthCheckNodePort"))
    return {p for p in ports if isinstance(p, int) and not isinstance(p, bool) and p > 0}


def service_ip_families(service: Mapping[str, Any]) -> tuple[IPFamily, ...]:
    families = (service.get("spec") or {}).get("ipFamilies") or ["IPv4"]
    return tuple(sorted({f for f in families if f in IP_FAMILIES})) or ("IPv4",)

def _family_name(version: int) -> str:
    return "IPv4" if version == 4 else "IPv6"

def coverage_warnings(
    prefix: str,
    policy: Policy,
    *,
    chosen: int,
    backing: int,
    own_sources: Addresses,
    selector_peers: bool,
    blocks: Iterable[IpBlock],
    families: Sequence[IPFamily],
    selected_named: Sequence[NamedPorts],
) -> list[str]:
    """What is doubtful in how one policy covers one Service port (its own content only)."""
    out: list[str] = []
    if chosen < backing:
        out.append(
            f"{prefix}: this policy selects only some of the pods behind the Service ({chosen} of "
            f"{backing}); partial coverage fails closed: a source is allowed on the NodePort only "
            "if every pod accepts it; select all of its pods to make the intent explicit"
        )
    if selector_peers and own_sources.is_empty():
        out.append(
            f"{prefix}: podSelector/namespaceSelector peers are this policy's only sources for "
            "the NodePort, and they never match external clients; add an ipBlock peer to allow them"
        )
    for version, cidr, path in sorted({(b.version, b.cidr, b.path) for b in blocks}):
        meant = ipv4_meant(cidr) if version == 6 else None
        if meant is not None:
            out.append(
                f"{prefix}: {path} {cidr} is an IPv4-mapped IPv6 range: it never matches an IPv4 client (they "
                f"arrive as IPv4); write {meant} if you meant those clients"
            )
        if _family_name(version) not in families:
            out.append(
                f"{prefix}: {path} {cidr} is {_family_name(version)} but the Service is "
                f"{'/'.join(families)}-only, so it never matches NodePort traffic"
            )
    for rule in policy.rules:
        for i, pp in enumerate(rule.ports):
            if isinstance(pp.port, str) and not any((pp.port, pp.protocol) in n for n in selected_named):
                out.append(
                    f"{prefix}: {rule.path}.ports[{i}].port {pp.port!r} ({pp.protocol}) matches no "
                    "containerPort of the selected pods behind this Service; name a containerPort "
                    "the pods declare (with the same protocol) or use a number"
                )
    return out

def ipv4_meant(cidr: str) -> str | None:
    """The IPv4 CIDR an IPv4-mapped IPv6 range (`::ffff:198.51.100.0/120`) stands for, else None."""
    net = ipaddress.ip_network(cidr, strict=False)
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if net.version != 6 or net.prefixlen < 96 or not net.subnet_of(mapped):  # type: ignore[arg-type]
        return None
    start = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
    return str(ipaddress.ip_network(f"{start}/{net.prefixlen - 96}", strict=False))

def is_nodeport_service(service: Mapping[str, Any]) -> bool:
    """A Service whose ports nodeport-guard may filter: NodePort or LoadBalancer, or with externalIPs."""
    spec = service.get("spec") or {}
    guarded = spec.get("type") in NODEPORT_SERVICE_TYPES or bool(spec.get("externalIPs"))
    return guarded and bool(spec.get("selector"))

def backing_pods(namespace: str, service: Mapping[str, Any], view: ClusterView) -> list[KubeObject]:
    selector = (service.get("spec") or {}).get("selector") or {}
    pods = view.pods_matching(namespace, {"matchLabels": dict(selector)})
    return [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]
