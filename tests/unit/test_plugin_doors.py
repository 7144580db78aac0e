"""`kubectl nodeport-guard` on doors, pure: each door with its verdict, and kube-proxy's source ranges beside it."""

from __future__ import annotations

from typing import Any

from contract.annotation import CidrRule, Door, NodePortEntry, PolicyRef, SourceSet
from contract.doors import DOORS_KEY, render_all
from contract.signing import Signer
from kubectl_plugin.cli import _allow_json, describe_sources
from kubectl_plugin.doors import door_rows, door_verdicts, doors_json, inspect_doors, source_ranges

KEY = Signer.from_seed(b"plugin-doors-test-key-0000000001")


def _policy(name: str, allow: SourceSet) -> dict[str, Any]:
    entry = NodePortEntry(30080, "TCP", "lb", 8080, ("IPv4", "IPv6"), "all", allow,
                          doors=(Door("198.51.100.200", "loadBalancer"), Door("2001:db8:5::1", "externalIP")))
    annotations = render_all(PolicyRef("shop", name, ""), (entry,), "enforce", KEY)
    return {"metadata": {"namespace": "shop", "name": name, "uid": "u", "annotations": annotations}}


def test_explain_lists_each_door_with_the_verdict_and_the_source_ranges() -> None:
    office = SourceSet(False, (CidrRule("198.51.100.0/24"),))
    vpn = SourceSet(False, (CidrRule("203.0.113.0/24"),))
    reports = [inspect_doors(_policy("a", office), KEY.verifier()), inspect_doors(_policy("b", vpn), KEY.verifier())]
    assert [r.status for r in reports] == ["verified", "verified"]
    verdicts = door_verdicts(reports)
    ranges = source_ranges([{"metadata": {"name": "lb"}, "spec": {"loadBalancerSourceRanges": ["198.51.100.0/25"]}}])
    rows = door_rows(reports[0], verdicts, ranges, describe_sources)
    assert rows == [
        ["198.51.100.200:8080", "TCP", "lb", "loadBalancer", "30080", "198.51.100.0/24; 203.0.113.0/24",
         "198.51.100.0/25 (a client needs both)"],
        ["[2001:db8:5::1]:8080", "TCP", "lb", "externalIP", "30080", "none (all external traffic dropped)", "-"],
    ]
    out = doors_json(reports[0], verdicts, ranges, _allow_json)
    assert out[0]["loadBalancerSourceRanges"] == ["198.51.100.0/25"] and out[1]["loadBalancerSourceRanges"] == []


def test_a_tampered_doors_pair_is_reported_rejected_and_counts_for_nothing() -> None:
    obj = _policy("a", SourceSet.everyone())
    ann = obj["metadata"]["annotations"]
    ann[DOORS_KEY] = ann[DOORS_KEY].replace("198.51.100.200", "198.51.100.201")
    report = inspect_doors(obj, KEY.verifier())
    assert report.status == "rejected" and "enforcers ignore its doors" in report.detail
    assert door_verdicts([report]) == {}
    assert inspect_doors({"metadata": {"name": "x"}}, KEY.verifier()).status == "none"
