"""`kubectl nodeport-guard status [POLICY]`: is this policy (or every policy) in force on every node?

Reads the Nodes, the per-node status Leases the enforcers publish (contract/node_status.py)
and the policies' resourceVersions: three lists, whatever the number of policies in force.
A node is in force only when its filter is verified in the packet's path by the canary
(contract/path_status.py); bypassed and unverified nodes are named with the reason.
Exit codes: 0 in force on every node, 1 not (or not before --timeout), 2 an error (e.g. the
policy does not exist).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contract.node_status import (
    STATUS_LABEL,
    NodeVerdict,
    PolicyVersion,
    all_in_force,
    status_by_node,
    verdicts,
)

DEFAULT_STATUS_NAMESPACE = "nodeport-guard"
POLL_SECONDS = 1.0


class StatusError(Exception):
    """The question cannot be answered (missing policy, no access): exit code 2."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    subject: str  # what was asked about, for the heading
    wanted: tuple[PolicyVersion, ...]
    results: tuple[NodeVerdict, ...]

    @property
    def in_force(self) -> bool:
        return all_in_force(self.results)

    @property
    def programmed_everywhere_unverified(self) -> bool:
        """Programmed on every node, some of them only unverified (none bypassed): --accept-unverified."""
        return bool(self.results) and all(v.state in ("in-force", "unverified") for v in self.results) and all(
            v.path != "bypassed" for v in self.results
        )


def parse_duration(text: str) -> float:
    """'90', '90s', '2m', '1h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--timeout={text!r}: expected seconds or a duration like 90s, 2m") from exc


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def render(snapshot: Snapshot) -> str:
    """Pure: the table and a summary of nodes up to date, behind (with how far) and not ready."""
    results = snapshot.results
    up = [v.node for v in results if v.state == "in-force"]
    lines = [f"{snapshot.subject}: in force on {len(up)} of {len(results)} nodes"]
    rows = [
        [
            v.node,
            "yes" if v.state == "in-force" else "no",
            v.state,
            v.enforcer,
            v.path,
            v.resource_version or "-",
            str(v.behind_by),
            _ago(v.since_seconds),
            v.detail,
        ]
        for v in results
    ]
    header = ["NODE", "IN FORCE", "STATE", "ENFORCER", "PATH", "PROGRAMMED RV", "BEHIND", "LAST CHANGE", "DETAIL"]
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    behind = [v for v in results if v.state not in ("in-force", "bypassed", "unverified")]  # those: below
    not_ready = [v for v in results if v.enforcer != "ready"]
    lines.append(f"up to date: {', '.join(up) or 'none'}")
    if behind:
        lines.append(
            "behind: "
            + "; ".join(
                f"{v.node} ({v.state}, {v.behind_by} version(s) not programmed, last change {_ago(v.since_seconds)})"
                for v in behind
            )
        )
    if not_ready:
        lines.append("enforcer not ready: " + "; ".join(f"{v.node} ({v.enforcer})" for v in not_ready))
    for state in ("bypassed", "unverified"):
        named = [v for v in results if v.path == state]
        if named:
            lines.append(f"{state}: " + "; ".join(f"{v.node} ({v.path_reason})" for v in named))
    return "\n".join(lines)


def to_json(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "subject": snapshot.subject,
        "inForce": snapshot.in_force,
        "policies": [
            {"namespace": p.namespace, "name": p.name, "resourceVersion": p.resource_version} for p in snapshot.wanted
        ],
        "nodes": [
            {
                "node": v.node,
                "inForce": v.state == "in-force",
                "state": v.state,
                "enforcer": v.enforcer,
                "programmedResourceVersion": v.resource_version,
                "behindBy": v.behind_by,
                "secondsSinceLastChange": v.since_seconds,
                "detail": v.detail,
                "path": {
                    "state": v.path,
                    "reason": v.path_reason,
                    "verifiedAt": v.verified_at.isoformat() if v.verified_at else None,
                },
            }
            for v in snapshot.results
        ],
    }


def _items(raw: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(raw.data)["items"]
    return items


def _version(obj: dict[str, Any]) -> PolicyVersion:
    meta = obj.get("metadata") or {}
    return PolicyVersion(meta.get("namespace", ""), meta.get("name", ""), str(meta.get("resourceVersion", "")))


def read_snapshot(api: Any, policy: str | None, namespace: str | None, status_namespace: str) -> Snapshot:
    """Three reads (I/O): the policy or policies, the Nodes, the status Leases."""
    from kubernetes import client

    networking = client.NetworkingV1Api(api)
    try:
        if policy is not None:
            raw: Any = networking.read_namespaced_network_policy(policy, namespace or "default", _preload_content=False)
            wanted: tuple[PolicyVersion, ...] = (_version(json.loads(raw.data)),)
            subject = f"NetworkPolicy {namespace or 'default'}/{policy} (resourceVersion {wanted[0].resource_version})"
        elif namespace is not None:
            raw = networking.list_namespaced_network_policy(namespace, _preload_content=False)
            wanted = tuple(_version(o) for o in _items(raw))
            subject = f"{len(wanted)} NetworkPolicies in namespace {namespace}"
        else:
            raw = networking.list_network_policy_for_all_namespaces(_preload_content=False)
            wanted = tuple(_version(o) for o in _items(raw))
            subject = f"{len(wanted)} NetworkPolicies in all namespaces"
        nodes = [n["metadata"]["name"] for n in _items(client.CoreV1Api(api).list_node(_preload_content=False))]
        leases = _items(
            client.CoordinationV1Api(api).list_namespaced_lease(
                status_namespace, label_selector=f"{STATUS_LABEL}=true", _preload_content=False
            )
        )
    except client.ApiException as exc:
        if exc.status == 404 and policy is not None:
            raise StatusError(f"NetworkPolicy {namespace or 'default'}/{policy} not found") from exc
        raise StatusError(f"reading the cluster failed ({exc.status} {exc.reason}): {str(exc.body)[:200]}") from exc
    now = datetime.datetime.now(datetime.UTC)
    return Snapshot(subject, wanted, tuple(verdicts(nodes, status_by_node(leases), wanted, now)))


def wait_for(
    read: Callable[[], Snapshot], wait: bool, timeout: float, clock: Callable[[], float] = time.monotonic
) -> Snapshot:
    """Read once, or until in force on every node or `timeout` (re-reading the policy: a re-sign moves it)."""
    deadline = clock() + timeout
    snapshot = read()
    while wait and not snapshot.in_force and clock() < deadline:
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - clock())))
        snapshot = read()
    return snapshot


def add_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="is this policy (or every policy) in force on every node?")
    status.add_argument("policy", nargs="?", default=None)
    status.add_argument("-n", "--namespace", default=None, help="the policy's namespace (default: default)")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every policy in every namespace")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.add_argument("--wait", action="store_true", help="wait until in force on every node (or --timeout)")
    status.add_argument("--timeout", type=parse_duration, default=60.0, help="for --wait: e.g. 90s, 2m (default 60s)")
    status.add_argument(
        "--status-namespace", default=DEFAULT_STATUS_NAMESPACE, help="namespace of the per-node status Leases"
    )
    status.add_argument(
        "--accept-unverified",
        action="store_true",
        help="exit 0 when programmed on every node and none is bypassed, even where the canary could not verify "
        "the filter (a single-node cluster); the unverified nodes are still named",
    )


def run(api: Any, args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    if args.policy is not None and args.all_namespaces:
        print("error: give a POLICY or --all-namespaces, not both", file=sys.stderr)
        return 2
    namespace = None if args.all_namespaces else (args.namespace or "default")
    try:
        snapshot = wait_for(
            lambda: read_snapshot(api, args.policy, namespace, args.status_namespace), args.wait, args.timeout
        )
    except StatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out(json.dumps(to_json(snapshot), indent=2) if args.output == "json" else render(snapshot))
    if not snapshot.in_force and args.wait:
        print(f"error: not in force on every node after {args.timeout:g}s", file=sys.stderr)
    if snapshot.in_force:
        return 0
    return 0 if getattr(args, "accept_unverified", False) and snapshot.programmed_everywhere_unverified else 1

