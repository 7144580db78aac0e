"""NetworkPolicy semantics for NodePorts: selectors, ports, source sets, namespace verdicts (pure)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from webhook import contract
from webhook.contract import CidrRule, SourceSet
from webhook.intervals import Intervals, intersect, merge, of_network, subtract, to_prefixes

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

KubeObject = dict[str, Any]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = get_args(Operator)
PolicyType = Literal["Ingress", "Egress"]
NODEPORT_SERVICE_TYPES = frozenset({"NodePort", "LoadBalancer"})
# Pods in a terminal phase are never endpoints, so they do not constrain a NodePort.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

V4_MAX = 2**32 - 1
V6_MAX = 2**128 - 1


class SemanticsError(ValueError):
    """An object cannot be interpreted; `field` is the path inside it (e.g. spec.podSelector)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --- exact address-set arithmetic -----------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Addresses:
    """A set of IPv4 and IPv6 addresses as sorted, disjoint, non-adjacent inclusive intervals."""

    v4: Intervals = ()
    v6: Intervals = ()

    @staticmethod
    def everyone() -> Addresses:
        return _EVERYONE

    @staticmethod
    def nobody() -> Addresses:
        return _NOBODY

    @staticmethod
    def of_networks(networks: Iterable[Network]) -> Addresses:
        nets = list(networks)
        return Addresses(
            v4=merge(of_network(n) for n in nets if n.version == 4),
            v6=merge(of_network(n) for n in nets if n.version == 6),
        )

    def is_empty(self) -> bool:
        return not self.v4 and not self.v6

    def is_everyone(self) -> bool:
        return self.v4 == ((0, V4_MAX),) and self.v6 == ((0, V6_MAX),)

    def union(self, other: Addresses) -> Addresses:
        if other.is_empty() or self.is_everyone():
            return self
        if self.is_empty() or other.is_everyone():
            return other
        return Addresses(v4=merge(self.v4 + other.v4), v6=merge(self.v6 + other.v6))

    def intersection(self, other: Addresses) -> Addresses:
        if self.is_everyone() or other.is_empty():
            return other
        if other.is_everyone() or self.is_empty():
            return self
        return Addresses(v4=intersect(self.v4, other.v4), v6=intersect(self.v6, other.v6))

    def difference(self, other: Addresses) -> Addresses:
        return Addresses(v4=subtract(self.v4, other.v4), v6=subtract(self.v6, other.v6))

    def contains(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        value = int(ip)
        return any(s <= value <= e for s, e in (self.v4 if ip.version == 4 else self.v6))


_EVERYONE = Addresses(v4=((0, V4_MAX),), v6=((0, V6_MAX),))
_NOBODY = Addresses()


# --- label selectors ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            # Objects lacking the key match NotIn (Kubernetes labels.Selector semantics).
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled LabelSelector; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(r.matches(labels) for r in self.requirements)


def compile_selector(selector: object, where: str) -> Selector:
    """Compile a LabelSelector dict; None or {} match everything. Raises SemanticsError."""
    if selector is None:
        return Selector()
    if not isinstance(selector, dict):
        raise SemanticsError(where, f"expected a LabelSelector object, got {type(selector).__name__}")
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, dict):
        raise SemanticsError(f"{where}.matchLabels", "expected a map of label key to value")
    for key, value in match_labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SemanticsError(f"{where}.matchLabels", f"{key!r}: {value!r} is not a string pair")
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SemanticsError(f"{where}.matchExpressions", "expected a list")
    requirements: list[Requirement] = []
    for i, expr in enumerate(expressions):
        path = f"{where}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            raise SemanticsError(path, "expected an object with key, operator and values")
        key = expr.get("key")
        operator = expr.get("operator")
        values = expr.get("values") or []
        if not isinstance(key, str) or not key:
            raise SemanticsError(f"{path}.key", "a non-empty label key is required")
        if operator not in OPERATORS:
            raise SemanticsError(
                f"{path}.operator", f"{operator!r} is not a valid operator; use one of {list(OPERATORS)}"
            )
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SemanticsError(f"{path}.values", "expected a list of strings")
        if operator in ("In", "NotIn") and not values:
            raise SemanticsError(f"{path}.values", f"operator {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SemanticsError(f"{path}.values", f"operator {operator} takes no values; remove them")
        requirements.append(Requirement(key=key, operator=operator, values=frozenset(values)))
    return Selector(
        match_labels=tuple(sorted(match_labels.items())),
        requirements=tuple(sorted(requirements, key=lambda r: (r.key, r.operator, sorted(r.values)))),
    )


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Whether a LabelSelector dict matches a label map."""
    return compile_selector(selector, "selector").matches(labels or {})


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}


def meta_str(obj: Mapping[str, Any], key: str) -> str:
    meta = obj.get("metadata") or {}
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


# --- pods -----------------------------------------------------------------------------------

# (port name, protocol) -> containerPort number
NamedPorts = Mapping[tuple[str, str], int]


def pod_named_ports(pod: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """Named containerPorts of a pod (containers and restartable init containers)."""
    spec = pod.get("spec") or {}
    out: dict[tuple[str, str], int] = {}
    containers = list(spec.get("containers") or [])
    containers += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in containers:
        for port in container.get("ports") or []:
            name = port.get("name")
            number = port.get("containerPort")
            if isinstance(name, str) and name and isinstance(number, int):
                out.setdefault((name, port.get("protocol") or "TCP"), number)
    return out


def resolve_target_port(target: int | str, protocol: str, named: NamedPorts) -> int | None:
    """The pod port a Service port forwards to, or None when a named targetPort does not resolve."""
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    return named.get((target, protocol))


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


def parse_cidr(text: object, path: str, *, strict: bool) -> Network:
    if not isinstance(text, str):
        raise SemanticsError(path, f"expected a CIDR string, got {type(text).__name__}")
    if not text.partition("/")[2].isdigit():
        # ipaddress would accept a bare address or a netmask; Kubernetes wants address/length.
        raise SemanticsError(path, f"{text!r} is not a valid CIDR: write address/prefix-length, e.g. 192.0.2.0/24")
    try:
        return ipaddress.ip_network(text, strict=strict)
    except ValueError as exc:
        if strict and "/" in text:
            try:
                fixed = ipaddress.ip_network(text, strict=False)
            except ValueError:
                pass
            else:
                raise SemanticsError(path, f"{text} has host bits set; did you mean {fixed}?") from exc
        raise SemanticsError(path, f"{text!r} is not a valid CIDR (e.g. 192.0.2.0/24): {exc}") from exc


# (version, first address, last address, prefix length)
NetKey = tuple[int, int, int, int]


def _net_key(net: Network) -> NetKey:
    return net.version, int(net.network_address), int(net.broadcast_address), net.prefixlen


def _fast_net_key(text: object) -> tuple[NetKey, bool] | None:
    """Parse a CIDR without the ipaddress module (it dominates resolution time): the network
    (host bits masked) and whether host bits were set. None when the text is not a plain CIDR;
    the caller then falls back to ipaddress for the verdict and the error message."""
    if not isinstance(text, str):
        return None
    addr, sep, plen = text.partition("/")
    if not sep or not plen.isdigit() or (len(plen) > 1 and plen[0] == "0"):
        return None
    version, family, bits = (6, socket.AF_INET6, 128) if ":" in addr else (4, socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, addr), "big")
    except OSError:
        return None
    prefix = int(plen)
    if prefix > bits:
        return None
    host = (1 << (bits - prefix)) - 1
    start = value & ~host
    return (version, start, start | host, prefix), start != value


def net_text(key: NetKey) -> str:
    """Canonical text of a network (the form written into annotations)."""
    version, start, _, prefix = key
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, start.to_bytes(4, 'big'))}/{prefix}"
    return str(ipaddress.IPv6Network((start, prefix)))


def _net_key_of(text: object, path: str, *, strict: bool) -> NetKey:
    fast = _fast_net_key(text)
    if fast is not None:
        key, host_bits = fast
        if strict and host_bits:
            raise SemanticsError(path, f"{text} has host bits set; did you mean {net_text(key)}?")
        return key
    return _net_key(parse_cidr(text, path, strict=strict))


def compile_ip_block(block: Mapping[str, Any], path: str, *, strict: bool) -> IpBlock:
    """An ipBlock peer. strict=True rejects host bits and excepts outside the cidr (admission);
    strict=False reads stored objects the way the dataplane does (host bits masked)."""
    raw_cidr = block.get("cidr")
    net = _net_key_of(raw_cidr, f"{path}.cidr", strict=strict)
    excepts: list[NetKey] = []
    exact = True
    raw_excepts = block.get("except") or []
    if not isinstance(raw_excepts, list):
        raise SemanticsError(f"{path}.except", "expected a list of CIDRs")
    for i, raw in enumerate(raw_excepts):
        epath = f"{path}.except[{i}]"
        enet = _net_key_of(raw, epath, strict=strict)
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
    if protocol not in contract.PROTOCOLS:
        raise SemanticsError(f"{path}.protocol", f"{protocol!r} is not one of {list(contract.PROTOCOLS)}")
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
        return IngressRule(path=path, ports=ports, sources=_EVERYONE, ip_blocks=(), selector_peers=False)
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
    sources = _NOBODY
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
        return _EVERYONE, []
    accepted = _NOBODY
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


def source_set_contains(sources: SourceSet, address: str) -> bool:
    """Whether a client address is allowed by a contract SourceSet (families never mix)."""
    if sources.all_sources:
        return True
    ip = ipaddress.ip_address(address)
    for rule in sources.cidrs:
        net = ipaddress.ip_network(rule.cidr)
        if ip.version == net.version and ip in net and not any(ip in ipaddress.ip_network(e) for e in rule.excepts):
            return True
    return False


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
