"""`kubectl nodeport-guard explain|ports|status`: what a policy does to NodePorts, read from its signed
annotation, and whether it is in force on every node (`status`, kubectl_plugin/status.py).

Installed as the executable `kubectl-nodeport_guard`, so kubectl finds it as a plugin. Uses
the caller's kubeconfig (KUBECONFIG or --kubeconfig); verifies signatures with the public keys
of ConfigMap nodeport-guard-signing-public-keys (no secret needed) when the caller may read it,
and says so plainly when it cannot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contract.annotation import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    Annotation,
    ContractError,
    NodePortEntry,
    SourceSet,
    decode,
    read_signed,
)
from contract.composition import Part, compose, part_of, render_intervals
from contract.signing import SigningKeyError, VerifierKeys, public_keys_from_data
from kubectl_plugin import status as status_command
from kubectl_plugin.doors import (
    DOOR_HEADER,
    door_rows,
    door_verdicts,
    doors_json,
    inspect_doors,
    source_ranges,
)

DEFAULT_PUBLIC_KEYS = "nodeport-guard/nodeport-guard-signing-public-keys"


@dataclass(frozen=True, slots=True)
class PolicyReport:
    namespace: str
    name: str
    status: str  # verified | unverified | rejected | none
    detail: str
    annotation: Annotation | None


PortId = tuple[int, str]  # (nodePort, protocol)


def describe_sources(allow: SourceSet) -> str:
    if allow.all_sources:
        return "all sources"
    if not allow.cidrs:
        return "none (all external traffic dropped)"
    parts = []
    for rule in allow.cidrs:
        parts.append(rule.cidr + (f" except {', '.join(rule.excepts)}" if rule.excepts else ""))
    return "; ".join(parts)


def namespace_verdicts(reports: Sequence[PolicyReport]) -> dict[PortId, SourceSet]:
    """Pure: each NodePort's allowed sources composed from every readable annotation, as the
    enforcers compose them (an annotation that does not verify contributes nothing)."""
    parts: dict[PortId, dict[int, list[Part]]] = {}
    rules: dict[PortId, list[Any]] = {}
    for report in reports:
        for entry in report.annotation.node_ports if report.annotation else ():
            port = (entry.node_port, entry.protocol)
            for name in entry.ip_families:
                family = 4 if name == "IPv4" else 6
                parts.setdefault(port, {}).setdefault(family, []).append(part_of(entry, family))
            rules.setdefault(port, []).extend(r for allow in entry.sources() for r in allow.cidrs)
    return {
        port: render_intervals({f: compose(ps, f) for f, ps in by_family.items()}, rules[port])
        for port, by_family in parts.items()
    }


def inspect_policy(obj: dict[str, Any], keys: VerifierKeys | None) -> PolicyReport:
    """Pure: classify one stored policy's annotation."""
    meta = obj.get("metadata") or {}
    ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
    annotations = meta.get("annotations") or {}
    if NODEPORTS_KEY not in annotations and SIGNATURE_KEY not in annotations:
        return PolicyReport(ns, name, "none", "affects no NodePort (no nodeport-guard annotation)", None)
    try:
        if keys is None or not keys.public_keys:
            annotation = decode(annotations.get(NODEPORTS_KEY, ""))
            return PolicyReport(ns, name, "unverified", "public keys not readable; signature not checked", annotation)
        verified = read_signed(annotations, ns, name, uid, keys)
        return PolicyReport(ns, name, "verified", "signature valid", verified)
    except ContractError as exc:
        return PolicyReport(ns, name, "rejected", f"enforcers ignore it: {exc}", None)


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _own_sources(report: PolicyReport, port: PortId) -> str:
    """What this policy alone lets in on a NodePort (its part of the verdict)."""
    entry = next(e for e in report.annotation.node_ports if (e.node_port, e.protocol) == port)  # type: ignore[union-attr]
    if entry.scope == "some":
        chosen = [g for g in entry.groups if g.allow is not None]
        return f"on {len(chosen)} of {len(entry.groups)} pod groups: " + " | ".join(
            describe_sources(g.allow) for g in chosen if g.allow is not None
        )
    return describe_sources(entry.allow)


def explain_rows(report: PolicyReport, verdicts: dict[PortId, SourceSet]) -> list[list[str]]:
    if report.annotation is None:
        return []
    return [
        [
            str(v.node_port),
            v.protocol,
            f"{v.service}:{v.service_port}",
            ",".join(v.ip_families),
            describe_sources(verdicts[(v.node_port, v.protocol)]),
            _own_sources(report, (v.node_port, v.protocol)),
        ]
        for v in report.annotation.node_ports
    ]


def _allow_json(allow: SourceSet) -> str | list[dict[str, Any]]:
    return "all" if allow.all_sources else [{"cidr": c.cidr, "except": list(c.excepts)} for c in allow.cidrs]


def _own_json(entry: NodePortEntry) -> Any:
    """This policy's own part: its sources on every endpoint pod, or per endpoint pod group."""
    if entry.scope != "some":
        return _allow_json(entry.allow)
    return {"groups": [{"id": g.id, "allow": None if g.allow is None else _allow_json(g.allow)} for g in entry.groups]}


def _report_json(report: PolicyReport, verdicts: dict[PortId, SourceSet]) -> dict[str, Any]:
    ports = []
    if report.annotation is not None:
        ports = [
            {
                "nodePort": v.node_port,
                "protocol": v.protocol,
                "service": v.service,
                "servicePort": v.service_port,
                "ipFamilies": list(v.ip_families),
                "allow": _allow_json(verdicts[(v.node_port, v.protocol)]),
                "policyAllows": _own_json(v),
            }
            for v in report.annotation.node_ports
        ]
    return {
        "namespace": report.namespace,
        "policy": report.name,
        "status": report.status,
        "detail": report.detail,
        "nodePorts": ports,
    }


def _client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def _read_keys(api: Any, configmap_ref: str) -> VerifierKeys | None:
    """The trusted public keys (current and previous) from the ConfigMap, or None if unreadable."""
    from kubernetes import client

    ns, _, name = configmap_ref.partition("/")
    try:
        data = client.CoreV1Api(api).read_namespaced_config_map(name, ns).data or {}
    except client.ApiException:
        return None
    try:
        return VerifierKeys(public_keys_from_data(data, f"ConfigMap {configmap_ref}"))
    except SigningKeyError as exc:
        print(f"warning: {exc}; signatures not checked", file=sys.stderr)
        return None


def _list_policies(api: Any, namespace: str) -> list[dict[str, Any]]:
    from kubernetes import client

    raw: Any = client.NetworkingV1Api(api).list_namespaced_network_policy(namespace, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(raw.data)["items"]
    return items


def _list_services(api: Any, namespace: str) -> list[dict[str, Any]]:
    from kubernetes import client

    raw: Any = client.CoreV1Api(api).list_namespaced_service(namespace, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(raw.data)["items"]
    return items


def _print_doors(report: Any, doors: Any, ranges: Any) -> None:
    """The doors of one policy: each with the verdict, and kube-proxy's ranges beside a load-balancer IP."""
    if report.status == "rejected":
        print(f"doors: {report.detail}")
    rows = door_rows(report, doors, ranges, describe_sources)
    if rows:
        print()
        print(render_table(rows, DOOR_HEADER))
        if any(r[-1] != "-" for r in rows):
            print("A client needs both: inside the Service's loadBalancerSourceRanges (kube-proxy) and allowed "
                  "by the policies (nodeport-guard).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubectl nodeport-guard", description=__doc__)
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument(
        "--public-keys", default=DEFAULT_PUBLIC_KEYS, help="namespace/name of the ConfigMap of trusted public keys"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="NodePorts a policy affects and the sources allowed on each")
    explain.add_argument("policy")
    ports = sub.add_parser("ports", help="every protected NodePort in a namespace and the policies behind it")
    for p in (explain, ports):
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status_command.add_parser(sub)
    args = parser.parse_args(argv)
    api = _client(args.kubeconfig)
    if args.command == "status":
        return status_command.run(api, args)
    keys = _read_keys(api, args.public_keys)
    policies = _list_policies(api, args.namespace)
    reports = [inspect_policy(p, keys) for p in policies]
    verdicts = namespace_verdicts(reports)
    door_reports = {(r.namespace, r.name): r for r in (inspect_doors(p, keys) for p in policies)}
    doors = door_verdicts(list(door_reports.values()))
    ranges = source_ranges(_list_services(api, args.namespace)) if doors else {}
    if args.command == "explain":
        found = [r for r in reports if r.name == args.policy]
        if not found:
            print(f"error: NetworkPolicy {args.namespace}/{args.policy} not found", file=sys.stderr)
            return 1
        report = found[0]
        door_report = door_reports[(report.namespace, report.name)]
        if args.output == "json":
            explained = _report_json(report, verdicts)
            explained["doors"] = doors_json(door_report, doors, ranges, _allow_json)
            print(json.dumps(explained, indent=2))
            return 0
        print(f"NetworkPolicy {report.namespace}/{report.name}: {report.status} ({report.detail})")
        rows = explain_rows(report, verdicts)
        if rows:
            header = ["NODEPORT", "PROTOCOL", "SERVICE", "FAMILIES", "ALLOWED SOURCES", "THIS POLICY ALLOWS"]
            print(render_table(rows, header))
        _print_doors(door_report, doors, ranges)
        return 0
    by_port: dict[PortId, list[tuple[PolicyReport, Any]]] = {}
    for r in reports:
        for v in r.annotation.node_ports if r.annotation else ():
            by_port.setdefault((v.node_port, v.protocol), []).append((r, v))
    if args.output == "json":
        out = [
            {
                "nodePort": port,
                "protocol": proto,
                "service": entries[0][1].service,
                "policies": sorted(r.name for r, _ in entries),
                "allowedSources": describe_sources(verdicts[(port, proto)]),
                "status": sorted({r.status for r, _ in entries}),
            }
            for (port, proto), entries in sorted(by_port.items())
        ]
        print(json.dumps(out, indent=2))
        return 0
    rows = [
        [
            str(port),
            proto,
            entries[0][1].service,
            ",".join(sorted(r.name for r, _ in entries)),
            describe_sources(verdicts[(port, proto)]),
        ]
        for (port, proto), entries in sorted(by_port.items())
    ]
    print(render_table(rows, ["NODEPORT", "PROTOCOL", "SERVICE", "POLICIES", "ALLOWED SOURCES"]))
    seen: set[tuple[str, ...]] = set()
    door_table = []
    for dr in door_reports.values():
        for row in door_rows(dr, doors, ranges, describe_sources):
            if tuple(row) not in seen:
                seen.add(tuple(row))
                door_table.append(row)
    if door_table:
        print()
        print(render_table(sorted(door_table), DOOR_HEADER))
    rejected = [r for r in reports if r.status == "rejected"]
    for r in rejected:
        print(f"warning: {r.namespace}/{r.name}: {r.detail}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
