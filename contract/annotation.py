"""The annotation contract between webhook and enforcer: keys, schema, canonical JSON, signature (pure).

This module is the only owner of the annotation format. The webhook encodes and signs; the
enforcer decodes and verifies, treating the annotation as untrusted input. See docs/annotation.md.
Stdlib only, but for the keys and the signature primitive in `contract.signing` (Ed25519).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from contract.signing import ED25519_SCHEME, Signer, VerifierKeys

ANNOTATION_PREFIX = "nodeport-guard.io/"
NODEPORTS_KEY = ANNOTATION_PREFIX + "nodeports"
SIGNATURE_KEY = ANNOTATION_PREFIX + "signature"
# Set by the policy's author, not by the webhook (so not one of our owned keys): "audit" or
# "enforce" (the default). The webhook carries it into the signed value; see docs/annotation.md.
MODE_KEY = ANNOTATION_PREFIX + "mode"
# The version this build writes for an enforcing policy. It also reads version 1 (a namespace-wide
# verdict copied into every policy) during an upgrade, and composes it fail-closed. An auditing
# policy is written as version 3 (version 2 plus a signed "mode"), so an older enforcer, which
# reads 1 and 2, never mistakes it for anything: it refuses it (docs/annotation.md).
CONTRACT_VERSION = 2
AUDIT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
SIGNATURE_SCHEME = ED25519_SCHEME  # "ed25519:<key id>:<base64>", see contract/signing.py
# Upper bound on what the enforcer will accept from one annotation (the webhook's own,
# configurable limits are lower); protects the node from a huge or hostile value.
MAX_ANNOTATION_BYTES = 256 * 1024
# A pod group id: lowercase hex of a SHA-256 prefix (see pod_group_id).
GROUP_ID_LENGTH = 32

Protocol = Literal["TCP", "UDP", "SCTP"]
IPFamily = Literal["IPv4", "IPv6"]
# all: this policy selects every endpoint pod of the NodePort and lets `allow` in on each.
# some: `groups` lists every endpoint pod group with what this policy lets in (None: not selected).
# verdict: a version-1 entry, the namespace-wide verdict; only ever intersected (fail closed).
Scope = Literal["all", "some", "verdict"]
# enforce: drop what the verdict denies; audit: count and log it, let it through.
Mode = Literal["enforce", "audit"]
MODES: tuple[Mode, ...] = get_args(Mode)
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
IP_FAMILIES: tuple[IPFamily, ...] = get_args(IPFamily)


class ContractError(ValueError):
    """The annotation violates the contract; `field` is a JSON path inside it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True, order=True)
class CidrRule:
    """Sources inside `cidr` but not inside any of `excepts` (NetworkPolicy ipBlock semantics)."""

    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceSet:
    """Allowed sources: every source (`all_sources`), else the union of `cidrs` (empty = none)."""

    all_sources: bool
    cidrs: tuple[CidrRule, ...] = ()

    @staticmethod
    def everyone() -> SourceSet:
        return SourceSet(all_sources=True)

    @staticmethod
    def nobody() -> SourceSet:
        return SourceSet(all_sources=False)

    def is_nobody(self) -> bool:
        return not self.all_sources and not self.cidrs


@dataclass(frozen=True, slots=True)
class NodePortVerdict:
    """The namespace-wide verdict for one NodePort of one Service port (what the enforcer composes)."""

    node_port: int
    protocol: Protocol
    service: str
    service_port: int
    ip_families: tuple[IPFamily, ...]
    allow: SourceSet

    def entry(self, scope: Scope = "all") -> NodePortEntry:
        """This verdict as an annotation entry: of a policy selecting every endpoint pod and
        allowing exactly it ("all"), or as a version-1 entry ("verdict")."""
        return NodePortEntry(
            self.node_port, self.protocol, self.service, self.service_port, self.ip_families, scope, self.allow
        )


@dataclass(frozen=True, slots=True)
class PodGroup:
    """Endpoint pods of a NodePort that look alike to every policy (same labels, same named ports).

    `allow` is what the annotated policy lets in on these pods; None when it does not select them.
    """

    id: str
    allow: SourceSet | None


# Where a door's address comes from: status.loadBalancer.ingress[].ip, or spec.externalIPs.
DoorSource = Literal["loadBalancer", "externalIP"]
DOOR_SOURCES: tuple[DoorSource, ...] = get_args(DoorSource)


@dataclass(frozen=True, slots=True, order=True)
class Door:
    """Another address of a Service port, DNATed by kube-proxy like the NodePort (contract/doors.py)."""

    ip: str  # compressed form (ipaddress), of a family of the entry's ipFamilies
    source: DoorSource


@dataclass(frozen=True, slots=True)
class NodePortEntry:
    """One policy's own part in one NodePort (version 2), or a version-1 verdict (scope "verdict")."""

    node_port: int
    protocol: Protocol
    service: str
    service_port: int
    ip_families: tuple[IPFamily, ...]
    scope: Scope
    allow: SourceSet = SourceSet(all_sources=False)  # scope all and verdict
    groups: tuple[PodGroup, ...] = ()  # scope some: every endpoint group, sorted by id
    # The Service port's doors, sorted by ip (written only in the doors value, version 4); node_port
    # is 0 when the port has doors and no NodePort (allocateLoadBalancerNodePorts: false).
    doors: tuple[Door, ...] = ()

    def sources(self) -> tuple[SourceSet, ...]:
        """Every source set the entry names (for counting and display)."""
        if self.scope == "some":
            return tuple(g.allow for g in self.groups if g.allow is not None)
        return (self.allow,)


@dataclass(frozen=True, slots=True)
class PolicyRef:
    namespace: str
    name: str
    # Empty while a policy is being created (the apiserver assigns the uid after mutating
    # admission); the reconciler re-signs with the real uid right after creation.
    uid: str


@dataclass(frozen=True, slots=True)
class Annotation:
    policy: PolicyRef
    node_ports: tuple[NodePortEntry, ...]
    version: int = CONTRACT_VERSION
    mode: Mode = "enforce"  # version 3 only carries it; versions 1 and 2 are "enforce"


def annotation_for(policy: PolicyRef, node_ports: tuple[NodePortEntry, ...], mode: Mode) -> Annotation:
    """The annotation this build writes: version 2 when enforcing (readable by every enforcer
    since 0.2), version 3 with the mode when auditing."""
    if mode == "enforce":
        return Annotation(policy, node_ports)
    return Annotation(policy, node_ports, version=AUDIT_VERSION, mode=mode)


def read_mode(annotations: Mapping[str, Any] | None) -> Mode:
    """The mode the policy's author asked for with `nodeport-guard.io/mode` (absent: enforce)."""
    value = (annotations or {}).get(MODE_KEY)
    if value is None:
        return "enforce"
    if value not in MODES:
        raise ContractError(
            f'metadata.annotations["{MODE_KEY}"]',
            f"{value!r} is not one of {list(MODES)}; set it to audit (count, do not drop) or remove it (enforce)",
        )
    return value  # type: ignore[no-any-return]


def pod_group_id(labels: Mapping[str, str], named_ports: Mapping[tuple[str, str], int]) -> str:
    """The id of a pod group: a digest of what any policy's verdict on a pod can depend on.

    Selection depends only on the labels, and port coverage only on the named containerPorts, so
    pods with equal digests are selected and covered alike by every policy: each policy's
    annotation names them the same way without looking at any other policy.
    """
    canonical = json.dumps(
        [sorted(labels.items()), sorted([name, protocol, number] for (name, protocol), number in named_ports.items())],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:GROUP_ID_LENGTH]


def _sort_key(v: NodePortEntry) -> tuple[int, str, str, int]:
    return (v.node_port, v.protocol, v.service, v.service_port)


def _source_json(allow: SourceSet) -> dict[str, Any]:
    out: dict[str, Any] = {"all": allow.all_sources}
    if not allow.all_sources:
        out["cidrs"] = [{"cidr": c.cidr, "except": sorted(c.excepts)} for c in sorted(allow.cidrs)]
    return out


def _entry_json(entry: NodePortEntry, version: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "nodePort": entry.node_port,
        "protocol": entry.protocol,
        "service": entry.service,
        "servicePort": entry.service_port,
        "ipFamilies": sorted(entry.ip_families),
    }
    if version == 1:
        out["allow"] = _source_json(entry.allow)
    elif entry.scope == "all":
        out["pods"] = "all"
        out["allow"] = _source_json(entry.allow)
    else:
        out["pods"] = "some"
        out["groups"] = [
            {"id": g.id, "allow": None if g.allow is None else _source_json(g.allow)}
            for g in sorted(entry.groups, key=lambda g: g.id)
        ]
    return out


def _to_json(annotation: Annotation) -> dict[str, Any]:
    out = _to_json_v2(annotation)
    if annotation.version >= AUDIT_VERSION:
        out["mode"] = annotation.mode
    return out


def _to_json_v2(annotation: Annotation) -> dict[str, Any]:
    return {
        "version": annotation.version,
        "policy": {
            "namespace": annotation.policy.namespace,
            "name": annotation.policy.name,
            "uid": annotation.policy.uid,
        },
        "nodePorts": [_entry_json(v, annotation.version) for v in sorted(annotation.node_ports, key=_sort_key)],
    }


def encode(annotation: Annotation) -> str:
    """Canonical JSON: sorted keys and lists, no whitespace; equal annotations give equal strings."""
    if annotation.version not in READ_VERSIONS:
        raise ContractError("$.version", f"cannot encode version {annotation.version}")
    if annotation.version < AUDIT_VERSION and annotation.mode != "enforce":
        raise ContractError("$.mode", f"version {annotation.version} cannot carry mode {annotation.mode!r}")
    return json.dumps(_to_json(annotation), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_text(entry: NodePortEntry) -> str:
    """One version-2/3 entry's canonical JSON, as `encode` writes it inside "nodePorts"."""
    return json.dumps(_entry_json(entry, CONTRACT_VERSION), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def encode_texts(annotation: Annotation, texts: Sequence[str]) -> str:
    """`encode(annotation)` from its entries' `entry_text`s, given in annotation order (version 2 or 3).

    For the reconciler, which keeps each entry's text while the entry is unchanged: a Service
    change then encodes one entry per policy instead of all of them (tests/unit/test_splice.py
    holds this equal to `encode`)."""
    if annotation.version not in (CONTRACT_VERSION, AUDIT_VERSION) or len(texts) != len(annotation.node_ports):
        return encode(annotation)
    if annotation.version < AUDIT_VERSION and annotation.mode != "enforce":
        raise ContractError("$.mode", f"version {annotation.version} cannot carry mode {annotation.mode!r}")
    ref = annotation.policy
    policy = json.dumps(
        {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    # Top-level keys in sorted order, as json.dumps(sort_keys=True) writes them.
    mode = f'"mode":{json.dumps(annotation.mode, ensure_ascii=True)},' if annotation.version >= AUDIT_VERSION else ""
    return f'{{{mode}"nodePorts":[{",".join(texts)}],"policy":{policy},"version":{annotation.version}}}'


def sign(value: str, signer: Signer) -> str:
    """The signature annotation for `value`: Ed25519 over its exact UTF-8 bytes."""
    return signer.sign(value.encode("utf-8"))


def verify(value: str, signature: str, keys: VerifierKeys) -> bool:
    return keys.verify(value.encode("utf-8"), signature)


def render_annotations(annotation: Annotation, signer: Signer) -> dict[str, str]:
    """The two annotation values the webhook writes onto a NetworkPolicy."""
    value = encode(annotation)
    return {NODEPORTS_KEY: value, SIGNATURE_KEY: sign(value, signer)}


def owned_keys(annotations: Mapping[str, str] | None) -> list[str]:
    """The keys the webhook writes and guards: every key under our prefix but the author's mode."""
    return sorted(k for k in (annotations or {}) if k.startswith(ANNOTATION_PREFIX) and k != MODE_KEY)


# --- decoding untrusted input -------------------------------------------------------------


def _expect(obj: Any, typ: type, field: str) -> Any:
    # bool is an int in Python; the contract never accepts one where a number is expected.
    if not isinstance(obj, typ) or (typ is int and isinstance(obj, bool)):
        raise ContractError(field, f"expected {typ.__name__}, got {type(obj).__name__}")
    return obj


def _exact_keys(obj: Mapping[str, Any], required: set[str], field: str) -> None:
    missing = required - obj.keys()
    extra = obj.keys() - required
    if missing:
        raise ContractError(field, f"missing key(s) {sorted(missing)}")
    if extra:
        raise ContractError(field, f"unknown key(s) {sorted(extra)}")


def parse_network(text: str, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR with no host bits set (what the webhook guarantees it writes)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ContractError(field, f"invalid CIDR {text!r}: {exc}") from exc


def _decode_cidr_rule(obj: Any, field: str) -> CidrRule:
    _expect(obj, dict, field)
    _exact_keys(obj, {"cidr", "except"}, field)
    cidr = _expect(obj["cidr"], str, f"{field}.cidr")
    net = parse_network(cidr, f"{field}.cidr")
    excepts = _expect(obj["except"], list, f"{field}.except")
    parsed: list[str] = []
    for i, e in enumerate(excepts):
        efield = f"{field}.except[{i}]"
        enet = parse_network(_expect(e, str, efield), efield)
        if enet.version != net.version or not enet.subnet_of(net):  # type: ignore[arg-type]
            raise ContractError(efield, f"{e} is not inside {cidr}")
        parsed.append(e)
    return CidrRule(cidr=cidr, excepts=tuple(parsed))


def _decode_source_set(obj: Any, field: str) -> SourceSet:
    allow = _expect(obj, dict, field)
    all_sources = _expect(allow.get("all"), bool, f"{field}.all")
    if all_sources:
        _exact_keys(allow, {"all"}, field)
        return SourceSet.everyone()
    _exact_keys(allow, {"all", "cidrs"}, field)
    cidrs = _expect(allow["cidrs"], list, f"{field}.cidrs")
    return SourceSet(
        all_sources=False,
        cidrs=tuple(_decode_cidr_rule(c, f"{field}.cidrs[{i}]") for i, c in enumerate(cidrs)),
    )


def _decode_group(obj: Any, field: str) -> PodGroup:
    _expect(obj, dict, field)
    _exact_keys(obj, {"id", "allow"}, field)
    group_id = _expect(obj["id"], str, f"{field}.id")
    if len(group_id) != GROUP_ID_LENGTH or any(c not in "0123456789abcdef" for c in group_id):
        raise ContractError(f"{field}.id", f"{group_id!r} is not {GROUP_ID_LENGTH} lowercase hex digits")
    allow = None if obj["allow"] is None else _decode_source_set(obj["allow"], f"{field}.allow")
    return PodGroup(id=group_id, allow=allow)


_ENTRY_KEYS = {"nodePort", "protocol", "service", "servicePort", "ipFamilies"}


def _decode_entry(obj: Any, field: str, version: int, *, no_node_port: bool = False) -> NodePortEntry:
    _expect(obj, dict, field)
    if version == 1:
        _exact_keys(obj, _ENTRY_KEYS | {"allow"}, field)
        scope: Scope = "verdict"
    else:
        pods = _expect(obj.get("pods"), str, f"{field}.pods")
        if pods == "all":
            _exact_keys(obj, _ENTRY_KEYS | {"pods", "allow"}, field)
            scope = "all"
        elif pods == "some":
            _exact_keys(obj, _ENTRY_KEYS | {"pods", "groups"}, field)
            scope = "some"
        else:
            raise ContractError(f"{field}.pods", f"{pods!r} is not 'all' or 'some'")
    node_port = _expect(obj["nodePort"], int, f"{field}.nodePort")
    if not 1 <= node_port <= 65535 and not (no_node_port and node_port == 0):
        raise ContractError(f"{field}.nodePort", f"{node_port} is not a port number")
    protocol = _expect(obj["protocol"], str, f"{field}.protocol")
    if protocol not in PROTOCOLS:
        raise ContractError(f"{field}.protocol", f"{protocol!r} is not one of {list(PROTOCOLS)}")
    service = _expect(obj["service"], str, f"{field}.service")
    service_port = _expect(obj["servicePort"], int, f"{field}.servicePort")
    families = _expect(obj["ipFamilies"], list, f"{field}.ipFamilies")
    if not families or any(f not in IP_FAMILIES for f in families) or len(set(families)) != len(families):
        raise ContractError(f"{field}.ipFamilies", f"{families!r} must be a non-empty subset of {list(IP_FAMILIES)}")
    allow = SourceSet.nobody()
    groups: tuple[PodGroup, ...] = ()
    if scope == "some":
        raw_groups = _expect(obj["groups"], list, f"{field}.groups")
        if not raw_groups:
            raise ContractError(f"{field}.groups", "must name at least one endpoint group")
        groups = tuple(_decode_group(g, f"{field}.groups[{i}]") for i, g in enumerate(raw_groups))
        if len({g.id for g in groups}) != len(groups):
            raise ContractError(f"{field}.groups", "duplicate group id")
    else:
        allow = _decode_source_set(obj["allow"], f"{field}.allow")
    return NodePortEntry(
        node_port=node_port,
        protocol=protocol,
        service=service,
        service_port=service_port,
        ip_families=tuple(families),
        scope=scope,
        allow=allow,
        groups=groups,
    )


def decode(value: str) -> Annotation:
    """Parse and schema-check an annotation value; raises ContractError naming the field."""
    if len(value) > MAX_ANNOTATION_BYTES:
        raise ContractError("$", f"annotation is {len(value)} bytes, more than {MAX_ANNOTATION_BYTES}")
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ContractError("$", f"not JSON: {exc}") from exc
    _expect(obj, dict, "$")
    version = _expect(obj.get("version"), int, "$.version")
    if version not in READ_VERSIONS:
        raise ContractError(
            "$.version", f"unsupported version {version}; this build reads {', '.join(map(str, READ_VERSIONS))}"
        )
    top = {"version", "policy", "nodePorts"}
    # Each version is closed: a "mode" in a version-2 value is an unknown key, a version 3 without one is invalid.
    _exact_keys(obj, top | {"mode"} if version >= AUDIT_VERSION else top, "$")
    mode: Mode = "enforce"
    if version >= AUDIT_VERSION:
        raw_mode = _expect(obj["mode"], str, "$.mode")
        if raw_mode not in MODES:
            raise ContractError("$.mode", f"{raw_mode!r} is not one of {list(MODES)}")
        mode = raw_mode
    policy = _expect(obj["policy"], dict, "$.policy")
    _exact_keys(policy, {"namespace", "name", "uid"}, "$.policy")
    ref = PolicyRef(
        namespace=_expect(policy["namespace"], str, "$.policy.namespace"),
        name=_expect(policy["name"], str, "$.policy.name"),
        uid=_expect(policy["uid"], str, "$.policy.uid"),
    )
    ports = _expect(obj["nodePorts"], list, "$.nodePorts")
    entries = tuple(_decode_entry(p, f"$.nodePorts[{i}]", version) for i, p in enumerate(ports))
    seen: set[tuple[int, str]] = set()
    for i, v in enumerate(entries):
        if (v.node_port, v.protocol) in seen:
            raise ContractError(f"$.nodePorts[{i}]", f"duplicate {v.protocol} nodePort {v.node_port}")
        seen.add((v.node_port, v.protocol))
    return Annotation(policy=ref, node_ports=entries, version=version, mode=mode)


def read_signed(
    annotations: Mapping[str, str] | None, namespace: str, name: str, uid: str, keys: VerifierKeys
) -> Annotation | None:
    """The verified annotation of a stored policy, or None when it carries none. Raises ContractError
    when one is present but forged, stale, malformed or bound to another object. A signature made
    before the uid existed (uid "") is accepted. `keys` holds the current and, during a rotation,
    the previous public key, so a rotation opens no window (docs/operations.md)."""
    return read_signed_pair(annotations, (NODEPORTS_KEY, SIGNATURE_KEY), (namespace, name, uid), keys, decode, encode)


class _Bound(typing.Protocol):
    @property
    def policy(self) -> PolicyRef: ...


_Value = typing.TypeVar("_Value", bound=_Bound)


def read_signed_pair(
    annotations: Mapping[str, str] | None,
    pair: tuple[str, str],
    bound_to: tuple[str, str, str],
    keys: VerifierKeys,
    decode_value: Callable[[str], _Value],
    encode_value: Callable[[_Value], str],
) -> _Value | None:
    """A signed pair (value key, signature key) verified as `read_signed` says; also the doors pair's."""
    (value_key, signature_key), (namespace, name, uid) = pair, bound_to
    value, signature = (annotations or {}).get(value_key), (annotations or {}).get(signature_key)
    if value is None and signature is None:
        return None
    if value is None or signature is None:
        missing = value_key if value is None else signature_key
        raise ContractError(missing, "annotation missing (the pair must be written together by the webhook)")
    problem = keys.problem(value.encode("utf-8"), signature)
    if problem is not None:
        raise ContractError(signature_key, problem)
    decoded = decode_value(value)
    ref = decoded.policy
    if (ref.namespace, ref.name) != (namespace, name):
        raise ContractError("$.policy", f"bound to {ref.namespace}/{ref.name}, not {namespace}/{name}")
    if ref.uid and ref.uid != uid:
        raise ContractError("$.policy.uid", f"bound to uid {ref.uid}, not {uid} (stale copy)")
    if encode_value(decoded) != value:
        raise ContractError("$", "not in canonical form")
    return decoded
