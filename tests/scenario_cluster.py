"""The packet oracle on the real two-node cluster: shared scenarios, real pods, real kube-proxy DNAT (I/O).

`ClusterOracle(cluster, client)` runs cases on a local cluster where nodeport-guard was installed
with `make deploy`. The cases run side by side, in rounds (`tests.scenarios.plan_rounds`: NodePorts
are cluster-wide, so a NodePort no policy names is renumbered; a round is bounded by pod capacity),
each case in namespaces of its own. A round:

1. creates the namespaces, the case's Pods as real servers (`tests.scenario_backends`; a case with
   an externalTrafficPolicy Local Service gets each pod once per node, pinned, so both nodes have
   a local endpoint) and its Services; waits until the pods run;
2. proves the path before any policy: every expectation's packet must get through on both nodes
   (retried until kube-proxy has programmed the Services), so a later "denied" means filtered;
3. applies the case's NetworkPolicies through the real webhook (`kubectl apply`; a rejection is the
   case's outcome, "rejected at admission: <message>"), waits until the annotations are quiet and
   every node's enforcer has synced after that and then stayed idle;
4. forgets the sources' conntrack entries on both nodes (every probe is a NEW connection) and sends
   one packet exchange per expectation and node, from the scenario client namespace holding that
   source (`localcluster.scenario_client`), to the node's own address: TCP connect, UDP
   request/answer, SCTP INIT, observed arriving in a backend pod's network namespace by a raw
   socket (`tests.scenario_backends.SctpObservers`);
5. re-probes only the disagreeing expectations after settling longer, then deletes the namespaces.

The verdict is read from packets only, never from rules or annotations.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from localcluster.cluster import Cluster
from localcluster.network import in_netns
from localcluster.plan import NodePlan
from localcluster.scenario_client import ScenarioClient
from tests.probes import PASSED, ClientAgent, Observed
from tests.scenario_backends import SctpObservers, pods_per_case, server_pod
from tests.scenario_oracle import CaseOutcome, Row, apply_outcome, wait_quiet
from tests.scenarios import (
    Case,
    Expectation,
    Obj,
    Planned,
    as_list,
    build_objects,
    describe_renumbering,
    has_local_service,
    plan_rounds,
    serve_ports,
)

FIRST_TIMEOUT = 1.0
RECHECK_TIMEOUT = 3.0
PATH_TIMEOUT = 120.0  # kube-proxy programming a round's Services on both nodes
PODS_TIMEOUT = 240.0
ROUND_LABEL = "nodeport-guard.test/scenario-round"
APPLY_CONCURRENCY = 4  # kubectl applies of a round in flight at once
MAX_PODS_PER_NODE = 40  # kubelet's maxPods in localcluster/node.py

def node_label(node: NodePlan) -> str:
    return f"{node.name}/{node.proxy_mode}"


@dataclass
class Running:
    """One case of a round, from creation to its outcome."""

    planned: Planned
    index: int
    mapping: dict[str, str]
    notes: list[str] = field(default_factory=list)
    policies: tuple[Obj, ...] = ()
    rejected: str | None = None

    @property
    def case(self) -> Case:
        return self.planned.case


class ClusterOracle:
    """Runs cases on a cluster with the product deployed, from a scenario client wired to every node."""

    def __init__(self, cluster: Cluster, client: ScenarioClient, log: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.client = client
        self.nodes = cluster.plan.nodes
        self.labels = tuple(node_label(n) for n in self.nodes)
        self.log = log
        self._agent = ClientAgent(client.netns)
        self._pool = ThreadPoolExecutor(max_workers=48)
        self._sctp = SctpObservers(cluster)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sctp.close()
        self._agent.close()

    # --- cluster facts ---------------------------------------------------------------------

    def _taken_node_ports(self) -> set[int]:
        items = self.cluster.kubectl_json("get", "services", "-A")["items"]
        ports = {int(p["nodePort"]) for s in items for p in s["spec"].get("ports", []) if p.get("nodePort")}
        return ports | {int(s["spec"]["healthCheckNodePort"]) for s in items if s["spec"].get("healthCheckNodePort")}

    def _free_pods(self) -> int:
        pods = self.cluster.kubectl_json("get", "pods", "-A")["items"]
        per_node = {n.name: 0 for n in self.nodes}
        for pod in pods:
            node = pod["spec"].get("nodeName")
            if node in per_node and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                per_node[node] += 1
        # The scheduler balances, but not exactly: leave a margin on the fuller node.
        return max(0, 2 * (MAX_PODS_PER_NODE - max(per_node.values())) - 8)

    def enforcer_syncs(self, node: NodePlan) -> int:
        """The enforcer's completed syncs on `node` (its metrics, read from inside the node)."""
        code = ("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9911/metrics',timeout=5)"
                ".read().decode())")
        out = subprocess.run(in_netns(node.netns, [sys.executable, "-c", code]), capture_output=True, text=True,
                             check=True, timeout=30).stdout
        for line in out.splitlines():
            if line.startswith("nodeport_guard_sync_duration_seconds_count"):
                return int(float(line.rsplit(" ", 1)[1]))
        raise RuntimeError(f"the enforcer on {node.name} exports no nodeport_guard_sync_duration_seconds_count")

    def forget_flows(self) -> None:
        """Delete the conntrack entries of every scenario source on every node (only theirs)."""
        for node in self.nodes:
            for source in self.client.sources:
                family = ["-f", "ipv6"] if ipaddress.ip_address(source).version == 6 else []
                subprocess.run(in_netns(node.netns, ["conntrack", "-D", *family, "-s", source]),
                               capture_output=True, check=False, timeout=30)

    # --- probing ---------------------------------------------------------------------------

    def _address(self, node: NodePlan, family: int) -> str:
        return node.v4 if family == 4 else node.v6

    def _probe_one(self, e: Expectation, node: NodePlan, timeout: float) -> Observed:
        dst = self._address(node, e.family)
        if e.probe_protocol == "sctp":
            tag = 1 + secrets.randbelow((1 << 32) - 1)
            sent = self._agent.request("sctp", e.source, dst, e.node_port, timeout, tag)
            if sent != "sent":
                raise RuntimeError(f"{e.describe()} to {node.name}: the client could not send the INIT: {sent}")
            return "arrived" if self._sctp.arrived(tag, timeout) else "timeout"
        result = self._agent.request(e.probe_protocol, e.source, dst, e.node_port, timeout)
        if result not in ("connected", "accepted", "refused", "answered", "timeout"):
            raise RuntimeError(f"{e.describe()} to {node.name}: {result}")
        return result  # type: ignore[return-value]

    def probe(self, items: Sequence[tuple[Expectation, NodePlan]], timeout: float) -> list[Observed]:
        return list(self._pool.map(lambda item: self._probe_one(item[0], item[1], timeout), items))

    def _path_ready(self, running: list[Running]) -> None:
        """Before any policy every expectation must get through on every node (retried until kube-proxy is ready)."""
        pending = [(e, n) for r in running for e in r.case.expectations for n in self.nodes]
        deadline = time.monotonic() + PATH_TIMEOUT
        while pending:
            results = self.probe(pending, FIRST_TIMEOUT)
            pending = [item for item, seen in zip(pending, results, strict=True) if seen not in PASSED]
            if pending and time.monotonic() > deadline:
                shown = ", ".join(f"{e.describe()} on {n.name}" for e, n in pending[:8])
                raise AssertionError(f"without any policy, {len(pending)} probe(s) never got through: {shown}")
            if pending:
                time.sleep(1.0)

    # --- waiting for the product -----------------------------------------------------------

    def _policy_versions(self, namespaces: Sequence[str]) -> list[tuple[str, str, str]]:
        items = self.cluster.kubectl_json("get", "networkpolicies", "-A")["items"]
        return sorted((p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["resourceVersion"])
                      for p in items if p["metadata"]["namespace"] in namespaces)

    def _settle(self, namespaces: Sequence[str], before: dict[str, int] | None, quiet: float) -> None:
        """Annotations quiet for `quiet` s; then every enforcer synced since `before` (None: no policy was
        admitted, nothing to sync) and stayed idle for 1 s."""
        deadline = time.monotonic() + 60
        wait_quiet(lambda: self._policy_versions(namespaces), quiet, timeout=60, interval=0.3)
        for node in self.nodes:
            previous = -1
            while True:
                count = self.enforcer_syncs(node)
                if (before is None or count > before[node.name]) and count == previous:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the enforcer on {node.name} did not sync after the round's policies")
                previous = count
                time.sleep(1.0)

    # --- one round -------------------------------------------------------------------------

    def _kubectl_apply(self, text: str) -> tuple[str | None, tuple[str, ...]]:
        result = self.cluster.kubectl("apply", "-f", "-", stdin=text, check=False)
        return apply_outcome(result.returncode, result.stderr)

    def _pods_running(self, namespaces: set[str], want: int) -> list[Obj]:
        deadline = time.monotonic() + PODS_TIMEOUT
        while True:
            pods = [p for p in self.cluster.kubectl_json("get", "pods", "-A")["items"]
                    if p["metadata"]["namespace"] in namespaces]
            ready = [p for p in pods if p["status"].get("phase") == "Running"
                     and all(c.get("ready") for c in p["status"].get("containerStatuses", [{}]))]
            if len(ready) == want:
                return ready
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ready)} of {want} scenario pods running after {PODS_TIMEOUT:.0f}s")
            time.sleep(1.0)

    def _create(self, running: list[Running], tag: str) -> list[Obj]:
        names = sorted({ns for r in running for ns in r.mapping.values()})
        namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": {ROUND_LABEL: tag}}} for ns in names]
        self.cluster.kubectl("apply", "-f", "-", stdin=as_list(tuple(namespaces)))
        workloads: list[Obj] = []
        for r in running:
            ports = serve_ports(r.case)
            pinned: list[str | None] = [n.name for n in self.nodes] if has_local_service(r.case) else [None]

            def build(spec: Obj, ns: str, ports: list[int] = ports, pinned: list[str | None] = pinned) -> list[Obj]:
                return [server_pod(spec, ns, ports, node) for node in pinned]

            objects = build_objects(r.case, r.mapping, build)
            r.notes += objects.notes
            if len(pinned) > 1:
                r.notes.append("a Service has externalTrafficPolicy Local: each pod runs once per node (pinned), "
                               "so that both nodes have a local endpoint")
            if r.planned.renumbered:
                r.notes.append(describe_renumbering(r.planned.renumbered))
            workloads += objects.workloads
            r.policies = objects.policies
        failure, _ = self._kubectl_apply(as_list(tuple(workloads)))
        if failure is not None:
            raise RuntimeError(f"the round's Pods/Services were not created: {failure}")
        want = sum(1 for o in workloads if o["kind"] == "Pod")
        return self._pods_running(set(names), want)

    def _apply_policies(self, r: Running) -> None:
        if not r.policies:
            return
        rejected, warnings = self._kubectl_apply(as_list(r.policies))
        r.notes += [f"kubectl apply printed {w}" for w in warnings]
        r.rejected = rejected

    def run_round(self, planned: Sequence[Planned], first_index: int) -> list[CaseOutcome]:
        tag = secrets.token_hex(3)
        running = [
            Running(p, first_index + i, {ns: f"sc-{tag}-{first_index + i:02d}-{ns}"[:63] for ns in p.case.namespaces})
            for i, p in enumerate(planned)
        ]
        names = [ns for r in running for ns in r.mapping.values()]
        started = time.monotonic()
        try:
            pods = self._create(running, tag)
            self.log(f"[cluster oracle] round {tag}: {len(running)} cases, {len(pods)} pods running "
                     f"({time.monotonic() - started:.0f}s)")
            sctp_cases = {ns for r in running if any(e.probe_protocol == "sctp" for e in r.case.expectations)
                          for ns in r.mapping.values()}
            self._sctp.observe([p for p in pods if p["metadata"]["namespace"] in sctp_cases])
            self._path_ready(running)
            self.log(f"[cluster oracle] round {tag}: every expectation gets through without a policy "
                     f"({time.monotonic() - started:.0f}s)")
            before = {n.name: self.enforcer_syncs(n) for n in self.nodes}
            # A few kubectl processes at a time: 35 Go binaries starting at once on 2 cores starve
            # the apiserver's webhook calls past their 5 s timeout (seen once in a full run).
            with ThreadPoolExecutor(max_workers=APPLY_CONCURRENCY) as appliers:
                list(appliers.map(self._apply_policies, running))
            admitted = [r for r in running if r.rejected is None]
            self._settle(names, before if any(r.policies for r in admitted) else None, quiet=1.5)
            self.forget_flows()
            items = [(e, n) for r in admitted for e in r.case.expectations for n in self.nodes]
            observed = dict(zip(((e.index, r.index, n.name) for r in admitted for e in r.case.expectations
                                 for n in self.nodes), self.probe(items, FIRST_TIMEOUT), strict=True))
            wrong = [(r, e, n) for r in admitted for e in r.case.expectations for n in self.nodes
                     if (observed[(e.index, r.index, n.name)] in PASSED) != e.allowed]
            if wrong:
                # Disagreement: settle longer, then send those probes again, waiting longer for an answer.
                time.sleep(3.0)
                self.forget_flows()
                again = self.probe([(e, n) for _, e, n in wrong], RECHECK_TIMEOUT)
                for (r, e, n), seen in zip(wrong, again, strict=True):
                    observed[(e.index, r.index, n.name)] = seen
            rechecked = {(r.index, e.index) for r, e, _ in wrong}
            self.log(f"[cluster oracle] round {tag}: {len(items)} probes, {len(wrong)} re-probed "
                     f"({time.monotonic() - started:.0f}s)")
            return [self._outcome(r, observed, rechecked) for r in running]
        finally:
            self._sctp.close()
            self.cluster.kubectl("delete", "namespace", *names, "--wait=true", "--ignore-not-found",
                                 timeout=300, check=False)

    def _outcome(self, r: Running, observed: dict[tuple[int, int, str], Observed],
                 rechecked: set[tuple[int, int]]) -> CaseOutcome:
        if r.rejected is not None:
            return CaseOutcome(r.case, (), r.rejected, tuple(r.notes))
        rows = tuple(
            Row(e, {node_label(n): observed[(e.index, r.index, n.name)] for n in self.nodes},
                (r.index, e.index) in rechecked)
            for e in r.case.expectations
        )
        return CaseOutcome(r.case, rows, None, tuple(r.notes))

    def run(self, cases: Sequence[Case]) -> Iterator[CaseOutcome]:
        """Every case, round after round; yields each outcome as its round finishes."""
        rounds = plan_rounds(cases, self._taken_node_ports(), self._free_pods(),
                             lambda c: pods_per_case(c, len(self.nodes)))
        self.log(f"[cluster oracle] {len(cases)} cases in {len(rounds)} round(s) of "
                 f"{', '.join(str(len(r)) for r in rounds)} cases")
        index = 0
        for planned in rounds:
            yield from self.run_round(planned, index)
            index += len(planned)


@contextlib.contextmanager
def cluster_oracle(cluster: Cluster, client: ScenarioClient,
                   log: Callable[[str], None] = print) -> Iterator[ClusterOracle]:
    oracle = ClusterOracle(cluster, client, log)
    try:
        yield oracle
    finally:
        oracle.close()



def render_header(cases: Sequence[Case], labels: Sequence[str]) -> str:
    total = sum(len(c.expectations) for c in cases)
    return (f"[cluster oracle] {total} expectations in {len(cases)} cases, each by a real packet to the node's "
            f"own address on {', '.join(labels)}, through kube-proxy DNAT to a real backend pod.")


def render_summary(outcomes: Sequence[CaseOutcome], labels: Sequence[str], seconds: float) -> str:
    checked = sum(o.checked for o in outcomes)
    total = sum(len(o.case.expectations) for o in outcomes)
    rejected = sum(o.rejected is not None for o in outcomes)
    differing = sum(not o.ok for o in outcomes)
    per_node = "; ".join(f"{label}: {checked}" for label in labels)
    return (f"[cluster oracle] {checked} of {total} expectations checked by a real packet per node ({per_node}; "
            f"{checked * len(labels)} probes); {rejected} case(s) rejected at admission; {differing} case(s) "
            f"differing; {seconds:.0f}s.")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.scenario_cluster [--name CLUSTER] [--case NAME]...`: the cluster tier by hand.

    Needs a local cluster that is up with nodeport-guard deployed (`make cluster-up`, `make deploy`).
    """
    import argparse

    from localcluster.cluster import attach
    from localcluster.scenario_client import scenario_client
    from tests.scenario_oracle import render_case
    from tests.scenarios import load_cases, sources_of

    parser = argparse.ArgumentParser(prog="python -m tests.scenario_cluster", description=main.__doc__)
    parser.add_argument("--name", default="npg", help="the local cluster's name (default npg)")
    parser.add_argument("--case", action="append", default=[], help="a case name (repeatable); default: all")
    args = parser.parse_args(argv)
    cases = load_cases()
    unknown = sorted(set(args.case) - {c.name for c in cases})
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    selected = [c for c in cases if not args.case or c.name in args.case]
    cluster = attach(args.name)
    labels = tuple(node_label(n) for n in cluster.plan.nodes)
    started = time.monotonic()
    outcomes: list[CaseOutcome] = []
    print(render_header(selected, labels), flush=True)
    with scenario_client(cluster.plan, sources_of(selected)) as client, cluster_oracle(cluster, client) as oracle:
        for outcome in oracle.run(selected):
            outcomes.append(outcome)
            print(render_case(outcome, labels), flush=True)
    print(render_summary(outcomes, labels, time.monotonic() - started))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
