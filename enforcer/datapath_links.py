"""Passive checks below netfilter: BPF programs at XDP and tc on the uplinks, uplinks enslaved to OVS (pure).

An uplink program is a suspicion, not a verdict (Calico's iptables mode can attach a drop-only XDP
program, Cilium without kube-proxy replacement attaches `cil_from_netdev` for other features): known
names are named for what they are, unknown ones are reported as such, and the canary decides.
Read from `ip -d -j addr show` and `tc -j filter show dev <uplink> ingress`. tcx attachments (newer
kernels) are not listed by either; the canary covers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contract.path_status import Finding

# Programs that serve or rewrite NodePorts before netfilter in some modes (datapath-interop.md).
KNOWN_BYPASSING = {
    "cil_from_netdev": "Cilium: with kube-proxy replacement or its NodePort BPF feature, NodePorts are served here",
    "cil_xdp_entry": "Cilium: XDP NodePort acceleration serves NodePorts before netfilter",
    "cali_tc_preamble": "Calico eBPF data plane: NodePorts are translated here, before netfilter",
    "cali_xdp_preamble": "Calico XDP: drops untracked traffic (iptables mode) or accelerates eBPF mode",
}


def uplinks(links: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pure: the links that carry the node's traffic: a global address, or enslaved to an OVS bridge."""
    out = []
    for link in links:
        if link.get("ifname") == "lo" or "LOOPBACK" in (link.get("flags") or []):
            continue
        has_global = any(a.get("scope") == "global" for a in link.get("addr_info") or [])
        if has_global or _ovs_master(link):
            out.append(link)
    return out


def _ovs_master(link: Mapping[str, Any]) -> bool:
    info = link.get("linkinfo") or {}
    return info.get("info_slave_kind") == "openvswitch" or link.get("master") == "ovs-system"


def _xdp_programs(link: Mapping[str, Any]) -> list[str]:
    xdp = link.get("xdp") or {}
    names = []
    if isinstance(xdp.get("prog"), dict):
        names.append(str(xdp["prog"].get("name") or f"id {xdp['prog'].get('id')}"))
    for attached in xdp.get("attached") or []:
        prog = attached.get("prog") or {}
        names.append(str(prog.get("name") or f"id {prog.get('id')}"))
    return names


def _tc_programs(filters: Sequence[Mapping[str, Any]]) -> list[str]:
    names = []
    for entry in filters:
        if entry.get("kind") != "bpf":
            continue
        options = entry.get("options")
        if not isinstance(options, dict):
            continue  # the chain header line tc prints before each filter
        prog = options.get("prog") or {}
        names.append(str(prog.get("name") or options.get("bpf_name") or f"id {prog.get('id')}"))
    return names


def _program_finding(device: str, hook: str, name: str) -> Finding:
    known = next((why for prefix, why in KNOWN_BYPASSING.items() if name.startswith(prefix)), None)
    reason = (
        f"BPF program {name} at {hook} on uplink {device}: {known}; the canary decides"
        if known
        else f"unknown BPF program {name} at {hook} on uplink {device}: it runs before netfilter and may serve or "
        "rewrite NodePort traffic; the canary decides"
    )
    return Finding("bpf-program", "suspect", reason, f"{device} {hook} {name}")


def judge_links(
    links: Sequence[Mapping[str, Any]], tc_ingress: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[Finding, ...]:
    """Pure: findings from `ip -d -j addr show` and each uplink's `tc -j filter show dev X ingress`."""
    findings = []
    for link in uplinks(links):
        device = str(link.get("ifname"))
        for name in _xdp_programs(link):
            findings.append(_program_finding(device, "XDP", name))
        for name in _tc_programs(tc_ingress.get(device) or []):
            findings.append(_program_finding(device, "tc ingress", name))
        if _ovs_master(link):
            master = str(link.get("master") or "an OVS bridge")
            findings.append(
                Finding(
                    "ovs-uplink",
                    "suspect",
                    f"uplink {device} is enslaved to Open vSwitch ({master}): with OVN-Kubernetes' shared gateway "
                    "NodePort traffic goes into OVN by OpenFlow and never reaches the host stack (local gateway mode "
                    "or the Ingress Node Firewall instead); the canary decides",
                    f"{device} master {master}",
                )
            )
    return tuple(findings)
