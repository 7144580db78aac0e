"""Every expectation of every shared scenario proven by a real packet on the real two-node cluster.

nodeport-guard installed by `make deploy`; each case applied as a user would (Pods as real servers,
Services, then the NetworkPolicies through the webhook); each expectation (source, NodePort,
protocol, allowed) checked by one packet exchange to node1 (kube-proxy iptables) and node2
(kube-proxy nftables) from a scenario client namespace holding that source: TCP connect, UDP
request/answer, SCTP INIT seen arriving in the backend pod. The cases run side by side in rounds
(tests/scenario_cluster.py). Prints the table case x expectation x node -> expected / observed, the
count checked per node and the time taken.

By hand, one case: `.venv/bin/python -m pytest tests/cluster/test_5a_scenarios.py -s -k NAME` (only the
selected cases run), or on a cluster that is already up with the product deployed:
`.venv/bin/python -m tests.scenario_cluster --name NAME --case CASE`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from localcluster.backends import NAMESPACE as DEMO_NAMESPACE
from localcluster.cluster import Cluster
from localcluster.scenario_client import scenario_client
from tests.cluster.helpers import Deployment
from tests.scenario_cluster import cluster_oracle, node_label, render_header, render_summary
from tests.scenario_oracle import CaseOutcome, render_case
from tests.scenarios import SYNTHETIC_INVALID, Case, load_cases, parse_case, sources_of

CASES = load_cases()



def _selected(request: pytest.FixtureRequest) -> list[Case]:
    """The shared cases whose test was selected (all of them unless `-k` narrowed the run)."""
    names = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None and "case" in callspec.params:
            names.add(callspec.params["case"].name)
    return [c for c in CASES if c.name in names]


def node_rules(cluster: Cluster) -> dict[str, str]:
    """Every node's routing rules and the names of its links (pod veths come and go; ours must go)."""
    def view(node: str) -> str:
        rules = [cluster.on_node(node, ["ip", family, "rule"]).stdout for family in ("-4", "-6")]
        links = [line.split()[0] for line in cluster.on_node(node, ["ip", "-br", "link"]).stdout.splitlines()]
        return "\n".join([*rules, *(name for name in links if not name.startswith("veth"))])

    return {n.name: view(n.name) for n in cluster.plan.nodes}


@dataclass(frozen=True, slots=True)
class SuiteRun:
    outcomes: dict[str, CaseOutcome]
    rules_before: dict[str, str]
    rules_after: dict[str, str]


@pytest.fixture(scope="module")
def run(
    request: pytest.FixtureRequest, cluster: Cluster, deployed: Deployment, pytestconfig: pytest.Config
) -> Iterator[SuiteRun]:
    # The demo backends of the earlier files hold NodePorts 30080-30083, which two cases need by number
    # (their policies name them); test_6 applies the backends again.
    cluster.kubectl("delete", "namespace", DEMO_NAMESPACE, "--ignore-not-found", "--wait=true", timeout=180)
    cases = [*_selected(request), parse_case(SYNTHETIC_INVALID)]
    labels = tuple(node_label(n) for n in cluster.plan.nodes)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def log(text: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(text, flush=True)

    log("\n" + render_header(cases, labels))
    started = time.monotonic()
    results: dict[str, CaseOutcome] = {}
    before = node_rules(cluster)
    with scenario_client(cluster.plan, sources_of(cases)) as client, cluster_oracle(cluster, client, log) as oracle:
        for outcome in oracle.run(cases):
            results[outcome.case.name] = outcome
            log(render_case(outcome, labels))
    log(render_summary(list(results.values()), labels, time.monotonic() - started))
    yield SuiteRun(results, before, node_rules(cluster))


@pytest.fixture(scope="module")
def outcomes(run: SuiteRun) -> dict[str, CaseOutcome]:
    return run.outcomes


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_proven_by_packets_on_both_nodes(case: Case, outcomes: dict[str, CaseOutcome], cluster: Cluster) -> None:
    outcome = outcomes[case.name]
    labels = tuple(node_label(n) for n in cluster.plan.nodes)
    assert outcome.ok, f"{render_case(outcome, labels)}\nnote of the case: {case.note}"


def test_every_selected_expectation_was_checked_on_each_node(outcomes: dict[str, CaseOutcome]) -> None:
    shared = [o for name, o in outcomes.items() if name != SYNTHETIC_INVALID["name"]]
    expected = sum(len(o.case.expectations) for o in shared if not o.case.invalid)
    assert sum(o.checked for o in shared) == expected
    assert all(len(r.observed) == 2 for o in shared for r in o.rows)


def test_a_case_the_webhook_rejects_is_reported_as_rejected_at_admission(outcomes: dict[str, CaseOutcome]) -> None:
    outcome = outcomes[SYNTHETIC_INVALID["name"]]
    rendered = render_case(outcome, ())
    assert outcome.ok and outcome.checked == 0, rendered
    assert outcome.rejected is not None and "host bits set" in outcome.rejected, rendered
    assert rendered.startswith("synthetic-host-bits-set: rejected at admission: ")
    unmarked = CaseOutcome(parse_case({**SYNTHETIC_INVALID, "invalid": False}), (), outcome.rejected, ())
    assert not unmarked.ok and "[NOT EXPECTED]" in render_case(unmarked, ())


def test_the_scenario_client_leaves_every_node_as_it_was(run: SuiteRun) -> None:
    assert run.rules_after == run.rules_before
    assert all("scen0" not in rules for rules in run.rules_after.values())
