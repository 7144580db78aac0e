"""One policy's own part in the NodePorts whose pods it selects: the version-2 annotation (pure).

Nothing here reads another NetworkPolicy. What a policy contributes to a NodePort depends on
its own spec, the Service and the Service's endpoint pods, so admitting one policy costs the
same with 1 or 1,000 other policies in the namespace, and one policy's change rewrites only its
own annotation. Endpoint pods are named by group (`pod_group_id`: labels and named
ports), so every policy names the same pods the same way and the enforcer can compose them
(`contract/composition.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from contract.annotation import Door, IPFamily, NodePortEntry, PodGroup, SourceSet, pod_group_id
from webhook.addresses import Addresses
from webhook.cluster_view import ClusterView
from webhook.doors import describe_doors, has_door_fields, service_doors
from webhook.objects import labels_of, pod_named_ports, resolve_target_port
from webhook.semantics import IpBlock, Policy, pod_accepts, render_source_set
from webhook.services import (
    ServicePort,
    backing_pods,
    coverage_warnings,
    describe_target,
    is_nodeport_service,
    nodeport_service_ports,
    service_ip_families,
)


@dataclass(frozen=True, slots=True)
class Contribution:
    """The entries of one policy's annotation (sorted) and the warnings about it (sorted)."""

    entries: tuple[NodePortEntry, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PodGroupInfo:
    """Backing pods of a Service that share labels and named ports (one group id), and how many."""

    labels: Mapping[str, str]
    named: Mapping[tuple[str, str], int]
    group: str
    count: int


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """A NodePort Service with its backing pods by group: what every policy's entry is built from."""

    name: str
    selector: Mapping[str, str]
    families: tuple[IPFamily, ...]
    ports: tuple[ServicePort, ...]
    groups: tuple[PodGroupInfo, ...]
    doors: tuple[Door, ...] = ()  # every port's other addresses (webhook/doors.py)

    @property
    def pod_count(self) -> int:
        return sum(g.count for g in self.groups)


def service_endpoints(namespace: str, service: Mapping[str, Any], view: ClusterView) -> ServiceEndpoints:
    """Group the backing pods of a NodePort Service (cost: its pods, never the policies)."""
    found: dict[str, PodGroupInfo] = {}
    # Replicas share labels and named ports: digest each distinct pair once.
    ids: dict[tuple[frozenset[tuple[str, str]], frozenset[tuple[tuple[str, str], int]]], str] = {}
    for pod in backing_pods(namespace, service, view):
        named = pod_named_ports(pod)
        labels = labels_of(pod)
        key = (frozenset(labels.items()), frozenset(named.items()))
        group = ids.get(key)
        if group is None:
            group = ids[key] = pod_group_id(labels, named)
        seen = found.get(group)
        found[group] = PodGroupInfo(labels, named, group, 1 if seen is None else seen.count + 1)
    selector = (service.get("spec") or {}).get("selector") or {}
    doors = service_doors(service, view.node_addresses()) if has_door_fields(service) else ()
    return ServiceEndpoints(
        name=_name_of(service),
        selector=dict(selector),
        families=service_ip_families(service),
        ports=tuple(nodeport_service_ports(service, doors=bool(doors))),
        groups=tuple(found[g] for g in sorted(found)),
        doors=doors,
    )


def namespace_endpoints(namespace: str, view: ClusterView) -> tuple[ServiceEndpoints, ...]:
    """Every NodePort Service of a namespace, grouped (the reconciler builds this once per pass)."""
    return tuple(service_endpoints(namespace, s, view) for s in view.services_in(namespace) if is_nodeport_service(s))


def service_key(service: ServiceEndpoints) -> str:
    """What one Service's entries in any policy depend on besides that policy: its name, selector,
    families, ports and pod group ids (a group id digests labels and named ports). Not the pod counts:
    only the warnings use them. A string, so its hash is computed once per pass, not per policy."""
    return repr(
        (
            service.name,
            tuple(sorted(service.selector.items())),
            service.families,
            service.ports,
            tuple(g.group for g in service.groups),
            service.doors,
        )
    )


def _name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def _entry_for_port(
    policy: Policy,
    endpoints: ServiceEndpoints,
    sp: ServicePort,
    selected: Sequence[bool],
    warnings: set[str],
) -> NodePortEntry | None:
    """This policy's entry for one Service port, or None when it selects none of its endpoints."""
    prefix = sp.describe(endpoints.name)
    own_sources = Addresses.nobody()
    selector_peers = False
    own_blocks: list[IpBlock] = []
    answers: dict[str, tuple[bool, Addresses, list[IpBlock]]] = {}
    for info, chosen in zip(endpoints.groups, selected, strict=True):
        number = resolve_target_port(sp.target, sp.protocol, info.named)
        if number is None:
            continue  # not an endpoint of this port: it receives no NodePort traffic
        if not chosen:
            answers[info.group] = (False, Addresses.nobody(), [])
            continue
        accepted, covering = pod_accepts([policy], number, sp.protocol, info.named)
        blocks = [b for rule in covering for b in rule.ip_blocks]
        answers[info.group] = (True, accepted, blocks)
        own_sources = own_sources.union(accepted)
        selector_peers = selector_peers or any(rule.selector_peers for rule in covering)
        own_blocks.extend(blocks)
    warnings.update(
        coverage_warnings(
            prefix,
            policy,
            chosen=sum(g.count for g, chosen in zip(endpoints.groups, selected, strict=True) if chosen),
            backing=endpoints.pod_count,
            own_sources=own_sources,
            selector_peers=selector_peers,
            blocks=own_blocks,
            families=endpoints.families,
            selected_named=[g.named for g, chosen in zip(endpoints.groups, selected, strict=True) if chosen],
        )
    )
    base = NodePortEntry(
        node_port=sp.node_port,
        protocol=sp.protocol,
        service=endpoints.name,
        service_port=sp.service_port,
        ip_families=endpoints.families,
        scope="all",
        allow=SourceSet.nobody(),
        doors=endpoints.doors,
    )
    if not answers:
        # Fail closed: no endpoint pod resolves the target port (every policy involved says so).
        warnings.add(_drop_all_warning(prefix, sp, endpoints.doors))
        return base
    mine = {gid: (a, b) for gid, (chosen, a, b) in answers.items() if chosen}
    if not mine:
        return None
    if any(a.is_empty() for a, _ in mine.values()):
        warnings.add(_drop_all_warning(prefix, sp, endpoints.doors))
    distinct = {a for a, _ in mine.values()}
    if len(mine) == len(answers) and len(distinct) == 1:
        return replace(base, allow=render_source_set(next(iter(distinct)), own_blocks))
    rendered = tuple(
        PodGroup(id=gid, allow=render_source_set(a, b) if chosen else None)
        for gid, (chosen, a, b) in sorted(answers.items())
    )
    return replace(base, scope="some", groups=rendered)


def _drop_all_warning(prefix: str, sp: ServicePort, doors: tuple[Door, ...] = ()) -> str:
    where = f" (also on its doors {describe_doors(doors, sp.service_port)})" if doors else ""
    return (
        f"{prefix}: all external traffic{where} will be dropped unless another policy selecting its pods allows "
        f"it: no ingress rule of this policy allows an external source on {describe_target(sp)}; "
        "add an ipBlock peer (or omit 'from') on a rule covering that port to allow clients"
    )



def resolve_contribution(
    policy: Policy,
    pod_selector: Mapping[str, Any] | None,
    view: ClusterView,
    endpoints: Sequence[ServiceEndpoints] | None = None,
) -> Contribution:
    """The entries and warnings of one compiled policy (with rules) in its namespace.

    `pod_selector` is the policy's spec.podSelector dict (for the view's pod index): only the
    Services whose selector matches a pod this policy selects are grouped. `endpoints`, when
    given, are every NodePort Service of the namespace already grouped (namespace_endpoints).
    """
    if not policy.affects_ingress:
        return Contribution((), ())
    namespace = policy.namespace
    # The distinct label sets of the selected pods (replicas share theirs): what Services are matched against.
    chosen_labels = {frozenset(labels_of(p).items()) for p in view.pods_matching(namespace, dict(pod_selector or {}))}
    if not chosen_labels:
        return Contribution((), ())
    if endpoints is None:
        endpoints = [
            service_endpoints(namespace, s, view)
            for s in view.services_in(namespace)
            if _selects_some(s, chosen_labels) and is_nodeport_service(s)
        ]
    entries: list[NodePortEntry] = []
    warnings: set[str] = set()
    for service in endpoints:
        entries.extend(_service_entries(policy, service, warnings))
    return Contribution(sort_entries(entries), tuple(sorted(warnings)))


def _service_entries(policy: Policy, service: ServiceEndpoints, warnings: set[str]) -> list[NodePortEntry]:
    """The policy's entries for one Service's ports: they depend on that Service and the policy only."""
    selected = [policy.selector.matches(g.labels) for g in service.groups]
    if not any(selected):
        return []
    out = []
    for sp in service.ports:
        entry = _entry_for_port(policy, service, sp, selected, warnings)
        if entry is not None:
            out.append(entry)
    return out


def service_entries(policy: Policy, service: ServiceEndpoints) -> tuple[NodePortEntry, ...]:
    """One Service's part of `resolve_contribution(policy, ...).entries`, warnings dropped (the
    reconciler writes none). Entries of different Services never depend on each other, so after a
    Service change the reconciler recomputes only that Service's part of each policy and splices it
    into the parts it kept (`splice`): the same entries as a full resolution (tests/unit/test_splice.py)."""
    if not policy.affects_ingress:
        return ()
    return tuple(_service_entries(policy, service, set()))


def sort_entries(entries: Sequence[NodePortEntry]) -> tuple[NodePortEntry, ...]:
    """In annotation order (stable: equal keys keep the Services' order, as in a full resolution)."""
    return tuple(sorted(entries, key=lambda e: (e.node_port, e.protocol, e.service, e.service_port)))


def _selects_some(service: Mapping[str, Any], chosen_labels: Collection[frozenset[tuple[str, str]]]) -> bool:
    wanted = ((service.get("spec") or {}).get("selector") or {}).items()
    return any(wanted <= labels for labels in chosen_labels)
