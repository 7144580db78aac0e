"""A TCP relay from a loopback port of the root network namespace to an address inside one of our namespaces.

kubectl, `make deploy` and the tests run in the root namespace; the apiserver listens inside
the control-plane namespace, which the root namespace has no route to (and must not get one).
The listening socket is made in the root namespace, then the relay moves itself into the
target namespace, so every upstream connection is made there. No route, link or rule changes.

Run: `python -m localcluster.relay LISTEN_PORT NETNS TARGET_HOST TARGET_PORT` (prints "ready").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (e.g. /run/netns/NAME)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(listener: socket.socket, host: str, port: int) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((host, port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    listen_port, netns, host, port = int(argv[0]), argv[1], argv[2], int(argv[3])
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=128)
    enter_netns(f"/run/netns/{netns}")
    print("ready", flush=True)
    serve(listener, host, port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
