"""The scenario client refuses sources that would cut the cluster off; its names follow the cluster's (pure)."""

from __future__ import annotations

import pytest

from localcluster.plan import CP_V4, build_plan
from localcluster.scenario_client import check_sources, scenario_netns
from tests.scenarios import load_cases, sources_of


def test_every_shared_source_is_accepted_on_the_fixed_plan() -> None:
    check_sources(build_plan("t1"), sources_of(load_cases()))


@pytest.mark.parametrize("source", [CP_V4, "198.51.100.11", "2001:db8:10::12", "203.0.113.130", "2001:db8:1:2::9"])
def test_a_source_the_cluster_needs_is_refused_naming_it(source: str) -> None:
    with pytest.raises(ValueError, match=f"scenario source {source}: .*cut the cluster off"):
        check_sources(build_plan("t1"), ["192.0.2.1", source])


def test_the_namespace_carries_the_cluster_prefix_so_down_sweeps_it() -> None:
    plan = build_plan("t1")
    assert scenario_netns(plan).startswith(plan.prefix)
