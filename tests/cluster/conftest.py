"""The cluster tier's fixtures: one local two-node cluster for the package, nodeport-guard deployed with `make deploy`.

The cluster is torn down when the package's last test is done, before the rest of the suite,
so the machine comparison in tests/cluster_after sees the machine without it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

from localcluster.cluster import Cluster, down, up
from localcluster.image import ensure_product_image
from localcluster.state import is_stale, list_clusters, teardown
from tests.cluster.helpers import Deployment, deploy, undeploy
from tests.machine import CLUSTER_RAN, MachineSnapshot


@pytest.fixture(scope="package", autouse=True)
def machine_before_the_tier(machine_before: MachineSnapshot) -> MachineSnapshot:
    """Taken before the tier's first test (the lifecycle tests make and remove clusters too)."""
    return machine_before


@pytest.fixture(scope="package")
def cluster(machine_before: MachineSnapshot, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    for name in list_clusters():  # what a killed earlier session left behind
        if name.startswith("t") and is_stale(name):
            teardown(name)
    name = "t" + secrets.token_hex(3)
    c = up(name, images=[ensure_product_image()], owner_pid=os.getpid())
    request.config.stash[CLUSTER_RAN] = True
    try:
        yield c
    finally:
        problems = down(name)
        assert not problems, problems


@pytest.fixture(scope="package")
def deployed(cluster: Cluster) -> Iterator[Deployment]:
    """`make deploy` exactly as the README says; `make undeploy` at the end unless a test already did."""
    deployment = deploy(cluster)
    try:
        yield deployment
    finally:
        if not deployment.undeployed:
            undeploy(cluster)
        shutil.rmtree(deployment.certs_dir, ignore_errors=True)
