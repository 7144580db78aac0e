"""The chart as an operator runs it: `helm install`, `helm upgrade` (a value and an image tag), `helm
uninstall`, with the real helm binary on the local cluster.

A denied client probes a protected NodePort on each node every 100 ms through the whole upgrade
(not one new connection may get through; an allowed client keeps getting through), and after the
uninstall no NPG- chain, rule or npg- set is left on either node.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from localcluster.cluster import Cluster
from localcluster.probe import Target, probe_many
from localcluster.tools_build import ensure_helm
from tests.cluster.helpers import (
    apply_backends,
    apply_policy,
    delete_policies,
    eventually,
    expect,
    matrix,
    node_address,
    our_dataplane,
    user_env,
)
from tests.cluster.test_4_traffic import ALLOW_A
from tests.cluster.test_5_resilience import _while_probing
from tests.integration.test_monitoring import WEBHOOK_PREFIXES, monitoring_exprs
from tests.monitoring_names import merge_used, missing, scraped_series

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "nodeport-guard"
NS = "nodeport-guard"
RELEASE = "nodeport-guard"
_SCRAPE = (  # on the node, as tests/cluster/test_5b_audit.py reads the drop counters
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9911/metrics', timeout=10).read().decode())"
)


def _helm(cluster: Cluster, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    argv = [str(ensure_helm()), *args, "--namespace", NS]
    result = subprocess.run(argv, env=user_env(cluster), capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _enforcer(cluster: Cluster) -> dict[str, object]:
    ds = cluster.kubectl_json("get", "daemonset", "nodeport-guard-enforcer", "-n", NS)
    container = ds["spec"]["template"]["spec"]["containers"][0]
    return {"image": container["image"], **{e["name"]: e.get("value") for e in container["env"]}}


def _assert_metrics_serve_what_monitoring_uses(cluster: Cluster) -> None:
    """The enforcers' real /metrics on both nodes, after real drops: every enforcer name and label
    the chart's alert rules and dashboard use is there. (The webhook's are held by
    tests/integration/test_monitoring.py, which makes every labelled series.)"""
    used = {
        n: labels
        for n, labels in merge_used(monitoring_exprs()).items()
        if n.startswith("nodeport_guard_") and not n.startswith(WEBHOOK_PREFIXES)
    }
    assert len(used) >= 8
    for node in ("node1", "node2"):
        # New connections the policy denies, sent now to this node (as test_5b_audit counts them).
        target = Target(node_address(cluster, node, "v4"), 30080, "tcp", 0.5)
        answers = [probe_many(cluster.plan.client("client-b").netns, [target])[0] for _ in range(3)]
        assert answers == ["timeout"] * 3, answers

        def served(node: str = node) -> list[str]:
            text = cluster.on_node(node, [sys.executable, "-c", _SCRAPE]).stdout
            problems = missing(used, scraped_series(text))
            if problems:
                sets = cluster.on_node(node, ["ipset", "list", "-t"], check=False).stdout
                raise AssertionError((node, problems, [ln for ln in text.splitlines() if "drop" in ln], sets[-1500:]))
            return problems

        eventually(served, timeout=60)  # the canary gauge appears with the first probe (every 10 s)


def test_helm_install_upgrade_uninstall(cluster: Cluster) -> None:
    # After `make undeploy` (test_6) the namespace may still be terminating.
    eventually(lambda: cluster.kubectl("get", "namespace", NS, check=False).returncode != 0, timeout=180)
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=privileged")
    installed = False
    try:
        _helm(cluster, "install", RELEASE, str(CHART), "--wait", "--timeout", "5m")
        installed = True
        cluster.kubectl("rollout", "status", "-n", NS, "daemonset/nodeport-guard-enforcer", "--timeout=180s",
                        timeout=200)
        apply_backends(cluster)
        # Admitted and annotated: the post-install hook injected the CA the pre-install hook made.
        assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
        expect(cluster, "client-b", matrix(cluster), answered=False)
        _assert_metrics_serve_what_monitoring_uses(cluster)
        manifest = _helm(cluster, "get", "manifest", RELEASE).stdout
        assert "PRIVATE KEY" not in manifest and "kind: Secret" not in manifest

        cluster.tag_image("docker.io/library/nodeport-guard:0.1.0", "docker.io/library/nodeport-guard:0.1.0-helm")

        def upgrade() -> None:
            _helm(cluster, "upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "enforcer.resyncSeconds=45",
                  "--set", "image.tag=0.1.0-helm", "--wait", "--timeout", "5m")
            cluster.kubectl("rollout", "status", "-n", NS, "daemonset/nodeport-guard-enforcer", "--timeout=180s",
                            timeout=200)

        denied, allowed = _while_probing(cluster, upgrade)
        for p in denied:
            assert p.attempts > 20 and p.answered == [], p.result
        for p in allowed:
            assert len(p.answered) > 20, p.result
        after = _enforcer(cluster)
        assert (after["image"], after["NPG_RESYNC_SECONDS"]) == ("nodeport-guard:0.1.0-helm", "45")
        pods = cluster.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=nodeport-guard-enforcer")
        assert {p["spec"]["containers"][0]["image"] for p in pods["items"]} == {"nodeport-guard:0.1.0-helm"}
        expect(cluster, "client-b", matrix(cluster), answered=False)

        for node in ("node1", "node2"):
            assert our_dataplane(cluster, node) != [], node
        # A policy stays in place: the uninstall must clean the nodes even then.
        _helm(cluster, "uninstall", RELEASE, "--wait", "--timeout", "5m")
        installed = False
        for node in ("node1", "node2"):
            assert our_dataplane(cluster, node) == [], node
        expect(cluster, "client-b", matrix(cluster), answered=True)
    finally:
        if installed:
            _helm(cluster, "uninstall", RELEASE, "--wait", "--timeout", "5m")
        delete_policies(cluster)
        cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", check=False, timeout=180)
