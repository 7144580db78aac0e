"""The shared acceptance scenarios through the real apiserver: kubectl apply -> webhook -> annotations -> plan.

Each case's Services, Pods and NetworkPolicies are applied as a user would (one fresh namespace
per namespace the case names). The stored, signed annotations are read back, verified and
planned exactly as the enforcer does; each expected verdict is then checked by address.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.annotation import Annotation
from contract.composition import compose, part_of
from enforcer.plan import PortKey, plan_desired_state
from enforcer.policies import trim_policy, verify_policies
from tests.components import Installation, WebhookServer, delete_namespaced_objects
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, pod

CASES_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "scenarios" / "cases.json"
NODEPORT_RANGE = (30000, 32767)


def _cases() -> list[dict[str, Any]]:
    if not CASES_FILE.exists():
        raise FileNotFoundError(f"{CASES_FILE} is missing: the acceptance scenarios live in ../shared beside the repo")
    cases: list[dict[str, Any]] = json.loads(CASES_FILE.read_text())
    return cases


CASES = _cases()


def _namespaces(case: dict[str, Any]) -> list[str]:
    names = {o["metadata"].get("namespace", "default") for o in case["services"] + case["policies"]}
    names |= {p.get("namespace", "default") for p in case["pods"]}
    return sorted(names)


@pytest.fixture
def case_namespaces(request: pytest.FixtureRequest, control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    case = request.param
    mapping = {ns: f"sc-{secrets.token_hex(3)}-{ns}"[:63] for ns in _namespaces(case)}
    for real in mapping.values():
        control_plane.kubectl("create", "namespace", real)
    yield mapping
    for real in mapping.values():
        delete_namespaced_objects(control_plane, real)  # the cases pin nodePorts: free them for the next


def _relocated(obj: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    copy["metadata"]["namespace"] = mapping[obj["metadata"].get("namespace", "default")]
    return copy


def _allowed(annotations: tuple[Annotation, ...], state: dict[PortKey, Any], expect: dict[str, Any]) -> bool:
    """The verdict composed from the annotations; for the Service's own IP families also as the enforcer plans it."""
    address = ipaddress.ip_address(expect["source"])
    listing = [
        v
        for a in annotations
        for v in a.node_ports
        if (v.node_port, v.protocol) == (expect["nodePort"], expect["protocol"])
    ]
    allowed = compose([part_of(v, address.version) for v in listing], address.version)
    by_annotation = not listing or any(start <= int(address) <= end for start, end in allowed)
    family = "IPv4" if address.version == 4 else "IPv6"
    if any(family in v.ip_families for v in listing):
        key = PortKey(address.version, expect["protocol"], expect["nodePort"])
        by_plan = key not in state or any(address in net for net in state[key])
        assert by_plan == by_annotation, f"plan and annotation disagree on {expect}"
    return by_annotation


@pytest.mark.parametrize("case_namespaces", CASES, ids=[c["name"] for c in CASES], indirect=True)
def test_scenario_through_apiserver(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    webhook: WebhookServer,
    installation: Installation,
    case_namespaces: dict[str, str],
) -> None:
    case = request.node.callspec.params["case_namespaces"]
    mapping = case_namespaces
    pods = [
        pod(p["name"], p["labels"], p.get("containerPorts"), namespace=mapping[p.get("namespace", "default")])
        for p in case["pods"]
    ]
    services = [_relocated(s, mapping) for s in case["services"]]
    result = control_plane.kubectl("apply", "-f", "-", input=as_list(*pods, *services), check=False)
    assert result.returncode == 0, result.stderr
    for policy in case["policies"]:
        result = control_plane.kubectl("apply", "-f", "-", input=as_list(_relocated(policy, mapping)), check=False)
        assert result.returncode == 0, f"{policy['metadata']['name']}: {result.stderr}"

    def verdicts() -> list[tuple[dict[str, Any], bool]]:
        stored = []
        for real in mapping.values():
            stored += control_plane.kubectl_json("get", "networkpolicies", "-n", real)["items"]
        verified = verify_policies([trim_policy(p) for p in stored], installation.verifier_keys)
        assert verified.rejected == ()
        state = plan_desired_state(verified.annotations, NODEPORT_RANGE).state.as_dict()
        return [(e, _allowed(verified.annotations, state, e)) for e in case["expect"]]

    # The last policy's annotation lands with its admission; allow the reconciler's re-sign (<= 2 s).
    deadline = time.monotonic() + 3
    while True:
        outcome = verdicts()
        wrong = [(e, got) for e, got in outcome if got != e["allowed"]]
        if not wrong or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not wrong, f"{case['name']}: {wrong}\nnote: {case['note']}"
