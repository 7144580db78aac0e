"""A Service's doors: its load-balancer IPs and externalIPs that kube-proxy DNATs like the NodePort (pure).

docs/semantics.md, "Doors". Each door of a Service port gets the NodePort's verdict; this module only
says which addresses are doors: `status.loadBalancer.ingress[].ip` with ipMode VIP or unset (with
Proxy the load balancer connects to the NodePort, which is filtered already), and `spec.externalIPs`,
of a family the Service has, never an address of a Node (CVE-2020-8554 must not become ours: a door
on a node address and port 22 would lock the node out).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from typing import Any

from contract.annotation import Door, DoorSource, IPFamily
from contract.doors import canonical_ip
from webhook.services import service_ip_families

# ipMode values for which kube-proxy DNATs the address on the nodes (unset means VIP).
DOOR_IP_MODES = frozenset({None, "VIP"})


def _family(ip: str) -> IPFamily | None:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return None  # never a door: kube-proxy programs no IPv4-mapped address
    return "IPv4" if addr.version == 4 else "IPv6"


def _candidates(service: Mapping[str, Any]) -> list[tuple[str, DoorSource]]:
    spec = service.get("spec") or {}
    out: list[tuple[str, DoorSource]] = []
    for ip in spec.get("externalIPs") or []:
        if isinstance(ip, str):
            out.append((ip, "externalIP"))
    if spec.get("type") == "LoadBalancer":
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        for entry in ingress:
            if isinstance(entry, Mapping) and isinstance(entry.get("ip"), str) and entry.get("ipMode") in DOOR_IP_MODES:
                out.append((entry["ip"], "loadBalancer"))
    return out


def service_doors(service: Mapping[str, Any], node_addresses: Collection[str]) -> tuple[Door, ...]:
    """The doors of every port of `service`, sorted by ip, one per address (a Node address never).

    `node_addresses` are the canonical addresses of every Node (`node_address_set`)."""
    families = service_ip_families(service)
    found: dict[str, Door] = {}
    for text, source in _candidates(service):
        ip = canonical_ip(text)
        if ip is None or ip in node_addresses or ip in found:
            continue
        family = _family(ip)
        if family is None or family not in families:
            continue
        found[ip] = Door(ip=ip, source=source)
    return tuple(found[ip] for ip in sorted(found))


def has_door_fields(service: Mapping[str, Any]) -> bool:
    """Whether the Service may have doors at all (cheap: before node addresses and families)."""
    return bool(_candidates(service))


def node_address_set(nodes: Collection[Mapping[str, Any]]) -> frozenset[str]:
    """Every address in the Nodes' `status.addresses` (InternalIP, ExternalIP), canonical."""
    out: set[str] = set()
    for node in nodes:
        for entry in (node.get("status") or {}).get("addresses") or []:
            if isinstance(entry, Mapping) and entry.get("type") in ("InternalIP", "ExternalIP"):
                ip = canonical_ip(str(entry.get("address", "")))
                if ip is not None:
                    out.add(ip)
    return frozenset(out)


def describe_doors(doors: Collection[Door], port: int) -> str:
    """`198.51.100.200:8080, [2001:db8::1]:8080` for warnings and explain."""
    return ", ".join(f"[{d.ip}]:{port}" if ":" in d.ip else f"{d.ip}:{port}" for d in sorted(doors))
