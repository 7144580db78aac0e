"""The size bounds of one policy's annotations, each a function of its own content and its Services (pure).

docs/annotation.md ("Size" and "Doors"): at most NPG_MAX_NODEPORTS_PER_POLICY entries, NPG_MAX_DOORS_PER_POLICY
door addresses, NPG_MAX_CIDRS_PER_POLICY CIDRs, and MAX_ANNOTATION_BYTES per value. Each problem names the
field, the limit and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping

from contract.annotation import MAX_ANNOTATION_BYTES, NODEPORTS_KEY, NodePortEntry
from contract.doors import DOORS_KEY, count_doors
from webhook.semantics import Policy


def annotation_field(key: str) -> str:
    return f'metadata.annotations["{key}"]'


def count_cidrs(entries: tuple[NodePortEntry, ...]) -> int:
    return sum(1 + len(rule.excepts) for e in entries for allow in e.sources() for rule in allow.cidrs)


def count_block_cidrs(policy: Policy) -> int:
    return sum(1 + len(block.excepts) for rule in policy.rules for block in rule.ip_blocks)


def block_limit_problem(policy: Policy, max_cidrs: int) -> str | None:
    blocks = count_block_cidrs(policy)
    if blocks <= max_cidrs:
        return None
    return (
        f"spec.ingress: the ipBlocks list {blocks} CIDRs (cidr and except entries), more than the "
        f"limit of {max_cidrs} (webhook setting NPG_MAX_CIDRS_PER_POLICY); split the policy or "
        "aggregate the ranges"
    )


def entry_limits_problem(
    entries: tuple[NodePortEntry, ...], max_nodeports: int, max_doors: int, max_cidrs: int
) -> str | None:
    """Why the policy's entries are too many (NodePorts, doors, CIDRs), or None."""
    if len(entries) > max_nodeports:
        return (
            f"spec.podSelector: the policy affects {len(entries)} NodePorts, more than the limit of "
            f"{max_nodeports} (webhook setting NPG_MAX_NODEPORTS_PER_POLICY); narrow the podSelector "
            "or raise the setting"
        )
    doors = count_doors(entries)
    if doors > max_doors:
        return (
            f"spec.podSelector: the Services whose pods the policy selects have {doors} doors (load-balancer "
            f"IPs and externalIPs, counted per Service port), more than the limit of {max_doors} "
            "(webhook setting NPG_MAX_DOORS_PER_POLICY); narrow the podSelector, give the Services fewer "
            "addresses, or raise the setting"
        )
    cidrs = count_cidrs(entries)
    if cidrs > max_cidrs:
        return (
            f"{annotation_field(NODEPORTS_KEY)}: the resulting annotation lists {cidrs} CIDRs, "
            f"more than the limit of {max_cidrs} (webhook setting NPG_MAX_CIDRS_PER_POLICY); "
            "use fewer, larger ipBlocks or raise the setting"
        )
    return None


def size_problem(desired: Mapping[str, str]) -> str | None:
    for key in (NODEPORTS_KEY, DOORS_KEY):
        size = len(desired.get(key, ""))
        if size > MAX_ANNOTATION_BYTES:
            return (
                f"{annotation_field(key)}: the annotation would be {size} bytes, more than the "
                f"contract's limit of {MAX_ANNOTATION_BYTES} bytes (it grows with this policy's own CIDRs, "
                "the NodePorts and doors it affects and, under partial coverage, the distinct pod label sets behind "
                "them); split the policy or select all pods of each Service"
            )
    return None
