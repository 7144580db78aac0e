"""The program that answers and sends probes inside a test network namespace (I/O).

`python -m tests.probe_agent node PORT...` (in the node namespace): TCP accept (sends b"ok", closes)
and UDP echo on every PORT for IPv4 and IPv6, plus raw sockets (protocol 132) that report every SCTP
INIT reaching the node as one JSON line `{"sctp": [source, destination port, initiate tag, checksum ok]}`.
Prints `{"ready": true}` first.

`python -m tests.probe_agent client` (in the client namespace): reads one JSON request per line,
`{"id", "proto": "tcp"|"udp"|"sctp", "src", "dst", "port", "timeout", "tag"}`, and answers each, in
parallel, with `{"id", "result"}`: `connected`/`accepted`/`refused`/`timeout` for TCP, `answered`/`timeout`
for UDP, `sent` for SCTP (whether it arrived is the node agent's to say). Every probe binds its source.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import selectors
import signal
import socket
import sys
import threading
from typing import Any

from tests.sctp import IPPROTO_SCTP, build_init, parse_init, strip_ipv4_header

PR_SET_PDEATHSIG = 1


def _emit(lock: threading.Lock, obj: dict[str, Any]) -> None:
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def _dual_stack(kind: socket.SocketKind, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.setblocking(False)
    return s


def serve_node(ports: list[int]) -> None:
    lock = threading.Lock()
    sel = selectors.DefaultSelector()
    for port in ports:
        tcp = _dual_stack(socket.SOCK_STREAM, port)
        tcp.listen(512)
        sel.register(tcp, selectors.EVENT_READ, "tcp")
        sel.register(_dual_stack(socket.SOCK_DGRAM, port), selectors.EVENT_READ, "udp")
    for family in (socket.AF_INET, socket.AF_INET6):
        raw = socket.socket(family, socket.SOCK_RAW, IPPROTO_SCTP)
        raw.setblocking(False)
        sel.register(raw, selectors.EVENT_READ, "sctp4" if family == socket.AF_INET else "sctp6")
    _emit(lock, {"ready": True})
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    conn.setblocking(True)
                    conn.settimeout(1.0)
                    try:
                        conn.sendall(b"ok")
                    finally:
                        conn.close()
                elif key.data == "udp":
                    data, addr = sock.recvfrom(2048)
                    sock.sendto(data, addr)
                else:
                    data, addr = sock.recvfrom(65535)
                    init = parse_init(strip_ipv4_header(data) if key.data == "sctp4" else data)
                    if init is not None:
                        _emit(lock, {"sctp": [addr[0], init.dst_port, init.initiate_tag, init.checksum_ok]})
            except (BlockingIOError, InterruptedError, ConnectionError, TimeoutError):
                continue


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def probe(request: dict[str, Any]) -> str:
    proto, src, dst = request["proto"], request["src"], request["dst"]
    port, timeout = int(request["port"]), float(request["timeout"])
    fam = _family(dst)
    if proto == "sctp":
        with socket.socket(fam, socket.SOCK_RAW, IPPROTO_SCTP) as s:
            s.bind((src, 0))
            sport = 1024 + secrets.randbelow(64000)
            s.sendto(build_init(sport, port, int(request["tag"])), (dst, 0))
        return "sent"
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(fam, kind) as s:
        s.settimeout(timeout)
        s.bind((src, 0))
        try:
            if proto == "tcp":
                s.connect((dst, port))
                try:
                    return "connected" if s.recv(2) == b"ok" else "refused"
                except TimeoutError:
                    return "accepted"  # the handshake completed; this server speaks only when spoken to
            token = secrets.token_bytes(8)
            s.connect((dst, port))  # connected: an ICMP port unreachable surfaces as ConnectionRefusedError
            s.send(token)
            while True:
                if s.recv(64) == token:
                    return "answered"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"


def serve_client() -> None:
    lock = threading.Lock()

    def answer(request: dict[str, Any]) -> None:
        try:
            result = probe(request)
        except OSError as exc:
            result = f"error: {exc}"
        _emit(lock, {"id": request["id"], "result": result})

    _emit(lock, {"ready": True})
    for line in sys.stdin:
        if line.strip():
            threading.Thread(target=answer, args=(json.loads(line),), daemon=True).start()


def _die_with_parent() -> None:
    # `ip netns exec` execs us in place, so our parent is the test process: if it dies (even by
    # SIGKILL), the kernel kills us too, and nothing of ours keeps the namespace busy.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str]) -> int:
    _die_with_parent()
    if argv[:1] == ["node"]:
        serve_node([int(p) for p in argv[1:]])
    elif argv[:1] == ["client"]:
        serve_client()
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main(sys.argv[1:]))
