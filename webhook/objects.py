"""Reading Kubernetes objects the way the API does: metadata, label selectors, pods' named ports (pure).

`SemanticsError` names the field of an object that cannot be interpreted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

KubeObject = dict[str, Any]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = get_args(Operator)
NODEPORT_SERVICE_TYPES = frozenset({"NodePort", "LoadBalancer"})
# Pods in a terminal phase are never endpoints, so they do not constrain a NodePort.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class SemanticsError(ValueError):
    """An object cannot be interpreted; `field` is the path inside it (e.g. spec.podSelector)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


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
