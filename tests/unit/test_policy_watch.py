"""PolicyRecorder replays watched events to say when every stored annotation first equalled the desired one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY
from tests.policy_watch import PolicyRecorder


def _obj(name: str, value: str | None) -> dict[str, Any]:
    annotations = {"other": "x"} if value is None else {NODEPORTS_KEY: value, SIGNATURE_KEY: f"sig-{value}"}
    return {"metadata": {"name": name, "annotations": annotations}}


def _want(value: str) -> dict[str, str]:
    return {NODEPORTS_KEY: value, SIGNATURE_KEY: f"sig-{value}"}


def _recorder(*initial: dict[str, Any]) -> PolicyRecorder:
    recorder = PolicyRecorder()
    recorder.replace("networkpolicies", list(initial), "1")
    return recorder


def test_true_from_the_start_is_true_at_since() -> None:
    recorder = _recorder(_obj("a", "v1"), _obj("b", None))
    assert recorder.first_true({"a": _want("v1"), "b": None}, since=5.0) == 5.0


def test_the_first_instant_the_last_wrong_policy_is_rewritten() -> None:
    recorder = _recorder(_obj("a", "old"), _obj("b", "old"))
    for i, (name, value) in enumerate([("a", "new"), ("b", "wrong"), ("b", "new"), ("a", "x")]):
        recorder.apply("networkpolicies", "MODIFIED", _obj(name, value))
        recorder.events[-1] = replace(recorder.events[-1], at=10.0 + i)  # events at 10, 11, 12, 13
    desired = {"a": _want("new"), "b": _want("new")}
    assert recorder.first_true(desired, since=9.0) == 12.0
    assert recorder.modified_since(11.0) == 3


def test_a_deleted_policy_must_be_gone_and_a_created_one_present() -> None:
    recorder = _recorder(_obj("a", "v"))
    assert recorder.first_true({}, since=0.0) is None  # a is still stored
    recorder.apply("networkpolicies", "DELETED", _obj("a", "v"))
    recorder.apply("networkpolicies", "ADDED", _obj("c", "v"))
    assert recorder.first_true({"c": _want("v")}, since=0.0) is not None
    assert recorder.first_true({"c": _want("v"), "d": None}, since=0.0) is None


def test_first_naming_finds_the_nodeport_in_a_later_annotation() -> None:
    recorder = _recorder()
    recorder.apply("networkpolicies", "MODIFIED", _obj("a", '{"nodePorts":[{"nodePort":30001,"protocol":"TCP"}]}'))
    at = recorder.events[-1].at
    assert recorder.first_naming(30001, since=at) == at
    assert recorder.first_naming(3000, since=0.0) is None
    assert recorder.first_naming(30001, since=at + 1) is None
