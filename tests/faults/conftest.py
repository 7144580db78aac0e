"""The faults tier's fixtures: a two-node cluster of its own, `make deploy`, backends and a baseline policy.

The tier runs after tests/cluster and before tests/cluster_after (which compares the machine before
and after every cluster of the session): `pytest_collection_modifyitems` moves it there, because
directories are collected alphabetically. The cluster is removed when the tier's last test is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.signing import Signer
from localcluster.cluster import Cluster
from tests.cluster.helpers import Deployment, apply_backends, apply_policy, deployed_on, expect, matrix, own_cluster
from tests.faults.convergence import load_signer
from tests.faults.results import RESULTS, ResultTable
from tests.machine import MachineSnapshot

HERE = Path(__file__).resolve().parent
BASELINE = "baseline-allow-a"
# client-a (198.51.100.70, 2001:db8:a::70) is allowed, client-b (203.0.113.10) is not.
ALLOW_A = [{"from": [{"ipBlock": {"cidr": "198.51.100.64/26"}}, {"ipBlock": {"cidr": "2001:db8:a::/64"}}]}]


def _in_tier(item: pytest.Item) -> bool:
    return HERE in Path(item.path).resolve().parents


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tier right before tests/cluster_after (or where it is, when that is not collected)."""
    ours = [i for i in items if _in_tier(i)]
    rest = [i for i in items if not _in_tier(i)]
    after = HERE.parent / "cluster_after"
    at = next((n for n, i in enumerate(rest) if after in Path(i.path).resolve().parents), None)
    if not ours or at is None:
        return
    items[:] = [*rest[:at], *ours, *rest[at:]]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    table = config.stash.get(RESULTS, None)
    if table is None or not table.rows:
        return
    terminalreporter.write_sep("=", "faults: leak, loss, convergence")
    terminalreporter.write_line(table.render())
    table.save()


@pytest.fixture(scope="session")
def fault_results(request: pytest.FixtureRequest) -> ResultTable:
    """Add one row per fault; printed and saved at the end of the session."""
    table = request.config.stash.get(RESULTS, None)
    if table is None:
        table = request.config.stash[RESULTS] = ResultTable()
    return table


@pytest.fixture(scope="package")
def cluster(machine_before: MachineSnapshot, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with own_cluster("f", request.config) as c:
        yield c


@pytest.fixture(scope="package")
def deployed(cluster: Cluster) -> Iterator[Deployment]:
    with deployed_on(cluster) as deployment:
        yield deployment


@pytest.fixture(scope="package")
def signer(deployed: Deployment) -> Signer:
    """The deployment's annotation signing key (for the convergence checker's expected annotations)."""
    return load_signer(deployed.certs_dir)


@pytest.fixture(scope="package")
def baseline(cluster: Cluster, deployed: Deployment) -> str:
    """Backends up and one policy allowing only client-a on every NodePort of the demo namespace,
    programmed on both nodes. Tests leave it in place (and restore it if they change it)."""
    apply_backends(cluster)
    result = apply_policy(cluster, BASELINE, ALLOW_A)
    assert result.returncode == 0, result.stderr
    ports = matrix(cluster, [30080])
    expect(cluster, "client-a", ports, answered=True, timeout=60)
    expect(cluster, "client-b", ports, answered=False, timeout=60)
    return BASELINE
