"""Acceptance scenarios from ../shared/scenarios, and the demo's own case, resolved through the pure core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.annotation import NodePortVerdict
from webhook.addresses import source_set_contains
from webhook.namespace_resolution import resolve_namespace
from webhook.snapshot import StaticClusterView

CASES_PATH = Path(__file__).parents[2].parent / "shared" / "scenarios" / "cases.json"
DEMO_CASES_PATH = Path(__file__).parents[2] / "demo" / "scenario.json"  # carried by the repository


def _load_cases() -> list[dict[str, Any]]:
    if not CASES_PATH.is_file():
        pytest.fail(
            f"scenario file {CASES_PATH} is missing: the shared scenarios must sit beside the repo "
            "as ../shared (CI provides them)",
            pytrace=False,
        )
    cases: list[dict[str, Any]] = json.loads(CASES_PATH.read_text())
    return cases


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec["name"],
            "namespace": spec.get("namespace", "default"),
            "labels": spec.get("labels", {}),
        },
        "spec": {"containers": [{"name": "main", "image": "example", "ports": spec.get("containerPorts", [])}]},
    }


def _namespace(obj: dict[str, Any]) -> str:
    ns: str = obj.get("metadata", {}).get("namespace", "default")
    return ns


def _case_ids() -> list[str]:
    try:
        return [c["name"] for c in json.loads(CASES_PATH.read_text())]
    except OSError:
        return ["missing-shared-scenarios"]


@pytest.mark.parametrize("name", _case_ids())
def test_scenario(name: str) -> None:
    _check(next(c for c in _load_cases() if c["name"] == name))


def test_the_demo_case_holds_in_the_pure_core() -> None:
    cases: list[dict[str, Any]] = json.loads(DEMO_CASES_PATH.read_text())
    assert len(cases) == 1
    _check(cases[0])


def _check(case: dict[str, Any]) -> None:
    name = case["name"]
    view = StaticClusterView(services=case["services"], pods=[_pod(p) for p in case["pods"]], policies=case["policies"])
    namespaces = sorted({_namespace(o) for o in case["services"] + case["policies"]} | {"default"})
    verdicts: dict[tuple[int, str], NodePortVerdict] = {}
    for ns in namespaces:
        resolution = resolve_namespace(ns, view)
        for policy in resolution.policies:
            for v in resolution.verdicts_for(policy):
                previous = verdicts.setdefault((v.node_port, v.protocol), v)
                assert previous == v, f"policies disagree on NodePort {v.node_port}/{v.protocol}"
    for expect in case["expect"]:
        verdict = verdicts.get((expect["nodePort"], expect["protocol"]))
        allowed = True if verdict is None else source_set_contains(verdict.allow, expect["source"])
        assert allowed == expect["allowed"], (
            f"{name}: NodePort {expect['nodePort']}/{expect['protocol']} from {expect['source']}: "
            f"expected allowed={expect['allowed']}, verdict {verdict}; note: {case['note']}"
        )


def test_all_scenarios_are_loaded() -> None:
    assert len(_load_cases()) >= 36
