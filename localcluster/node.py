"""One node of the local cluster: a private mount namespace, containerd, kubelet and kube-proxy (I/O).

The node's daemons run in its network namespace (entered with nsenter, never `ip netns exec`,
which remounts /sys and hides the cgroup hierarchies) and in a private mount namespace of its
own, held open by a `sleep` process. In there:

- tmpfs on /run and /var/log: the xtables lock, shim sockets and /var/log/containers are per node;
- the machine-global sysctls kubelet insists on (vm.overcommit_memory, kernel.panic,
  kernel.panic_on_oops) are regular files bind-mounted over /proc/sys, so with
  `protectKernelDefaults: true` kubelet checks them and never writes the machine's.

cgroup v1 only (the machine's hierarchies are used as they are, never remounted): kubelet
gets `failCgroupV1: false`, the cgroupfs driver and a per-node cgroupRoot created in every
hierarchy. There is no CAP_SYS_RESOURCE: containerd restricts oom_score_adj, kube-proxy keeps 0.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from subprocess import Popen

from localcluster.build import NodeBinaries
from localcluster.network import run
from localcluster.plan import CLUSTER_CIDRS, NodePlan
from localcluster.procs import log_tail, spawn, wait_until
from localcluster.state import CGROUP_ROOT, State

logger = logging.getLogger(__name__)

PAUSE_IMAGE = "localhost/nodeport-guard-pause:1.0"
CNI_BIN_DIR = "/usr/lib/cni"
# What kubelet's protectKernelDefaults checks; where the machine differs, a file with kubelet's value
# is mounted over the /proc/sys entry inside the node's mount namespace only.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


def node_dir(state: State, node: NodePlan) -> Path:
    return state.dir / node.name


def containerd_socket(state: State, node: NodePlan) -> Path:
    return node_dir(state, node) / "containerd.sock"


def enter(holder_pid: int, node: NodePlan, argv: list[str]) -> list[str]:
    """The argv that runs `argv` in the node's mount and network namespaces."""
    return ["nsenter", f"--mount=/proc/{holder_pid}/ns/mnt", f"--net=/run/netns/{node.netns}", "--", *argv]


def prepare_cgroups(node: NodePlan) -> None:
    """kubelet's cgroupRoot in every v1 hierarchy (cpuset needs cpus and mems copied from its parent)."""
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.name == "unified" or not hierarchy.is_dir():
            continue
        path = hierarchy / node.cgroup
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (path / f).write_text((hierarchy / f).read_text())


def start_mount_namespace(state: State, node: NodePlan) -> int:
    """A private mount namespace held by localcluster.mountns, which makes the node's mounts from
    inside it (so they can never land in the machine's mount table); returns the holder's pid."""
    d = node_dir(state, node)
    sysctls = [f"{key}={value}" for key, value in KUBELET_SYSCTLS.items()
               if Path("/proc/sys", key).read_text().strip() != value]
    log = d / "holder.log"
    holder = spawn(
        state,
        ["unshare", "--mount", "--propagation", "private", "--",
         sys.executable, "-m", "localcluster.mountns", str(d / "sysctl"), *sysctls],
        log,
        f"{node.name} mount namespace",
    )
    wait_until(f"{node.name} mount namespace", lambda: "ready" in log_tail(log), 30, holder, log, interval=0.05)
    return holder.pid


def write_configs(state: State, node: NodePlan, kubeconfigs: Path, ca_file: str) -> None:
    d = node_dir(state, node)
    for sub in ("cni", "containerd/root", "containerd/state", "runc", "kubelet", "pod-logs", "cni-ipam"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "containerd.toml").write_text(f"""version = 2
root = "{d / 'containerd/root'}"
state = "{d / 'containerd/state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{containerd_socket(state, node)}"
[ttrpc]
  address = "{d / 'containerd.ttrpc.sock'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'containerd/opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d / 'cni'}"
    max_conf_num = 1
""")
    (d / "cni" / "10-localcluster.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": "localcluster",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(d / "cni-ipam"),
                "ranges": [[{"subnet": node.pod_v4}], [{"subnet": node.pod_v6}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        }],
    }, indent=1))
    (d / "kubelet.yaml").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/" + node.cgroup,
        "protectKernelDefaults": True,
        "containerRuntimeEndpoint": f"unix://{containerd_socket(state, node)}",
        "podLogsDir": str(d / "pod-logs"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": ca_file},
        },
        "authorization": {"mode": "Webhook"},
        "address": node.v4,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "failSwapOn": False,
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "maxPods": 40,
        "registerNode": True,
        "enableServer": True,
        "nodeStatusReportFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }, indent=1))
    (d / "kube-proxy.yaml").write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": node.proxy_mode,
        "hostnameOverride": node.name,
        "clusterCIDR": ",".join(CLUSTER_CIDRS),
        "clientConnection": {"kubeconfig": str(kubeconfigs / "kube-proxy.kubeconfig")},
        # No CAP_SYS_RESOURCE here; and never touch the machine-global conntrack sysctls.
        "oomScoreAdj": 0,
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "0.0.0.0:10256",
    }, indent=1))


def start_runtime(state: State, node: NodePlan, kubeconfigs: Path, ca_file: str) -> tuple[int, Popen[bytes]]:
    """The node's mount namespace and containerd; returns the holder pid and the containerd process."""
    prepare_cgroups(node)
    holder = start_mount_namespace(state, node)
    write_configs(state, node, kubeconfigs, ca_file)
    d = node_dir(state, node)
    containerd = spawn(state, enter(holder, node, ["containerd", "--config", str(d / "containerd.toml")]),
                       d / "logs" / "containerd.log", f"{node.name} containerd")
    return holder, containerd


def start_agents(state: State, node: NodePlan, holder: int, bins: NodeBinaries, kubeconfigs: Path) -> None:
    """kubelet and kube-proxy; containerd must already serve (kubelet exits if its socket is missing)."""
    d = node_dir(state, node)
    logs = d / "logs"
    spawn(
        state,
        enter(holder, node, [
            str(bins.kubelet),
            f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfigs / (node.name + '.kubeconfig')}",
            f"--root-dir={d / 'kubelet'}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.v4},{node.v6}",
            "--v=1",
        ]),
        logs / "kubelet.log",
        f"{node.name} kubelet",
    )
    spawn(
        state,
        enter(holder, node, [str(bins.kube_proxy), f"--config={d / 'kube-proxy.yaml'}", "--v=1"]),
        logs / "kube-proxy.log",
        f"{node.name} kube-proxy",
    )


def ctr_argv(holder: int, state: State, node: NodePlan, *args: str) -> list[str]:
    return enter(holder, node, ["ctr", "--address", str(containerd_socket(state, node)), "-n", "k8s.io", *args])


def import_image(holder: int, state: State, node: NodePlan, archive: Path) -> None:
    run(ctr_argv(holder, state, node, "images", "import", str(archive)), timeout=600)
