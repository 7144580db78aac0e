"""Admission decisions for NetworkPolicies: annotate (mutate), check (validate), reconcile (pure)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.annotation import (
    MODE_KEY,
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    ContractError,
    Mode,
    NodePortEntry,
    PolicyRef,
    annotation_for,
    encode_texts,
    entry_text,
    owned_keys,
    read_mode,
    read_signed,
    sign,
)
from contract.doors import DOORS_KEY, DOORS_SIGNATURE_KEY, render_all, render_doors
from contract.signing import Signer
from webhook.cluster_view import ClusterView
from webhook.contribution import (
    ServiceEndpoints,
    namespace_endpoints,
    resolve_contribution,
    service_entries,
    service_key,
)
from webhook.limits import block_limit_problem, entry_limits_problem, size_problem
from webhook.objects import SemanticsError
from webhook.review import AdmissionRequest, JsonPatch, allowed, denied
from webhook.semantics import Policy, PolicyMemo, compile_policy

logger = logging.getLogger(__name__)

POLICY_GROUP = "networking.k8s.io"
POLICY_VERSION = "v1"
POLICY_KIND = "NetworkPolicy"
POLICY_RESOURCE = "networkpolicies"


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    signing_key: Signer  # the webhook's Ed25519 private key (contract/signing.py)
    max_cidrs_per_policy: int = 1000
    max_nodeports_per_policy: int = 1000
    max_doors_per_policy: int = 1000
    # Compiled stored policies shared by every request; results do not depend on it.
    compiled: PolicyMemo = field(default_factory=PolicyMemo, compare=False, repr=False)


class _Rejection(Exception):
    """A reason to deny, carried to the single place that builds the response."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _annotation_field(key: str) -> str:
    return f'metadata.annotations["{key}"]'


def _handles(request: AdmissionRequest) -> bool:
    kind, resource = request.kind, request.resource
    return (
        request.operation in ("CREATE", "UPDATE")
        and (kind.group, kind.version, kind.kind) == (POLICY_GROUP, POLICY_VERSION, POLICY_KIND)
        and (resource.group, resource.version, resource.resource) == (POLICY_GROUP, POLICY_VERSION, POLICY_RESOURCE)
        and not request.sub_resource
    )


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _meta_str(obj: Mapping[str, Any] | None, key: str) -> str:
    value = _meta(obj).get(key)
    return value if isinstance(value, str) else ""


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    value = _meta(obj).get("annotations")
    return value if isinstance(value, Mapping) else {}


def _owned(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """Our annotations on an object (every key under the nodeport-guard.io/ prefix)."""
    annotations = _annotations(obj)
    return {k: annotations[k] for k in owned_keys(annotations)}


def render_policy_annotations(
    namespace: str, name: str, uid: str, entries: tuple[NodePortEntry, ...], key: Signer, mode: Mode = "enforce"
) -> dict[str, str]:
    """Our annotations for a policy: the NodePort pair and the doors pair, each only when it has
    something to say (contract/doors.py); none when the policy affects no NodePort and no door."""
    if not entries:
        return {}
    return render_all(PolicyRef(namespace, name, uid), entries, mode, key)


def _mode_of(obj: Mapping[str, Any] | None) -> Mode:
    """The author's `nodeport-guard.io/mode` (absent: enforce); raises _Rejection naming the fix."""
    try:
        return read_mode(_annotations(obj))
    except ContractError as exc:
        raise _Rejection(422, str(exc)) from exc


def audit_warning(entries: tuple[NodePortEntry, ...]) -> str:
    """The admission warning of a policy in audit mode (kubectl apply prints it)."""
    ports = ", ".join(f"{e.protocol} {e.node_port}" for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
    return (
        f"{_annotation_field(MODE_KEY)}: audit mode: nodeport-guard counts and logs the new "
        f"connections this policy would deny on NodePorts ({ports}) but drops none of them, unless an "
        "enforcing policy also lists the NodePort; remove the annotation to enforce"
    )


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def build_annotation_patch(obj: Mapping[str, Any], desired: Mapping[str, str]) -> JsonPatch:
    """The minimal JSONPatch making the object's nodeport-guard.io/* annotations equal `desired`."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        if not desired:
            return []
        return [{"op": "add", "path": "/metadata", "value": {"annotations": dict(sorted(desired.items()))}}]
    current = meta.get("annotations")
    if not isinstance(current, Mapping):
        if not desired:
            return []
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(sorted(desired.items()))}]
    patch: JsonPatch = []
    for key in sorted(set(owned_keys(current)) | set(desired)):
        path = "/metadata/annotations/" + _escape(key)
        if key not in desired:
            patch.append({"op": "remove", "path": path})
        elif key not in current:
            patch.append({"op": "add", "path": path, "value": desired[key]})
        elif current[key] != desired[key]:
            patch.append({"op": "replace", "path": path, "value": desired[key]})
    return patch


@dataclass(frozen=True, slots=True)
class _Computed:
    namespace: str
    name: str
    uid: str
    entries: tuple[NodePortEntry, ...]
    warnings: tuple[str, ...]
    mode: Mode = "enforce"


def _compute(request: AdmissionRequest, view: ClusterView, config: AdmissionConfig) -> _Computed:
    """Check the admitted policy and resolve its NodePort verdicts; raises _Rejection."""
    obj = request.object or {}
    namespace = request.namespace or _meta_str(obj, "namespace")
    name = _meta_str(obj, "name") or request.name
    if not namespace:
        raise _Rejection(422, "metadata.namespace: a NetworkPolicy must be namespaced; set the namespace")
    try:
        policy = compile_policy(obj, strict=True)
    except SemanticsError as exc:
        raise _Rejection(422, str(exc)) from exc
    problem = block_limit_problem(policy, config.max_cidrs_per_policy)
    if problem is not None:
        raise _Rejection(422, problem)
    # Only this policy's own spec, its Services and their pods count: never the other policies.
    contribution = resolve_contribution(policy, (obj.get("spec") or {}).get("podSelector"), view)
    entries = contribution.entries
    if entries and not name:
        raise _Rejection(
            422,
            "metadata.name: this policy affects NodePorts, and nodeport-guard binds its annotation to the "
            "policy name; set metadata.name instead of metadata.generateName",
        )
    problem = entry_limits_problem(entries, config.max_nodeports_per_policy, config.max_doors_per_policy,
                                   config.max_cidrs_per_policy)
    if problem is not None:
        raise _Rejection(422, problem)
    uid = _meta_str(obj, "uid") or _meta_str(request.old_object, "uid")
    mode = _mode_of(obj)
    warnings = contribution.warnings
    if mode == "audit" and entries:
        warnings = (*warnings, audit_warning(entries))
    return _Computed(namespace, name, uid, entries, warnings, mode)


def _check_hand_edits(request: AdmissionRequest, desired: Mapping[str, str]) -> None:
    incoming = _owned(request.object)
    old = _owned(request.old_object) if request.operation == "UPDATE" else {}
    for key in sorted(incoming):
        value = incoming[key]
        if value == desired.get(key) or (request.operation == "UPDATE" and value == old.get(key)):
            continue
        raise _Rejection(
            403,
            f"{_annotation_field(key)}: set or edited by hand (its value differs from the stored one and "
            "from what nodeport-guard computes); remove it from the manifest: the nodeport-guard webhook "
            "writes it",
        )


def mutate(request: AdmissionRequest, view: ClusterView, config: AdmissionConfig) -> dict[str, Any]:
    """Write (or remove) the signed NodePort annotations on a NetworkPolicy being created/updated."""
    if not _handles(request):
        return allowed(request.uid)
    try:
        computed = _compute(request, view, config)
        desired = render_policy_annotations(
            computed.namespace, computed.name, computed.uid, computed.entries, config.signing_key, computed.mode
        )
        _check_size(desired)
        _check_hand_edits(request, desired)
    except _Rejection as rejection:
        logger.info(
            "mutation denied",
            extra={"uid": request.uid, "code": rejection.code, "reason": rejection.message},
        )
        return denied(request.uid, rejection.code, rejection.message)
    patch = build_annotation_patch(request.object or {}, desired)
    return allowed(request.uid, patch, computed.warnings)


_DOOR_KEYS = frozenset({DOORS_KEY, DOORS_SIGNATURE_KEY})


def _genuine(
    final: Mapping[str, Any],
    computed: _Computed,
    key: Signer,
    view: ClusterView,
    expected: Collection[Mapping[str, str]],
) -> bool:
    """Our own signed output for this policy, computed against a moment earlier's Pods and Services.

    A Pod or Service change between one policy's mutation and its validation changes its part:
    other sources (a Pod's labels or ports), a NodePort more (a Service created), or one fewer (a
    Service deleted or renumbered). Denying those would fail bulk applies; the reconciler rewrites
    such an annotation within its bound, as after any change just after admission. Kept only when
    every NodePort it names that the policy does not affect now is held by no Service at all: a
    stale entry must never reach a NodePort that another Service (of any namespace) holds now.
    A dropped, unsigned or differently-moded annotation is still rejected. The doors pair must be
    exactly what is computed now (a load balancer's status written between mutation and validation
    fails the request, which a retry admits).
    """
    doors = {k: v for k, v in final.items() if k in _DOOR_KEYS}
    if not any(doors == {k: v for k, v in e.items() if k in _DOOR_KEYS} for e in expected):
        return False
    final = {k: v for k, v in final.items() if k not in _DOOR_KEYS}
    if set(final) != {NODEPORTS_KEY, SIGNATURE_KEY} or not all(
        isinstance(v, str) for v in final.values()
    ):
        return False
    try:
        signed = read_signed(final, computed.namespace, computed.name, computed.uid, key.verifier())
    except ContractError:
        return False
    if signed is None or signed.mode != computed.mode:
        return False  # a signed mode other than the author's is never kept
    ports = {(v.node_port, v.protocol, v.service, v.service_port) for v in signed.node_ports}
    now = {(v.node_port, v.protocol, v.service, v.service_port) for v in computed.entries}
    return not any(view.node_port_in_use(port) for port, *_ in ports - now)


def validate(request: AdmissionRequest, view: ClusterView, config: AdmissionConfig) -> dict[str, Any]:
    """Reject a NetworkPolicy whose nodeport-guard annotations differ from what the webhook computes."""
    if not _handles(request):
        return allowed(request.uid)
    try:
        computed = _compute(request, view, config)
        uids = {computed.uid}
        if request.operation == "CREATE":
            uids.add("")  # mutation signs before the apiserver assigns the uid
        expected = [
            render_policy_annotations(
                computed.namespace, computed.name, u, computed.entries, config.signing_key, computed.mode
            )
            for u in sorted(uids)
        ]
        final = _owned(request.object)
        if final not in expected and not _genuine(final, computed, config.signing_key, view, expected):
            keys = sorted(set(final) | set(expected[0])) or [NODEPORTS_KEY]
            differing = [k for k in keys if all(final.get(k) != e.get(k) for e in expected)] or keys
            raise _Rejection(
                403,
                f"{_annotation_field(differing[0])}: does not match what nodeport-guard computes for this "
                "policy and carries no valid nodeport-guard signature for it (changed after the mutating "
                "webhook ran); remove the nodeport-guard.io/* annotations and retry: the nodeport-guard "
                "webhook writes them",
            )
    except _Rejection as rejection:
        logger.info(
            "validation denied",
            extra={"uid": request.uid, "code": rejection.code, "reason": rejection.message},
        )
        return denied(request.uid, rejection.code, rejection.message)
    return allowed(request.uid, None, computed.warnings)


Desired = dict[str, str] | None


@dataclass(frozen=True, slots=True)
class _Remembered:
    obj: Mapping[str, Any]  # the very policy object (the cache replaces it on every change)
    policy: Policy | None  # compiled; None when the stored policy cannot be interpreted
    mode: Mode
    # The policy's entries per Service (`service_key`), each with its canonical JSON text: what a
    # Service change leaves as it was.
    parts: Mapping[str, tuple[tuple[NodePortEntry, str], ...]]
    fingerprint: Hashable
    key: Signer
    desired: Desired


class AnnotationMemo:
    """The reconciler's memo of each stored policy's desired annotations (a pure cache: same results).

    A policy's annotation depends only on its own object, the grouped NodePort Services of its
    namespace and the signing key (the same Signer object; Ed25519 signatures are deterministic).
    The webhook's cache replaces a policy's dict on every change and never edits one in place, and
    each entry holds its object, so identity is a safe test (it stands for the resourceVersion).
    - Same object, same Services (every `service_key`), same key: the remembered annotation (a
      Pod joining an existing pod group changes no fingerprint: a pass over 1,000 policies costs
      a lookup each).
    - Same object, some Services changed: the compiled policy and its entries for every unchanged
      Service are kept; only the changed Services' entries are computed and spliced in, then the
      annotation is encoded and signed once (a Service added under 1,000 policies computes one
      Service's part per policy, not twenty).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Remembered] = {}
        self._lock = threading.Lock()

    def desired(
        self,
        namespace: str,
        obj: Mapping[str, Any],
        endpoints: tuple[ServiceEndpoints, ...],
        service_keys: tuple[str, ...],
        key: Signer,
        memo: PolicyMemo | None = None,
    ) -> Desired:
        """The policy's desired annotations; `service_keys` are the endpoints' `service_key`s."""
        name = _meta_str(obj, "name")
        with self._lock:
            seen = self._entries.get((namespace, name))
        if seen is not None and seen.obj is obj:
            if seen.fingerprint == service_keys and seen.key is key:
                return seen.desired
            policy, mode, kept = seen.policy, seen.mode, seen.parts
        else:
            policy, mode, kept = _compile_stored(namespace, name, obj, memo), _stored_mode(namespace, name, obj), {}
        parts: dict[str, tuple[tuple[NodePortEntry, str], ...]] = {}
        desired: Desired = None
        if policy is not None:
            for skey, service in zip(service_keys, endpoints, strict=True):
                found = kept.get(skey)
                if found is None:
                    found = tuple((e, entry_text(e)) for e in service_entries(policy, service))
                parts[skey] = found
            desired = _render_parts(
                namespace, name, policy.uid, [p for skey in service_keys for p in parts[skey]], key, mode
            )
        with self._lock:
            self._entries[(namespace, name)] = _Remembered(obj, policy, mode, parts, service_keys, key, desired)
        return desired

    def keep_only(self, namespace: str, names: Collection[str]) -> None:
        """Forget the policies of `namespace` not in `names` (deleted since)."""
        with self._lock:
            for ns, name in [k for k in self._entries if k[0] == namespace and k[1] not in names]:
                del self._entries[(ns, name)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _render_parts(
    namespace: str, name: str, uid: str, parts: list[tuple[NodePortEntry, str]], key: Signer, mode: Mode
) -> Desired:
    """`render_policy_annotations` from entries with their texts (in Service order): encoded from the
    texts, signed once."""
    if not parts:
        return None
    ordered = sorted(parts, key=lambda p: (p[0].node_port, p[0].protocol, p[0].service, p[0].service_port))
    ref = PolicyRef(namespace, name, uid)
    out: dict[str, str] = {}
    ports = [p for p in ordered if p[0].node_port]
    if ports:
        annotation = annotation_for(ref, tuple(e for e, _ in ports), mode)
        value = encode_texts(annotation, [t for _, t in ports])
        out = {NODEPORTS_KEY: value, SIGNATURE_KEY: sign(value, key)}
    out.update(render_doors(ref, tuple(e for e, _ in ordered), mode, key))
    return out or None


def resolve_all_annotations(
    namespace: str,
    view: ClusterView,
    key: Signer,
    memo: PolicyMemo | None = None,
    names: Collection[str] | None = None,
    annotations: AnnotationMemo | None = None,
    endpoints: tuple[ServiceEndpoints, ...] | None = None,
) -> dict[str, Desired]:
    """For the reconciler: the nodeport-guard annotations stored policies of `namespace` should
    carry now (None = none of ours), signed with the stored uids; every policy, or only `names`.

    Each policy's annotation is its own part only, so this costs one contribution per policy and
    the Services and pods are grouped once. `memo` is the admission's cache of compiled policies;
    `annotations` remembers each policy's result and per-Service entries (`AnnotationMemo`);
    `endpoints`, when given, are `namespace_endpoints(namespace, view)` already grouped.
    """
    if endpoints is None:
        endpoints = namespace_endpoints(namespace, view)
    service_keys = tuple(service_key(s) for s in endpoints) if annotations is not None else ()
    out: dict[str, Desired] = {}
    objs = view.policies_in(namespace)
    if annotations is not None and names is None:
        annotations.keep_only(namespace, {_meta_str(o, "name") for o in objs})
    for obj in objs:
        name = _meta_str(obj, "name")
        if names is not None and name not in names:
            continue
        if annotations is not None:
            out[name] = annotations.desired(namespace, obj, endpoints, service_keys, key, memo)
        else:
            out[name] = _desired_of(namespace, name, obj, view, key, memo, endpoints)
    return out


def _compile_stored(namespace: str, name: str, obj: Mapping[str, Any], memo: PolicyMemo | None) -> Policy | None:
    try:
        return memo.compile(obj, True) if memo is not None else compile_policy(obj)
    except SemanticsError as exc:
        # A stored policy we cannot read (admitted while we were absent): it names no NodePort
        # of ours; the enforcer then does not filter for it. Logged so an operator sees it.
        logger.warning(
            "stored policy cannot be interpreted", extra={"namespace": namespace, "policy": name, "error": str(exc)}
        )
        return None


def _stored_mode(namespace: str, name: str, obj: Mapping[str, Any]) -> Mode:
    try:
        return read_mode(_annotations(obj))
    except ContractError as exc:
        # Admission refuses such a value; a stored one (admitted while we were absent) fails closed.
        logger.warning(
            "stored policy has an invalid mode; enforcing",
            extra={"namespace": namespace, "policy": name, "error": str(exc)},
        )
        return "enforce"


def _desired_of(
    namespace: str,
    name: str,
    obj: Mapping[str, Any],
    view: ClusterView,
    key: Signer,
    memo: PolicyMemo | None,
    endpoints: tuple[ServiceEndpoints, ...],
) -> Desired:
    """The full resolution (no memo): what `AnnotationMemo.desired` must always equal."""
    policy = _compile_stored(namespace, name, obj, memo)
    if policy is None:
        return None
    spec = obj.get("spec") or {}
    entries = resolve_contribution(policy, spec.get("podSelector"), view, endpoints).entries
    mode = _stored_mode(namespace, name, obj)
    return render_policy_annotations(namespace, name, policy.uid, entries, key, mode) or None


def _check_size(desired: Mapping[str, str]) -> None:
    problem = size_problem(desired)
    if problem is not None:
        raise _Rejection(422, problem)
