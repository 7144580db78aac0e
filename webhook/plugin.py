"""`kubectl nodeport-guard explain|ports`: what a policy does to NodePorts, read from its signed annotation.

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

from webhook.contract import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    Annotation,
    ContractError,
    NodePortVerdict,
    decode,
    read_signed,
)
from webhook.signing import SigningKeyError, VerifierKeys, public_keys_from_data

DEFAULT_PUBLIC_KEYS = "nodeport-guard/nodeport-guard-signing-public-keys"


@dataclass(frozen=True, slots=True)
class PolicyReport:
    namespace: str
    name: str
    status: str  # verified | unverified | rejected | none
    detail: str
    annotation: Annotation | None


def describe_sources(verdict: NodePortVerdict) -> str:
    if verdict.allow.all_sources:
        return "all sources"
    if not verdict.allow.cidrs:
        return "none (all external traffic dropped)"
    parts = []
    for rule in verdict.allow.cidrs:
        parts.append(rule.cidr + (f" except {', '.join(rule.excepts)}" if rule.excepts else ""))
    return "; ".join(parts)


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


def explain_rows(report: PolicyReport) -> list[list[str]]:
    if report.annotation is None:
        return []
    return [
        [str(v.node_port), v.protocol, f"{v.service}:{v.service_port}", ",".join(v.ip_families), describe_sources(v)]
        for v in report.annotation.node_ports
    ]


def _report_json(report: PolicyReport) -> dict[str, Any]:
    ports = []
    if report.annotation is not None:
        ports = [
            {
                "nodePort": v.node_port,
                "protocol": v.protocol,
                "service": v.service,
                "servicePort": v.service_port,
                "ipFamilies": list(v.ip_families),
                "allow": "all"
                if v.allow.all_sources
                else [{"cidr": c.cidr, "except": list(c.excepts)} for c in v.allow.cidrs],
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
    args = parser.parse_args(argv)
    api = _client(args.kubeconfig)
    keys = _read_keys(api, args.public_keys)
    policies = _list_policies(api, args.namespace)
    if args.command == "explain":
        found = [p for p in policies if p["metadata"]["name"] == args.policy]
        if not found:
            print(f"error: NetworkPolicy {args.namespace}/{args.policy} not found", file=sys.stderr)
            return 1
        report = inspect_policy(found[0], keys)
        if args.output == "json":
            print(json.dumps(_report_json(report), indent=2))
            return 0
        print(f"NetworkPolicy {report.namespace}/{report.name}: {report.status} ({report.detail})")
        rows = explain_rows(report)
        if rows:
            print(render_table(rows, ["NODEPORT", "PROTOCOL", "SERVICE", "FAMILIES", "ALLOWED SOURCES"]))
        return 0
    reports = [inspect_policy(p, keys) for p in policies]
    by_port: dict[tuple[int, str], list[tuple[PolicyReport, NodePortVerdict]]] = {}
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
                "allowedSources": describe_sources(entries[0][1]),
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
            describe_sources(entries[0][1]),
        ]
        for (port, proto), entries in sorted(by_port.items())
    ]
    print(render_table(rows, ["NODEPORT", "PROTOCOL", "SERVICE", "POLICIES", "ALLOWED SOURCES"]))
    rejected = [r for r in reports if r.status == "rejected"]
    for r in rejected:
        print(f"warning: {r.namespace}/{r.name}: {r.detail}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
