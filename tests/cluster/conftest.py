"""The cluster tier's fixtures: one local two-node cluster for the package, nodeport-guard deployed with `make deploy`.

The cluster is torn down when the package's last test is done, before the rest of the suite,
so the machine comparison in tests/cluster_after sees the machine without it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster.cluster import Cluster
from tests.cluster.helpers import Deployment, deployed_on, own_cluster
from tests.machine import MachineSnapshot


@pytest.fixture(scope="package", autouse=True)
def machine_before_the_tier(machine_before: MachineSnapshot) -> MachineSnapshot:
    """Taken before the tier's first test (the lifecycle tests make and remove clusters too)."""
    return machine_before


@pytest.fixture(scope="package")
def cluster(machine_before: MachineSnapshot, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with own_cluster("t", request.config) as c:
        yield c


@pytest.fixture(scope="package")
def deployed(cluster: Cluster) -> Iterator[Deployment]:
    """`make deploy` exactly as the README says; `make undeploy` at the end unless a test already did."""
    with deployed_on(cluster) as deployment:
        yield deployment
