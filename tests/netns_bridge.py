"""A TCP relay from a loopback port inside a network namespace to a loopback port of the root namespace.

A test node is a network namespace: an enforcer running in it (as it runs on a real node)
must reach the local kube-apiserver, which listens on the root namespace's 127.0.0.1. The
relay opens its listening socket inside the node namespace (sockets keep the namespace they
were created in) and its upstream connections in the root namespace, so nothing in the root
namespace's network configuration changes.

Run: `python -m tests.netns_bridge NETNS LISTEN_PORT TARGET_PORT` (prints "ready" when listening).
The relay dies with the process that started it (PR_SET_PDEATHSIG), so a test run that ends
or is killed never leaves one behind, orphaned, after its namespace is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

from localcluster.relay import serve

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl: nobody would signal us
        os._exit(0)


def main(argv: list[str]) -> int:
    _die_with_parent()
    netns, listen_port, target_port = argv[0], int(argv[1]), int(argv[2])
    root = os.open("/proc/self/ns/net", os.O_RDONLY)
    node = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    _setns(node)
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=64)
    _setns(root)
    os.close(node)
    os.close(root)
    print("ready", flush=True)
    serve(listener, "127.0.0.1", target_port)  # the same relay loop as the local cluster's
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
