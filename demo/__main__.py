"""`make demo`: the whole mission on a real two-node cluster, told as a story and checked step by step.

A local cluster comes up (localcluster: real kubelet, containerd and kube-proxy on two nodes,
iptables mode on node1, nftables mode on node2), nodeport-guard is installed with `make deploy`
as the README says, and real packets from two client namespaces go to NodePorts on both nodes.
Then a scenario the repository carries (demo/scenario.json, in the format of the acceptance
scenarios) runs through the same packet oracle as the test suite's (tests/scenario_cluster.py: one
definition of what "proven by a packet" means), `make undeploy`, and the cluster goes down. Needs
nothing outside the repository. Exits 0 only if every check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from localcluster.backends import NAMESPACE
from localcluster.cluster import Cluster, down, up
from localcluster.image import ensure_product_image
from localcluster.probe import Proto
from localcluster.scenario_client import scenario_client
from localcluster.state import is_stale, list_clusters, teardown
from tests.cluster.helpers import (
    CANARY_NODEPORT,
    REPO,
    apply_backends,
    apply_policy,
    delete_policies,
    deploy,
    our_dataplane,
    probe_matrix,
    protected_nodeports,
    undeploy,
    user_env,
)
from tests.scenario_cluster import cluster_oracle, node_label
from tests.scenario_oracle import render_case
from tests.scenarios import load_cases, sources_of

NAME = "demo"
PORT = 30080
OFFICE = "198.51.100.64/26"  # client A's network
SCENARIO_FILE = Path(__file__).with_name("scenario.json")  # the repository's own case, not ../shared
BOLD, GREEN, RED, DIM, RESET = (
    ("\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "", "", "")
)
Case = tuple[str, int, Proto, str]
CASES: list[Case] = [(n, PORT, proto, "v4") for n in ("node1", "node2") for proto in ("tcp", "udp")]


class Story:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checks = 0
        self.step = 0
        self.started = time.monotonic()

    def heading(self, text: str) -> None:
        self.step += 1
        print(f"\n{BOLD}== {self.step}. {text}{RESET}  {DIM}[{time.monotonic() - self.started:.0f}s]{RESET}",
              flush=True)

    def say(self, text: str) -> None:
        print(textwrap.fill(text, 100), flush=True)

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"{DIM}    {line}{RESET}")

    def expect(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks += 1
        mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
        print(f"  [{mark}] {what}" + (f"  ({detail})" if detail and not ok else ""), flush=True)
        if not ok:
            self.failures.append(what)


def reach(cluster: Cluster, client: str, answered: bool, timeout: float = 20) -> tuple[bool, str]:
    """Probe NodePort 30080 (TCP and UDP) on both nodes until all answer (or all time out)."""
    deadline = time.monotonic() + timeout
    while True:
        results = probe_matrix(cluster, client, CASES)
        if all(r.startswith("answer:") == answered for r in results.values()):
            return True, ""
        if time.monotonic() > deadline:
            return False, json.dumps({f"{n} {proto}": r for (n, _, proto, _), r in results.items()})
        time.sleep(0.3)


def expect_reach(story: Story, cluster: Cluster, client: str, answered: bool) -> None:
    plan = cluster.plan.client(client)
    ok, detail = reach(cluster, client, answered)
    verb = "reaches" if answered else "is blocked at"
    story.expect(f"{client} ({plan.v4}) {verb} NodePort {PORT} on node1 and node2, TCP and UDP", ok, detail)


def kubectl_apply(story: Story, cluster: Cluster, name: str, ingress: list[dict[str, object]] | None) -> bool:
    result = apply_policy(cluster, name, ingress)
    story.show(f"$ kubectl apply -f {name}.yaml\n" + (result.stdout + result.stderr).strip())
    return result.returncode == 0


def plugin(cluster: Cluster, *args: str) -> str:
    import subprocess

    proc = subprocess.run(["kubectl", "nodeport-guard", *args], env=user_env(cluster), capture_output=True,
                          text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr


def tell(story: Story, cluster: Cluster) -> None:
    story.heading("make deploy (as the README says: certs, secrets, manifests, rollout)")
    deployment = deploy(cluster)
    story.show("\n".join(deployment.output.splitlines()[-4:]))
    story.show(cluster.kubectl("get", "pods", "-n", "nodeport-guard", "-o", "wide").stdout)
    story.expect(f"webhook and enforcer rolled out on both nodes in {deployment.seconds:.0f}s",
                 "successfully rolled out" in deployment.output)
    try:
        run_policies(story, cluster)
    finally:
        shutil.rmtree(deployment.certs_dir, ignore_errors=True)
        story.heading("make undeploy: every node clean again")
        result = undeploy(cluster)
        story.expect("make undeploy succeeded", result.returncode == 0, result.stderr[-500:])
        for node in ("node1", "node2"):
            left = our_dataplane(cluster, node)
            story.expect(f"no NPG- rule or npg- set left on {node}", left == [], "; ".join(left[:5]))


def run_policies(story: Story, cluster: Cluster) -> None:
    story.heading("An app behind a NodePort: TCP and UDP servers answering with their pod name, one per node")
    apply_backends(cluster)
    story.show(cluster.kubectl("get", "service", "echo", "-n", NAMESPACE).stdout)
    story.show(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout)
    results = probe_matrix(cluster, "client-b", CASES)
    story.show("\n".join(f"client-b -> {n} {proto}/{p}: {r}" for (n, p, proto, _), r in results.items()))
    expect_reach(story, cluster, "client-a", answered=True)
    expect_reach(story, cluster, "client-b", answered=True)

    story.heading("kubectl apply a deny-all NetworkPolicy")
    story.expect("kubectl apply succeeded", kubectl_apply(story, cluster, "deny-all", []))
    stored = cluster.kubectl_json("get", "networkpolicy", "deny-all", "-n", NAMESPACE)
    value = stored["metadata"].get("annotations", {}).get("nodeport-guard.io/nodeports", "{}")
    story.say("The webhook stored its verdict in a signed annotation; the plugin verifies it:")
    explain = plugin(cluster, "explain", "-n", NAMESPACE, "deny-all")
    story.show("$ kubectl nodeport-guard explain -n demo deny-all\n" + explain)
    story.expect("the annotation names NodePort 30080", f'"nodePort":{PORT}' in value, value[:200])
    story.expect("kubectl nodeport-guard explain says verified", "verified" in explain, explain)

    story.heading("Both clients are blocked on both nodes, before kube-proxy's DNAT")
    expect_reach(story, cluster, "client-a", answered=False)
    expect_reach(story, cluster, "client-b", answered=False)
    for node in ("node1", "node2"):
        rules = [line for line in our_dataplane(cluster, node) if "PREROUTING" in line or "Name:" in line]
        story.show(f"{node}:\n" + "\n".join(rules[:4]))

    story.heading(f"Allow the office network {OFFICE} (client-a) back in")
    story.expect("kubectl apply succeeded",
                 kubectl_apply(story, cluster, "allow-office", [{"from": [{"ipBlock": {"cidr": OFFICE}}]}]))
    expect_reach(story, cluster, "client-a", answered=True)
    expect_reach(story, cluster, "client-b", answered=False)

    story.heading("A bad policy is rejected with the field and the fix")
    result = apply_policy(cluster, "sloppy", [{"from": [{"ipBlock": {"cidr": "203.0.113.7/24"}}]}])
    story.show("$ kubectl apply -f sloppy.yaml\n" + result.stderr.strip())
    story.expect("kubectl apply refused it, naming the field and 203.0.113.0/24",
                 result.returncode != 0 and "ipBlock.cidr" in result.stderr and "203.0.113.0/24" in result.stderr)

    story.heading("Delete the policies: traffic restored, rules gone")
    delete_policies(cluster)
    expect_reach(story, cluster, "client-a", answered=True)
    expect_reach(story, cluster, "client-b", answered=True)
    deadline = time.monotonic() + 20

    def left() -> dict[str, set[int]]:  # NodePorts still protected, beside the canary's own
        return {n: ports for n in ("node1", "node2") if (ports := protected_nodeports(cluster, n) - {CANARY_NODEPORT})}

    while left() and time.monotonic() < deadline:
        time.sleep(0.3)
    story.expect(f"no NodePort is protected on either node but nodeport-guard's own canary ({CANARY_NODEPORT})",
                 not left(), str(left()))
    run_scenario(story, cluster)


def run_scenario(story: Story, cluster: Cluster) -> None:
    """The demo's own scenario through the same runner as tests/cluster/test_5a_scenarios.py."""
    [case] = load_cases(SCENARIO_FILE)
    story.heading(f"A scenario proven by the test suite's packet oracle: {case.name}")
    story.say(f"{case.note} Its pods run as real servers in a namespace of their own; a scenario client "
              "holding every source address of the case sends one packet per expectation to each node.")
    labels = tuple(node_label(n) for n in cluster.plan.nodes)
    with scenario_client(cluster.plan, sources_of([case])) as client, \
            cluster_oracle(cluster, client, log=story.show) as oracle:
        outcomes = list(oracle.run([case]))
    story.show(render_case(outcomes[0], labels))
    story.expect(f"all {len(case.expectations)} expectations of {case.name} confirmed by packets on node1 and node2",
                 all(o.ok for o in outcomes))


def main() -> int:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    story = Story()
    story.heading("Build (or reuse) the image and bring up a local two-node cluster")
    for name in list_clusters():
        if name == NAME and is_stale(name):
            teardown(name)
    try:
        image = ensure_product_image()
        cluster = up(NAME, images=[image], owner_pid=os.getpid())
    except Exception as exc:
        print(f"{RED}the cluster did not come up: {exc}{RESET}", file=sys.stderr)
        return 1
    story.show(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
    try:
        tell(story, cluster)
    except Exception as exc:  # report the story so far, then fail
        story.failures.append(f"demo aborted: {exc}")
        print(f"{RED}demo aborted: {exc}{RESET}", file=sys.stderr)
    finally:
        story.heading("Tear the cluster down")
        problems = down(NAME)
        story.expect("every namespace, mount, cgroup, process and directory of the cluster removed", not problems,
                     "; ".join(problems))
    elapsed = time.monotonic() - story.started
    print()
    if story.failures:
        print(f"{RED}{BOLD}{len(story.failures)} of {story.checks} checks failed{RESET} in {elapsed:.0f}s:")
        for f in story.failures:
            print(f"  - {f}")
        return 1
    print(f"{GREEN}{BOLD}all {story.checks} checks passed{RESET} in {elapsed:.0f}s; everything was cleaned up.")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
