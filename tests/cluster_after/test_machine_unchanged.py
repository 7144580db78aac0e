"""After the cluster tier: the machine is as it was (root netns, sysctls, cgroups) and none of its processes run.

If the cluster tier did not run in this session, this test brings a cluster up and down itself,
so the comparison always covers a whole cluster session.
"""

from __future__ import annotations

import os
import secrets

import pytest

from localcluster.cluster import down, up
from localcluster.state import list_clusters
from tests.machine import CLUSTER_RAN, SESSION_START, MachineSnapshot, take_snapshot, wait_for_no_processes


def test_the_machine_is_unchanged_after_a_cluster_session(
    machine_before: MachineSnapshot, request: pytest.FixtureRequest
) -> None:
    if not request.config.stash.get(CLUSTER_RAN, False):
        name = "t" + secrets.token_hex(3)
        up(name, owner_pid=os.getpid())
        assert down(name) == []
    after = take_snapshot()
    assert machine_before.differences(after) == {}
    assert [n for n in list_clusters() if n.startswith("t")] == []
    since = request.config.stash[SESSION_START]
    assert wait_for_no_processes(since) == []
