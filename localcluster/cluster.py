"""Bring the local cluster up and down, and talk to it (I/O).

`up` builds (or reuses) the binaries, makes the namespaces, starts the control plane and both
nodes, loads the images into each node's containerd and waits until the nodes are Ready and
the default ServiceAccount and kube-root-ca.crt exist. `down` is localcluster.state.teardown.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import oci
from localcluster.build import ensure_binaries, ensure_node_binaries, expected_binaries
from localcluster.controlplane import Pki, kubectl, start_control_plane
from localcluster.network import create_network, in_netns
from localcluster.node import ctr_argv, enter, import_image, start_agents, start_runtime
from localcluster.pki import build_cluster_pki, render_kubeconfig
from localcluster.plan import APISERVER_PORT, CP_V4, CP_V6, KUBERNETES_SERVICE_IP, ClusterPlan, build_plan
from localcluster.procs import StartError, log_tail, wait_until
from localcluster.state import State, alive, cluster_dir, is_stale, teardown

logger = logging.getLogger(__name__)

REQUIRED_COMMANDS = ("ip", "nsenter", "unshare", "containerd", "runc", "ctr", "umoci", "skopeo", "tar")


class PrerequisiteError(RuntimeError):
    """Something the cluster needs is missing on this machine; the message says what to do."""


def _say(msg: str) -> None:
    print(f"[localcluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


GUARDED_MOUNTS = ("/run", "/var/log", "/proc/sys/")


def machine_mounts() -> list[str]:
    """The machine's mounts on the paths a node's private mount namespace covers (must never change)."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted(p for p in points if p in GUARDED_MOUNTS[:2] or p.startswith(GUARDED_MOUNTS[2]))


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise PrerequisiteError("the local cluster needs root (network namespaces, cgroups, containerd)")
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if missing:
        raise PrerequisiteError(f"missing commands: {', '.join(missing)}; run `make install`")
    if not Path("/usr/lib/cni/bridge").exists():
        raise PrerequisiteError("CNI plugins missing (/usr/lib/cni/bridge); run `make install`")
    if not Path("/sys/fs/cgroup/memory").is_dir():
        raise PrerequisiteError("no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")


@dataclass(frozen=True, slots=True)
class Cluster:
    """A running local cluster, as the tests, the demo and the CLI see it."""

    plan: ClusterPlan
    dir: Path
    kubectl_bin: Path
    holders: dict[str, int]  # node name -> pid holding its mount namespace

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        """Holds kubectl v1.37 (put it first on PATH to use the cluster by hand)."""
        return self.kubectl_bin.parent

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubectl_bin, self.kubeconfig, *args, stdin=stdin, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def env(self) -> dict[str, str]:
        """The environment a user gets from `eval "$(python -m localcluster env)"`."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def node_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """Run `argv` as root on a node (its network and mount namespaces), as an admin on that host would."""
        return enter(self.holders[node], self.plan.node(node), list(argv))

    def on_node(self, node: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.node_argv(node, argv), capture_output=True, text=True, check=False, timeout=120)
        if check and proc.returncode != 0:
            raise StartError(f"{node}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def client_argv(self, client: str, argv: Sequence[str]) -> list[str]:
        return in_netns(self.plan.client(client).netns, argv)

    def load_image(self, archive: Path) -> None:
        """Import a docker-archive into every node's containerd (in parallel)."""
        state = State.load(self.plan.name)
        assert state is not None
        with ThreadPoolExecutor(len(self.plan.nodes)) as pool:
            futures = [pool.submit(import_image, self.holders[n.name], state, n, archive) for n in self.plan.nodes]
            for f in futures:
                f.result()

    def tag_image(self, source: str, target: str) -> None:
        """`ctr images tag` on every node (a new tag of an image already loaded)."""
        state = State.load(self.plan.name)
        assert state is not None
        for n in self.plan.nodes:
            subprocess.run(ctr_argv(self.holders[n.name], state, n, "images", "tag", "--force", source, target),
                           capture_output=True, check=True, timeout=60)


def attach(name: str) -> Cluster:
    """The handle of a cluster that is already up (from its state file)."""
    state = State.load(name)
    if state is None:
        raise PrerequisiteError(f"no local cluster named {name!r} is up (no state in {cluster_dir(name)})")
    plan = build_plan(name)
    holders = {n.name: p.pid for n in plan.nodes for p in state.procs if p.what == f"{n.name} mount namespace"}
    return Cluster(plan, state.dir, expected_binaries().kubectl, holders)


def _write_pki(state: State, plan: ClusterPlan) -> Pki:
    pki = build_cluster_pki([CP_V4, CP_V6, KUBERNETES_SERVICE_IP, "2001:db8:ffff::1"], [n.name for n in plan.nodes])
    d = state.dir / "pki"
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "ca.crt": pki.ca.cert, "ca.key": pki.ca.key, "apiserver.crt": pki.apiserver.cert,
        "apiserver.key": pki.apiserver.key, "sa.key": pki.service_account_key, "sa.pub": pki.service_account_pub,
    }
    for who, pem in pki.clients.items():
        files[f"{who}.crt"], files[f"{who}.key"] = pem.cert, pem.key
    for fname, data in files.items():
        (d / fname).write_bytes(data)
        (d / fname).chmod(0o600)
    kubeconfigs = state.dir / "kubeconfigs"
    kubeconfigs.mkdir(exist_ok=True)
    inside = f"https://{CP_V4}:{APISERVER_PORT}"
    for who, pem in pki.clients.items():
        (kubeconfigs / f"{who}.kubeconfig").write_text(render_kubeconfig(inside, pki.ca.cert, pem))
    return Pki(d)


def _check_alive(cluster: Cluster) -> None:
    """Fail fast, with its log, when a daemon of the cluster died while we wait for it."""
    state = State.load(cluster.plan.name)
    for proc in state.procs if state else []:
        if not alive(proc):
            node, _, daemon = proc.what.partition(" ")
            log = cluster.dir / node / "logs" / f"{daemon}.log" if daemon else cluster.dir / "logs" / f"{node}.log"
            raise StartError(f"{proc.what} exited; log tail:\n{log_tail(log)}")


def _wait_ready(cluster: Cluster, timeout: float) -> None:
    def nodes_ready() -> bool:
        _check_alive(cluster)
        items = cluster.kubectl_json("get", "nodes")["items"]
        ready = [
            n for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) == len(cluster.plan.nodes)

    def registered() -> bool:
        _check_alive(cluster)
        return len(cluster.kubectl_json("get", "nodes")["items"]) == len(cluster.plan.nodes)

    wait_until("both nodes registered", registered, timeout)
    for node in cluster.plan.nodes:
        cidrs = [node.pod_v4, node.pod_v6]
        patch = {"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}
        cluster.kubectl("patch", "node", node.name, "--type=merge", "-p", json.dumps(patch), check=False)
    wait_until("both nodes Ready", nodes_ready, timeout)
    wait_until(
        "ServiceAccount default/default",
        lambda: cluster.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        timeout,
    )
    wait_until(
        "ConfigMap default/kube-root-ca.crt",
        lambda: cluster.kubectl("get", "configmap", "kube-root-ca.crt", check=False).returncode == 0,
        timeout,
    )


def up(name: str, images: Sequence[Path] = (), owner_pid: int = 0, timeout: float = 180) -> Cluster:
    """Bring cluster `name` up. On any failure everything made so far is removed before raising."""
    check_prerequisites()
    plan = build_plan(name)
    if State.load(name) is not None or any(Path("/run/netns", ns).exists() for ns in plan.netns):
        if not is_stale(name) and owner_pid == 0:
            raise PrerequisiteError(f"cluster {name!r} is already up; `python -m localcluster down --name {name}`")
        _say(f"removing what a previous cluster {name!r} left behind")
        teardown(name)
    started = time.monotonic()
    cp_bins = ensure_binaries()
    node_bins = ensure_node_binaries()
    state = State(name=name, prefix=plan.prefix, owner_pid=owner_pid, starter_pid=os.getpid())
    state.save()
    try:
        pause = oci.ensure_pause_image()
        pki = _write_pki(state, plan)
        _say(f"creating namespaces ({', '.join(plan.netns)})")
        create_network(plan)
        _say("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
        url = start_control_plane(state, plan, cp_bins, node_bins, pki)
        state.apiserver_url = url
        state.save()
        admin = json.loads((state.dir / "kubeconfigs" / "admin.kubeconfig").read_text())
        admin["clusters"][0]["cluster"]["server"] = url
        (state.dir / "kubeconfig").write_text(json.dumps(admin, indent=1))
        (state.dir / "kubeconfig").chmod(0o600)
        _say("starting containerd, kubelet and kube-proxy on node1 (iptables) and node2 (nftables)")
        kubeconfigs = state.dir / "kubeconfigs"
        mounts_before = machine_mounts()
        runtimes = {n.name: start_runtime(state, n, kubeconfigs, pki["ca.crt"]) for n in plan.nodes}
        holders = {name: holder for name, (holder, _) in runtimes.items()}
        cluster = Cluster(plan, state.dir, cp_bins.kubectl, holders)
        for n in plan.nodes:
            sock = state.dir / n.name / "containerd.sock"
            log = state.dir / n.name / "logs" / "containerd.log"
            wait_until(f"{n.name} containerd", sock.exists, 60, runtimes[n.name][1], log)
        if machine_mounts() != mounts_before:
            raise StartError(f"the machine's mount table changed ({mounts_before} -> {machine_mounts()}); aborting")
        for n in plan.nodes:
            start_agents(state, n, holders[n.name], node_bins, kubeconfigs)
        for archive in (pause, *images):
            _say(f"loading {archive.name} into both nodes' containerd")
            cluster.load_image(archive)
        _wait_ready(cluster, timeout)
        state = State.load(name) or state
        state.ready = True
        state.save()
    except BaseException:
        _say(f"cluster {name!r} failed to come up; logs in {state.dir / 'logs'} are removed by teardown")
        _keep_logs_for_debugging(state.dir)
        teardown(name)
        raise
    _say(f"cluster {name!r} ready in {time.monotonic() - started:.0f}s; KUBECONFIG={cluster.kubeconfig}")
    return cluster


def _keep_logs_for_debugging(d: Path) -> None:
    if not os.environ.get("NPG_CLUSTER_KEEP_LOGS"):
        return
    keep = d.parent / f"logs-{d.name}-{int(time.time())}"
    for log in d.rglob("*.log"):
        target = keep / log.relative_to(d)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, target)
    _say(f"logs kept in {keep}")


def down(name: str) -> list[str]:
    problems = teardown(name)
    if not problems:
        _say(f"cluster {name!r} removed")
    return problems
