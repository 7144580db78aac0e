"""A client that opens a new connection to every target every INTERVAL seconds until stdin closes (I/O).

Run inside a client namespace by tests/faults/prober.py:
`nsenter --net=/run/netns/<client> python -m tests.faults.probe_loop INTERVAL TIMEOUT`, then one JSON
line on stdin: the targets `[[dst, port, proto], ...]`. It prints `ready`, then one JSON line per
finished probe `{"t": <wall time it started>, "i": <target index>, "r": <result>}` (results as
localcluster.probe.probe gives them), and `done` after stdin closed and every probe finished.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from localcluster.probe import Target, probe

FIRST_PORT, PORTS = 10000, 50000  # source ports 10000-59999, in turn


def source_ports(now: float, per_second: float) -> Iterator[int]:
    """Pure: source ports in turn, starting where a loop at `per_second` ports a second since the
    epoch would be, so the loops of successive tests continue the cycle instead of restarting it:
    a port comes back only after PORTS / per_second seconds (625 s at 80 a second), long after the
    conntrack entries of its last use (120 s at most for a SYN or TIME_WAIT) are gone. A reused
    4-tuple would ride a node's old entry: after an outage, to a backend that no longer exists."""
    return (FIRST_PORT + (int(now * per_second) + i) % PORTS for i in itertools.count())


def run(interval: float, timeout: float) -> int:
    raw = json.loads(sys.stdin.readline())
    targets = [Target(str(d), int(p), "udp" if proto == "udp" else "tcp", timeout) for d, p, proto in raw]
    ports = source_ports(time.time(), len(targets) / interval)
    stop = threading.Event()
    out = threading.Lock()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    def one(index: int, started: float, source_port: int) -> None:
        result = probe(targets[index], source_port)
        line = json.dumps({"t": round(started, 4), "i": index, "r": result})
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    # Every in-flight probe holds a thread for up to TIMEOUT: size the pool for that.
    workers = max(8, int(len(targets) * (timeout / interval + 2)))
    print("ready", flush=True)
    next_tick = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        while not stop.is_set():
            now = time.time()
            for i in range(len(targets)):
                pool.submit(one, i, now, next(ports))
            next_tick += interval
            stop.wait(max(0.0, next_tick - time.monotonic()))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(float(sys.argv[1]), float(sys.argv[2])))
