"""AdmissionReview v1 request parsing and response builders (pure)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

logger = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
OPERATIONS: tuple[Operation, ...] = get_args(Operation)
JsonPatch = list[dict[str, Any]]


class ReviewError(ValueError):
    """The body is not a usable AdmissionReview v1 request; the message names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class GroupVersionKind:
    group: str
    version: str
    kind: str


@dataclass(frozen=True, slots=True)
class GroupVersionResource:
    group: str
    version: str
    resource: str


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The parts of AdmissionReview.request the webhook uses (objects stay plain API dicts)."""

    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    operation: Operation
    namespace: str = ""
    name: str = ""
    sub_resource: str = ""
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool = False


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise ReviewError(f"{where}.{key} is missing")
        return ""
    if not isinstance(value, str):
        raise ReviewError(f"{where}.{key} must be a string, got {type(value).__name__}")
    return value


def _required_dict(obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _dict(obj, key, where, required=True)
    if value is None:  # unreachable: _dict raises for a missing required key
        raise ReviewError(f"{where}.{key} is missing")
    return value


def _dict(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ReviewError(f"{where}.{key} is missing")
        return None
    if not isinstance(value, dict):
        raise ReviewError(f"{where}.{key} must be an object, got {type(value).__name__}")
    return value


def parse_review(body: object) -> AdmissionRequest:
    """Parse a decoded AdmissionReview v1 body. Raises ReviewError for anything malformed."""
    if not isinstance(body, dict):
        raise ReviewError(f"body must be a JSON object (AdmissionReview), got {type(body).__name__}")
    if body.get("apiVersion") != API_VERSION:
        raise ReviewError(f"apiVersion must be {API_VERSION!r}, got {body.get('apiVersion')!r}")
    if body.get("kind") != KIND:
        raise ReviewError(f"kind must be {KIND!r}, got {body.get('kind')!r}")
    request = _required_dict(body, "request", "AdmissionReview")
    where = "request"
    uid = _str(request, "uid", where, required=True)
    if not uid:
        raise ReviewError("request.uid must not be empty")
    kind = _required_dict(request, "kind", where)
    resource = _required_dict(request, "resource", where)
    gvk = GroupVersionKind(
        group=_str(kind, "group", "request.kind", required=False),
        version=_str(kind, "version", "request.kind", required=True),
        kind=_str(kind, "kind", "request.kind", required=True),
    )
    gvr = GroupVersionResource(
        group=_str(resource, "group", "request.resource", required=False),
        version=_str(resource, "version", "request.resource", required=True),
        resource=_str(resource, "resource", "request.resource", required=True),
    )
    operation = _str(request, "operation", where, required=True)
    if operation not in OPERATIONS:
        raise ReviewError(f"request.operation must be one of {list(OPERATIONS)}, got {operation!r}")
    obj = _dict(request, "object", where, required=operation in ("CREATE", "UPDATE"))
    old = _dict(request, "oldObject", where, required=operation == "UPDATE")
    dry_run = request.get("dryRun", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise ReviewError(f"request.dryRun must be a boolean, got {type(dry_run).__name__}")
    return AdmissionRequest(
        uid=uid,
        kind=gvk,
        resource=gvr,
        operation=operation,
        namespace=_str(request, "namespace", where, required=False),
        name=_str(request, "name", where, required=False),
        sub_resource=_str(request, "subResource", where, required=False),
        object=obj,
        old_object=old,
        dry_run=dry_run,
    )


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def encode_patch(patch: JsonPatch) -> str:
    return base64.b64encode(json.dumps(patch, sort_keys=True, separators=(",", ":")).encode()).decode()


def allowed(uid: str, patch: JsonPatch | None = None, warnings: Iterable[str] = ()) -> dict[str, Any]:
    """An allowing AdmissionReview response; the JSONPatch is attached only when non-empty."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = encode_patch(patch)
    warning_list = list(warnings)
    if warning_list:
        response["warnings"] = warning_list
    return _review(response)


_REASONS = {400: "BadRequest", 403: "Forbidden", 409: "Conflict", 422: "Invalid", 500: "InternalError"}


def denied(uid: str, code: int, message: str, warnings: Iterable[str] = ()) -> dict[str, Any]:
    """A rejecting AdmissionReview response with an HTTP-style status code and message."""
    status: dict[str, Any] = {"code": code, "message": message}
    if code in _REASONS:
        status["reason"] = _REASONS[code]
    response: dict[str, Any] = {"uid": uid, "allowed": False, "status": status}
    warning_list = list(warnings)
    if warning_list:
        response["warnings"] = warning_list
    return _review(response)
