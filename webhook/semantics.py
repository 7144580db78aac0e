"""NetworkPolicy semantics for NodePorts: selectors, ports, source sets, namespace verdicts (pure)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from contract.annotation import PROTOCOLS, CidrRule, SourceSet
from contract.intervals import Intervals, merge, subtract, to_prefixes
from webhook.addresses import Addresses, NetKey, net_key_of, net_text
from webhook.objects import NamedPorts, Selector, SemanticsError, compile_selector, labels_of, meta_str

logger = logging.getLogger(__name__)

PolicyType = Literal["Ingress", "Egress"]


# --- policies -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyPort:
    """One NetworkPolicyPort: protocol (default TCP), a number, a name or none (= all ports)."""

    protocol: str
    port: int | str | None
    end_port: int | None

    def covers(self, number: int, protocol: str, named: NamedPorts) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        if isinstance(self.port, int):
            return self.port <= number <= (self.end_port if self.end_port is not None else self.port)
        return named.get((self.port, self.protocol)) == number


@dataclass(frozen=True, slots=True)
class IpBlock:
    """An ipBlock peer: `cidr` and `excepts` normalised, `addresses` = cidr minus excepts."""

    cidr: str
    excepts: tuple[str, ...]
    version: int
    addresses: Addresses
    path: str
    # False when a stored except is not strictly inside the cidr: then "cidr minus excepts"
    # cannot be written in the contract's form and the block is rendered as prefixes.
    exact: bool = True


@dataclass(frozen=True, slots=True)
class IngressRule:
    path: str
    ports: tuple[PolicyPort, ...]  # empty = every port
    sources: Addresses
    ip_blocks: tuple[IpBlock, ...]
    selector_peers: bool  # has podSelector/namespaceSelector peers (never external clients)

    def covers(self, number: int, protocol: str, named: NamedPorts) -> bool:
        return not self.ports or any(p.covers(number, protocol, named) for p in self.ports)


@dataclass(frozen=True, slots=True)
class Policy:
    namespace: str
    name: str
    uid: str
    selector: Selector
    affects_ingress: bool
    rules: tuple[IngressRule, ...]

    def selects(self, pod: Mapping[str, Any]) -> bool:
        return self.selector.matches(labels_of(pod))


def policy_types(policy: Mapping[str, Any]) -> tuple[PolicyType, ...]:
    """spec.policyTypes with API defaulting: Ingress always, Egress when spec.egress is non-empty."""
    spec = policy.get("spec") or {}
    explicit = spec.get("policyTypes")
    if explicit:
        return tuple(sorted(t for t in set(explicit) if t in ("Ingress", "Egress")))
    return ("Egress", "Ingress") if spec.get("egress") else ("Ingress",)


def compile_ip_block(block: Mapping[str, Any], path: str, *, strict: bool) -> IpBlock:
    """An ipBlock peer. strict=True rejects host bits and excepts outside the cidr (admission);
    strict=False reads stored objects the way the dataplane does (host bits masked)."""
    raw_cidr = block.get("cidr")
    net = net_key_of(raw_cidr, f"{path}.cidr", strict=strict)
    excepts: list[NetKey] = []
    exact = True
    raw_excepts = block.get("except") or []
    if not isinstance(raw_excepts, list):
        raise SemanticsError(f"{path}.except", "expected a list of CIDRs")
    for i, raw in enumerate(raw_excepts):
        epath = f"{path}.except[{i}]"
        enet = net_key_of(raw, epath, strict=strict)
        inside = enet[0] == net[0] and net[1] <= enet[1] and enet[2] <= net[2] and enet[3] > net[3]
        if strict and not inside:
            raise SemanticsError(
                epath,
                f"{raw} is not strictly inside the cidr {raw_cidr}; use a smaller range inside it or drop it",
            )
        exact = exact and inside
        excepts.append(enet)
    cidr_part: Intervals = ((net[1], net[2]),)
    except_part = merge((e[1], e[2]) for e in excepts if e[0] == net[0])
    part = subtract(cidr_part, except_part)
    addresses = Addresses(v4=part) if net[0] == 4 else Addresses(v6=part)
    return IpBlock(
        cidr=net_text(net),
        excepts=tuple(sorted({net_text(e) for e in excepts})),
        version=net[0],
        addresses=addresses,
        path=path,
        exact=exact,
    )


def _compile_port(entry: object, path: str) -> PolicyPort:
    if not isinstance(entry, dict):
        raise SemanticsError(path, "expected a NetworkPolicyPort object")
    protocol = entry.get("protocol") or "TCP"
    if protocol not in PROTOCOLS:
        raise SemanticsError(f"{path}.protocol", f"{protocol!r} is not one of {list(PROTOCOLS)}")
    port = entry.get("port")
    end_port = entry.get("endPort")
    if port is not None and not isinstance(port, int | str):
        raise SemanticsError(f"{path}.port", f"expected a number or a port name, got {port!r}")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if end_port is not None and (not isinstance(end_port, int) or not isinstance(port, int)):
        raise SemanticsError(f"{path}.endPort", "endPort needs a numeric port and must be a number")
    return PolicyPort(protocol=protocol, port=port, end_port=end_port)


def _compile_rule(rule: object, path: str, *, strict: bool) -> IngressRule:
    if not isinstance(rule, dict):
        raise SemanticsError(path, "expected a NetworkPolicyIngressRule object")
    ports = tuple(_compile_port(p, f"{path}.ports[{i}]") for i, p in enumerate(rule.get("ports") or []))
    peers = rule.get("from") or []
    if not isinstance(peers, list):
        raise SemanticsError(f"{path}.from", "expected a list of peers")
    if not peers:
        return IngressRule(path=path, ports=ports, sources=Addresses.everyone(), ip_blocks=(), selector_peers=False)
    blocks: list[IpBlock] = []
    selector_peers = False
    for i, peer in enumerate(peers):
        ppath = f"{path}.from[{i}]"
        if not isinstance(peer, dict):
            raise SemanticsError(ppath, "expected a NetworkPolicyPeer object")
        if peer.get("ipBlock") is not None:
            block = peer["ipBlock"]
            if not isinstance(block, dict):
                raise SemanticsError(f"{ppath}.ipBlock", "expected an object with cidr and except")
            try:
                blocks.append(compile_ip_block(block, f"{ppath}.ipBlock", strict=strict))
            except SemanticsError:
                if strict:
                    raise
                # A stored, unreadable block allows nobody: fail closed rather than fail the namespace.
                logger.warning("ignoring unreadable ipBlock", extra={"field": ppath})
        for key in ("podSelector", "namespaceSelector"):
            if peer.get(key) is not None:
                compile_selector(peer[key], f"{ppath}.{key}")
                selector_peers = True
    sources = Addresses.nobody()
    for b in blocks:
        sources = sources.union(b.addresses)
    return IngressRule(path=path, ports=ports, sources=sources, ip_blocks=tuple(blocks), selector_peers=selector_peers)


def compile_policy(policy: Mapping[str, Any], *, strict: bool = False, with_rules: bool = True) -> Policy:
    """Interpret a NetworkPolicy dict (un-defaulted allowed). Raises SemanticsError naming the field.

    with_rules=False compiles only what decides which pods the policy selects (cheap)."""
    spec = policy.get("spec") or {}
    if not isinstance(spec, dict):
        raise SemanticsError("spec", "expected an object")
    affects_ingress = "Ingress" in policy_types(policy)
    rules: tuple[IngressRule, ...] = ()
    raw_rules = spec.get("ingress") or []
    if not isinstance(raw_rules, list):
        raise SemanticsError("spec.ingress", "expected a list of rules")
    # Rules of a policy that does not apply to ingress are still checked in strict mode.
    if (affects_ingress or strict) and with_rules:
        rules = tuple(_compile_rule(r, f"spec.ingress[{i}]", strict=strict) for i, r in enumerate(raw_rules))
    return Policy(
        namespace=meta_str(policy, "namespace"),
        name=meta_str(policy, "name"),
        uid=meta_str(policy, "uid"),
        selector=compile_selector(spec.get("podSelector"), "spec.podSelector"),
        affects_ingress=affects_ingress,
        rules=rules if affects_ingress else (),
    )


def pod_accepts(
    policies: Sequence[Policy], number: int, protocol: str, named: NamedPorts
) -> tuple[Addresses, list[IngressRule]]:
    """Sources the pod accepts on (number, protocol) given the ingress policies selecting it,
    and the rules that cover that port. With no policy the pod is not isolated."""
    if not policies:
        return Addresses.everyone(), []
    accepted = Addresses.nobody()
    covering: list[IngressRule] = []
    for policy in policies:
        for rule in policy.rules:
            if rule.covers(number, protocol, named):
                covering.append(rule)
                accepted = accepted.union(rule.sources)
    return accepted, covering


# --- rendering ------------------------------------------------------------------------------


def render_source_set(addresses: Addresses, blocks: Iterable[IpBlock] = ()) -> SourceSet:
    """The contract form of an address set. A family whose part is exactly one of `blocks` keeps
    that block's cidr/except form (what the user wrote); otherwise disjoint collapsed prefixes."""
    if addresses.is_everyone():
        return SourceSet.everyone()
    rules: list[CidrRule] = []
    for version, part in ((4, addresses.v4), (6, addresses.v6)):
        if not part:
            continue
        same = next(
            (
                b
                for b in sorted(blocks, key=lambda b: (len(b.excepts), b.cidr, b.excepts))
                if b.exact and b.version == version and (b.addresses.v4 if version == 4 else b.addresses.v6) == part
            ),
            None,
        )
        if same is not None:
            rules.append(CidrRule(cidr=same.cidr, excepts=same.excepts))
        else:
            rules.extend(CidrRule(cidr=str(n)) for n in to_prefixes(part, version))
    return SourceSet(all_sources=False, cidrs=tuple(sorted(rules)))


class PolicyMemo:
    """Compiled forms of stored policies, reused across resolutions (a pure cache: same results).

    Keyed by object identity: the webhook's cache replaces a policy's dict when it changes and
    never edits one in place. Each entry holds its object, so an id cannot be reused while it is
    remembered; the least recently used entries are dropped beyond `capacity`.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[int, bool], tuple[Mapping[str, Any], Policy]] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, obj: Mapping[str, Any], with_rules: bool) -> Policy:
        key = (id(obj), with_rules)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is obj:
                self._entries.move_to_end(key)
                return entry[1]
        policy = compile_policy(obj, with_rules=with_rules)
        with self._lock:
            self._entries[key] = (obj, policy)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return policy
