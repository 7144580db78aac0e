"""Test nodes in network namespaces: node + client (+ remote) netns, listeners, clients, dataplane CLI (I/O)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from enforcer.backend import RunResult
from enforcer.plan import DesiredState, decode_state, encode_state

REPO = Path(__file__).resolve().parent.parent
NS_PREFIX = "npg-"

NODE_V4 = ("198.51.100.1", "203.0.113.1")
NODE_V6 = ("2001:db8:1::1", "2001:db8:2::1")
CLIENT_A4, CLIENT_B4 = "198.51.100.10", "203.0.113.10"
CLIENT_A6, CLIENT_B6 = "2001:db8:1::10", "2001:db8:2::10"
# A third namespace behind the node, reached by forwarding: a non-local destination.
REMOTE_NODE_SIDE, REMOTE_ADDR = "192.0.2.1", "192.0.2.2"

Result = Literal["connected", "refused", "timeout"]
Proto = Literal["tcp", "udp"]

_LISTENER = r"""
import socket, sys, threading
port = int(sys.argv[1])
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(128)
    ready.set()
    while True:
        c, _ = s.accept()
        try: c.sendall(b"ok")
        finally: c.close()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    ready.set()
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)
ready = threading.Event()
for f in (tcp, udp):
    ready.clear(); threading.Thread(target=f, daemon=True).start(); ready.wait()
print("ready", flush=True)
threading.Event().wait()
"""

_CLIENT = r"""
import socket, sys
src, dst, port, proto, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
s.bind((src, 0))
try:
    if proto == "tcp":
        s.connect((dst, port)); s.recv(2)
    else:
        s.sendto(b"ping", (dst, port)); s.recvfrom(64)
    print("connected")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
"""


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True, timeout: float = 120) -> RunResult:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=timeout)
    result = RunResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return result


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


@dataclass
class Node:
    """A node netns with one veth to a client netns (all client addresses) and one to a remote netns."""

    node_ns: str
    client_ns: str
    remote_ns: str
    lock_path: str
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    # --- commands inside the namespaces ---------------------------------------------------

    def run(self, argv: Sequence[str], stdin: str | None = None, check: bool = True) -> RunResult:
        """Run a command inside the node netns."""
        return run(["ip", "netns", "exec", self.node_ns, *argv], stdin, check)

    def runner(self, argv: Sequence[str], stdin: str | None = None) -> RunResult:
        """A CommandRunner for enforcer code executed from the test process: everything in the node netns."""
        return self.run(argv, stdin, check=False)

    def listen(self, port: int, where: Literal["node", "remote"] = "node") -> None:
        """TCP accept + UDP echo on `port` (IPv4 and IPv6) inside the node (or remote) netns."""
        ns = self.node_ns if where == "node" else self.remote_ns
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _LISTENER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError(f"listener on port {port} in {ns} did not start")

    def connect(self, src: str, dst: str, port: int, proto: Proto = "tcp", timeout: float = 1.0) -> Result:
        """One new connection from the client netns, bound to source `src`."""
        out = run(
            ["ip", "netns", "exec", self.client_ns, sys.executable, "-c", _CLIENT,
             src, dst, str(port), proto, str(timeout)],
            timeout=timeout + 30,
        ).stdout.strip()
        assert out in ("connected", "refused", "timeout"), out
        return out  # type: ignore[return-value]

    def cli(self, *args: str, backend: str, check: bool = True) -> RunResult:
        """Run `python -m enforcer.dataplane_cli` inside the node netns (python-iptables needs the netns)."""
        return run(
            ["ip", "netns", "exec", self.node_ns, sys.executable, "-m", "enforcer.dataplane_cli", *args,
             "--backend", backend, "--lock-path", self.lock_path],
            check=check,
        )

    def spawn_cli(self, *args: str, backend: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.node_ns, sys.executable, "-m", "enforcer.dataplane_cli", *args,
             "--backend", backend, "--lock-path", self.lock_path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._procs.append(proc)
        return proc

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.node_ns, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self._procs.append(proc)
        return proc

    # --- snapshots ------------------------------------------------------------------------

    def iptables_save(self, backend: str) -> str:
        """Both families' rules, counters and comments stripped, so snapshots compare by content."""
        out = []
        for tool in (f"iptables-{backend}-save", f"ip6tables-{backend}-save"):
            for line in self.run([tool]).stdout.splitlines():
                if line.startswith("#"):
                    continue
                if line.startswith(":"):
                    line = line.rsplit(" ", 1)[0]  # drop [packets:bytes]
                out.append(f"{tool}: {line}")
        return "\n".join(out)

    def ipset_save(self) -> str:
        """`ipset save` without the random initval and the kernel's current hashsize, members sorted.

        The kernel doubles a hash set's hashsize as it grows and never shrinks it, so a set filled
        member by member and one built in one restore differ there while holding the same members.
        """
        lines = []
        for line in self.run(["ipset", "save"]).stdout.splitlines():
            tokens = line.split()
            for option in ("initval", "hashsize"):
                if tokens[:1] == ["create"] and option in tokens:
                    i = tokens.index(option)
                    del tokens[i : i + 2]
            lines.append(" ".join(tokens))
        return "\n".join(sorted(lines))

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for ns in (self.client_ns, self.remote_ns, self.node_ns):
            # Anything still running inside (a child of a killed `ip netns exec`) would keep veths alive.
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns], check=False)


class NetnsDataplane:
    """One long-lived enforcer Dataplane (`dataplane_cli serve`) inside a node netns, driven line by line."""

    def __init__(self, node: Node, backend: str, state_dir: Path, *extra: str) -> None:
        self.node = node
        self.backend = backend
        self.state_dir = state_dir
        self._n = 0
        self._extra = extra
        self._proc: subprocess.Popen[str] | None = None

    def _ask(self, line: str) -> dict[str, object]:
        if self._proc is None:  # started on first use, so a test can only write state files
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.node.node_ns, sys.executable, "-m", "enforcer.dataplane_cli", "serve",
                 "--backend", self.backend, "--lock-path", self.node.lock_path, *self._extra],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            self.node._procs.append(self._proc)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        answer: dict[str, object] = json.loads(self._proc.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"dataplane {line!r}: {answer['error']}")
        return answer

    def write_state(self, state: DesiredState) -> Path:
        self._n += 1
        path = self.state_dir / f"state-{self._n}.json"
        path.write_text(encode_state(state), encoding="utf-8")
        return path

    def sync(self, state: DesiredState) -> dict[str, object]:
        return self._ask(f"sync {self.write_state(state)}")

    def installed(self) -> DesiredState:
        return decode_state(json.dumps(self._ask("installed")["state"]))

    def counters(self) -> dict[tuple[int, str, int, str], int]:
        """The drop counters: (family, protocol, port, mode) -> packets."""
        rows = self._ask("counters")["counters"]
        assert isinstance(rows, list)
        return {(r["family"], r["protocol"], r["port"], r["mode"]): r["packets"] for r in rows}

    def cleanup(self) -> None:
        self._ask("cleanup")


@contextlib.contextmanager
def make_node(lock_path: str = "/run/xtables.lock") -> Iterator[Node]:
    """Create the namespaces and links; always delete them (and our processes) on exit."""
    tag = secrets.token_hex(3)
    node = Node(f"{NS_PREFIX}node-{tag}", f"{NS_PREFIX}cli-{tag}", f"{NS_PREFIX}rem-{tag}", lock_path)
    try:
        for ns in (node.node_ns, node.client_ns, node.remote_ns):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Created inside the node netns (`ip -n`) with the peer placed straight into the other netns:
        # no link ever exists in the root namespace.
        run(["ip", "-n", node.node_ns, "link", "add", "to-cli", "type", "veth", "peer", "name", "eth0",
             "netns", node.client_ns])
        run(["ip", "-n", node.node_ns, "link", "add", "to-rem", "type", "veth", "peer", "name", "eth0",
             "netns", node.remote_ns])
        for addr in NODE_V4:
            run(["ip", "-n", node.node_ns, "addr", "add", f"{addr}/24", "dev", "to-cli"])
        for addr in NODE_V6:
            run(["ip", "-n", node.node_ns, "addr", "add", f"{addr}/64", "dev", "to-cli", "nodad"])
        run(["ip", "-n", node.node_ns, "addr", "add", f"{REMOTE_NODE_SIDE}/24", "dev", "to-rem"])
        for addr in (CLIENT_A4, CLIENT_B4):
            run(["ip", "-n", node.client_ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        for addr in (CLIENT_A6, CLIENT_B6):
            run(["ip", "-n", node.client_ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"])
        run(["ip", "-n", node.remote_ns, "addr", "add", f"{REMOTE_ADDR}/24", "dev", "eth0"])
        for ns, dev in ((node.node_ns, "to-cli"), (node.node_ns, "to-rem"), (node.client_ns, "eth0"),
                        (node.remote_ns, "eth0")):
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", node.client_ns, "route", "add", "192.0.2.0/24", "via", NODE_V4[0]])
        run(["ip", "-n", node.remote_ns, "route", "add", "default", "via", REMOTE_NODE_SIDE])
        run(["ip", "netns", "exec", node.node_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        yield node
    finally:
        node.close()
