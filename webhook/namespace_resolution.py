"""The namespace-wide NodePort verdicts of every policy: the reference resolution (pure).

Contract version 1 wrote these verdicts into the annotations. Version 2 writes each policy's own
part (`webhook/contribution.py`) and the enforcer composes them (`contract/composition.py`); this
module stays the executable statement of the semantics: the tests hold the composition equal to
it on every shared scenario and on random namespaces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.annotation import NodePortVerdict
from webhook.addresses import Addresses
from webhook.doors import has_door_fields, service_doors
from webhook.objects import labels_of, meta_str, pod_named_ports, resolve_target_port
from webhook.semantics import IpBlock, Policy, PolicyMemo, compile_policy, pod_accepts, render_source_set
from webhook.services import (
    backing_pods,
    coverage_warnings,
    describe_target,
    is_nodeport_service,
    nodeport_service_ports,
    service_ip_families,
)

if TYPE_CHECKING:
    from webhook.cluster_view import ClusterView


@dataclass(frozen=True, slots=True)
class NamespaceResolution:
    """Per policy of a namespace: the verdicts for its annotation and its warnings (sorted)."""

    namespace: str
    policies: tuple[str, ...]
    uids: Mapping[str, str] = field(default_factory=dict)
    verdicts: Mapping[str, tuple[NodePortVerdict, ...]] = field(default_factory=dict)
    warnings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def verdicts_for(self, name: str) -> tuple[NodePortVerdict, ...]:
        return self.verdicts.get(name, ())

    def warnings_for(self, name: str) -> tuple[str, ...]:
        return self.warnings.get(name, ())

def _effective_policies(
    namespace: str,
    view: ClusterView,
    replace: Mapping[str, Any] | None,
    remove: tuple[str, str] | None,
) -> list[Mapping[str, Any]]:
    replace_name = meta_str(replace, "name") if replace is not None else None
    removed = remove[1] if remove is not None and remove[0] == namespace else None
    out: list[Mapping[str, Any]] = []
    for obj in view.policies_in(namespace):
        name = meta_str(obj, "name")
        if name in (removed, replace_name):
            continue
        out.append(obj)
    if replace is not None and replace_name != removed:
        out.append(replace)
    return sorted(out, key=lambda o: meta_str(o, "name"))

class _Collector:
    """Accumulates verdicts and warnings per policy during one resolution (local to a call)."""

    __slots__ = ("verdicts", "warnings")

    def __init__(self) -> None:
        self.verdicts: dict[str, list[NodePortVerdict]] = {}
        self.warnings: dict[str, set[str]] = {}

    def warn(self, policy: str, message: str) -> None:
        self.warnings.setdefault(policy, set()).add(message)

class _Compiler:
    """Compiles a policy the first time a resolution needs it; stored ones through the memo."""

    __slots__ = ("_done", "_memo", "_objs", "_replace", "_replace_compiled")

    def __init__(
        self,
        objs: Mapping[str, Mapping[str, Any]],
        memo: PolicyMemo | None,
        replace: Mapping[str, Any] | None,
        replace_compiled: Policy | None,
    ) -> None:
        self._objs = objs
        self._done: dict[str, Policy] = {}
        self._memo = memo
        # The policy being admitted is new on every request: never remembered, and compiled once
        # (the admission already did, strictly, which gives the same Policy for a valid object).
        self._replace = replace
        self._replace_compiled = replace_compiled

    def compile(self, obj: Mapping[str, Any], with_rules: bool) -> Policy:
        if obj is self._replace:
            if self._replace_compiled is None:
                self._replace_compiled = compile_policy(obj)
            return self._replace_compiled
        if self._memo is None:
            return compile_policy(obj, with_rules=with_rules)
        return self._memo.compile(obj, with_rules)

    def rules_of(self, head: Policy) -> Policy:
        policy = self._done.get(head.name)
        if policy is None:
            policy = self._done[head.name] = self.compile(self._objs[head.name], True)
        return policy

def _resolve_service(
    service: Mapping[str, Any],
    backing: Sequence[Mapping[str, Any]],
    heads: Sequence[Policy],
    full: _Compiler,
    out: _Collector,
    doors: bool = False,
) -> None:
    selecting = [[full.rules_of(p) for p in heads if p.selects(pod)] for pod in backing]
    if not any(selecting):
        return
    named = [pod_named_ports(pod) for pod in backing]
    name = meta_str(service, "name")
    families = service_ip_families(service)
    involved = sorted({p.name: p for sel in selecting for p in sel}.values(), key=lambda p: p.name)
    # A door gets its Service port's verdict (webhook/doors.py): a port without a NodePort is judged too.
    for sp in nodeport_service_ports(service, doors=doors):
        node_port, protocol, service_port, target = sp.node_port, sp.protocol, sp.service_port, sp.target
        prefix = sp.describe(name)
        result = Addresses.everyone()
        resolved_any = False
        blocks: list[IpBlock] = []
        per_policy: dict[str, tuple[Addresses, bool, list[IpBlock]]] = {}
        for pod_named, pols in zip(named, selecting, strict=True):
            number = resolve_target_port(target, protocol, pod_named)
            if number is None:
                continue  # not an endpoint of this port: it receives no NodePort traffic
            resolved_any = True
            if not pols:
                continue
            accepted, covering = pod_accepts(pols, number, protocol, pod_named)
            result = result.intersection(accepted)
            for rule in covering:
                blocks.extend(rule.ip_blocks)
            for p in pols:
                mine = [r for r in covering if any(r is q for q in p.rules)]
                srcs, sel, blks = per_policy.get(p.name, (Addresses.nobody(), False, []))
                for r in mine:
                    srcs = srcs.union(r.sources)
                    sel = sel or r.selector_peers
                    blks = blks + list(r.ip_blocks)
                per_policy[p.name] = (srcs, sel, blks)
        if not resolved_any:
            result = Addresses.nobody()  # fail closed: no pod resolves the target port
        verdict = NodePortVerdict(
            node_port=node_port,
            protocol=protocol,
            service=name,
            service_port=service_port,
            ip_families=families,
            allow=render_source_set(result, blocks),
        )
        for policy in involved:
            out.verdicts.setdefault(policy.name, []).append(verdict)
            if result.is_empty():
                out.warn(
                    policy.name,
                    f"{prefix}: all external traffic will be dropped: no ingress rule of the policies "
                    f"selecting its pods allows an external source on {describe_target(sp)}; "
                    "add an ipBlock peer (or omit 'from') on a rule covering that port to allow clients",
                )
            chosen = sum(1 for sel in selecting if any(q is policy for q in sel))
            srcs, sel, blks = per_policy.get(policy.name, (Addresses.nobody(), False, []))
            mine_named = [n for n, s2 in zip(named, selecting, strict=True) if any(q is policy for q in s2)]
            for message in coverage_warnings(
                prefix,
                policy,
                chosen=chosen,
                backing=len(backing),
                own_sources=srcs,
                selector_peers=sel,
                blocks=blks,
                families=families,
                selected_named=mine_named,
            ):
                out.warn(policy.name, message)

def _resolve(
    namespace: str,
    view: ClusterView,
    replace: Mapping[str, Any] | None,
    remove: tuple[str, str] | None,
    focus: str | None,
    memo: PolicyMemo | None = None,
    replace_compiled: Policy | None = None,
) -> NamespaceResolution:
    objs = _effective_policies(namespace, view, replace, remove)
    full = _Compiler({meta_str(o, "name"): o for o in objs}, memo, replace, replace_compiled)
    compiled = [full.compile(o, False) for o in objs]
    ingress = [p for p in compiled if p.affects_ingress]
    out = _Collector()
    focus_policy = next((p for p in ingress if p.name == focus), None) if focus is not None else None
    if ingress and (focus is None or focus_policy is not None):
        # Order does not matter: verdicts and warnings are sorted when the result is built.
        services = [s for s in view.services_in(namespace) if is_nodeport_service(s)]
        focus_labels: list[Mapping[str, str]] = []
        if focus_policy is not None:
            focus_obj = next(o for o in objs if meta_str(o, "name") == focus)
            selector = (focus_obj.get("spec") or {}).get("podSelector") or {}
            focus_labels = [labels_of(p) for p in view.pods_matching(namespace, selector)]
        for service in services:
            if focus_policy is not None:
                wanted = ((service.get("spec") or {}).get("selector") or {}).items()
                if not any(wanted <= lb.items() for lb in focus_labels):
                    continue  # the focused policy selects no pod of this Service: no verdict for it
            backing = backing_pods(namespace, service, view)
            doors = has_door_fields(service) and bool(service_doors(service, view.node_addresses()))
            _resolve_service(service, backing, ingress, full, out, doors)
    names = tuple(sorted(p.name for p in compiled)) if focus is None else (focus,)
    return NamespaceResolution(
        namespace=namespace,
        policies=names,
        uids={p.name: p.uid for p in compiled if p.name in names},
        verdicts={
            n: tuple(sorted(v, key=lambda x: (x.node_port, x.protocol, x.service, x.service_port)))
            for n, v in out.verdicts.items()
            if n in names
        },
        warnings={n: tuple(sorted(w)) for n, w in out.warnings.items() if n in names},
    )

def resolve_namespace(
    namespace: str,
    view: ClusterView,
    replace: Mapping[str, Any] | None = None,
    remove: tuple[str, str] | None = None,
    memo: PolicyMemo | None = None,
) -> NamespaceResolution:
    """The namespace-wide NodePort verdicts for every policy of `namespace`.

    `replace` is a policy in its new form (replacing the stored one of the same name, or added);
    `remove` is (namespace, name) of a policy being deleted; `memo` reuses compiled stored policies.
    """
    return _resolve(namespace, view, replace, remove, focus=None, memo=memo)

def resolve_policy(
    namespace: str,
    name: str,
    view: ClusterView,
    replace: Mapping[str, Any] | None = None,
    memo: PolicyMemo | None = None,
    replace_compiled: Policy | None = None,
) -> NamespaceResolution:
    """Like resolve_namespace but computes only what policy `name` needs (verdicts and warnings
    for the NodePorts whose pods it selects); the admission path uses this.

    `memo` reuses compiled stored policies across calls; `replace_compiled` is `replace` already
    compiled (strictly) by the caller. Neither changes the result.
    """
    return _resolve(namespace, view, replace, None, focus=name, memo=memo, replace_compiled=replace_compiled)
