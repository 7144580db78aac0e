"""Backends of the shared scenarios on a real cluster: the case's pods as servers, SCTP observers in them (I/O).

`server_pod` makes one pod of a case a real server (the product image's Python: TCP accept with a
greeting and UDP echo on every port a backend of the case may be asked on; root, so that ports
below 1024 work; pinned to a node when asked). `SctpObservers` puts a raw-socket observer
(`tests.probe_agent node`, no listening port) into the network namespace of given pods, entered
with nsenter through the pod's container process (its pid from the node's containerd), and tells
whether an SCTP INIT with a given initiate tag arrived in any of them: the tag survives kube-proxy's
DNAT and masquerade, the ports and source do not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from localcluster.cluster import Cluster
from localcluster.node import containerd_socket
from localcluster.plan import NodePlan
from localcluster.state import State
from localcluster.versions import IMAGE_NAME
from tests.probes import NodeAgent
from tests.scenarios import Case, Obj, has_local_service

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(512)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, kind)
print("serving", sys.argv[1:], flush=True)
while True:
    for key, _ in sel.select():
        try:
            if key.data == socket.SOCK_STREAM:
                c, _ = key.fileobj.accept()
                c.settimeout(1.0)
                try:
                    c.sendall(b"ok")
                finally:
                    c.close()
            else:
                data, addr = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(data, addr)
        except OSError:
            pass
"""


def server_pod(spec: Obj, namespace: str, ports: Sequence[int], node: str | None) -> Obj:
    container: Obj = {
        "name": "app",
        "image": IMAGE_NAME,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-u", "-c", SERVER, *map(str, ports)],
        # Root, for ports below 1024; a test backend, not the product.
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
    }
    if spec.get("containerPorts"):
        container["ports"] = spec["containerPorts"]
    pod_spec: Obj = {"containers": [container], "terminationGracePeriodSeconds": 0,
                     "enableServiceLinks": False, "automountServiceAccountToken": False}
    name = spec["name"]
    if node is not None:
        pod_spec["nodeName"] = node
        name = f"{name}-{node}"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": spec.get("labels", {})},
            "spec": pod_spec}


def pods_per_case(case: Case, nodes: int) -> int:
    return len(case.pods) * (nodes if has_local_service(case) else 1)


class SctpObservers:
    """Raw-socket observers of SCTP INITs inside backend pods."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        state = State.load(cluster.plan.name)
        if state is None:
            raise RuntimeError(f"cluster {cluster.plan.name}: no state file (is it up?)")
        self._state = state
        self._observers: list[NodeAgent] = []

    def _task_pids(self, node: NodePlan) -> dict[str, int]:
        argv = ["ctr", "--address", str(containerd_socket(self._state, node)), "-n", "k8s.io", "tasks", "ls"]
        out = self.cluster.on_node(node.name, argv).stdout
        return {f[0]: int(f[1]) for f in (line.split() for line in out.splitlines()[1:]) if len(f) >= 2}

    def observe(self, pods: Sequence[Obj]) -> None:
        """An observer in the network namespace of every given (running) pod."""
        if not pods:
            return
        pids = {n.name: self._task_pids(n) for n in self.cluster.plan.nodes}
        for pod in pods:
            node = pod["spec"]["nodeName"]
            container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
            where = f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}"
            if container not in pids[node]:
                raise RuntimeError(f"{where}: container {container} has no task in {node}'s containerd")
            enter = ["nsenter", f"--net=/proc/{pids[node][container]}/ns/net", "--"]
            self._observers.append(NodeAgent(where, [], enter=enter))

    def arrived(self, tag: int, timeout: float) -> bool:
        """Whether the INIT with this initiate tag reached any observed pod within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for observer in self._observers:
                seen = observer.take_init(tag)
                if seen is not None:
                    if not seen[2]:
                        raise AssertionError(f"SCTP INIT tag {tag} reached {observer.netns} with a bad checksum")
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def close(self) -> None:
        for observer in self._observers:
            observer.close()
        self._observers = []
