"""HTTPS load client for the admission benchmark, run as its own process (I/O).

  closed: each connection sends its next request as soon as the previous answer arrived
          (keep-alive); throughput = answers completed within the measuring window / window.
  open:   requests are scheduled at a fixed rate whatever the server does; latency is measured
          from the scheduled send time, so a slow answer also delays (and is charged to) the
          requests queued behind it (no coordinated omission).

Bodies are AdmissionReview JSON documents, one per line of --bodies, sent in turn. Prints one
JSON object: completed, errors, window seconds and latencies (ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies_ms: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    first_error: str = ""

    def add(self, latency: float | None, error: str = "") -> None:
        with self.lock:
            if latency is None:
                self.errors += 1
                self.first_error = self.first_error or error
            else:
                self.completed += 1
                self.latencies_ms.append(latency * 1000)


def _connect(url: urllib.parse.SplitResult, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port, context=context, timeout=30)
    conn.connect()
    return conn


def _post(conn: http.client.HTTPSConnection, path: str, body: bytes) -> str:
    """'' on success, else what went wrong (status or missing 'allowed')."""
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        return f"HTTP {resp.status}: {data[:200]!r}"
    if b'"allowed": true' not in data and b'"allowed":true' not in data:
        return f"not allowed: {data[:300]!r}"
    return ""


def closed_worker(
    url: urllib.parse.SplitResult,
    context: ssl.SSLContext,
    bodies: Sequence[bytes],
    offset: int,
    start: float,
    window: tuple[float, float],
    tally: Tally,
) -> None:
    conn = _connect(url, context)
    i = offset
    while True:
        sent = time.perf_counter()
        if sent >= start + window[1]:
            break
        try:
            error = _post(conn, url.path, bodies[i % len(bodies)])
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = _connect(url, context)
        done = time.perf_counter()
        i += 1
        # Count only answers completed inside the window: warm-up answers are excluded.
        if start + window[0] <= done <= start + window[1]:
            tally.add(None if error else done - sent, error)
    conn.close()


def open_worker(
    url: urllib.parse.SplitResult,
    context: ssl.SSLContext,
    bodies: Sequence[bytes],
    slots: Sequence[float],
    start: float,
    warmup: float,
    tally: Tally,
) -> None:
    conn = _connect(url, context)
    for n, due in enumerate(slots):
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        try:
            error = _post(conn, url.path, bodies[n % len(bodies)])
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = _connect(url, context)
        done = time.perf_counter()
        if due >= start + warmup:
            tally.add(None if error else done - due, error)
    conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--url", required=True, help="https://127.0.0.1:PORT/mutate")
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0, help="measuring window, seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window")
    parser.add_argument("--rate", type=float, default=200.0, help="open mode: requests per second")
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    context = ssl.create_default_context(cafile=args.cafile)
    bodies = [line.encode() for line in args.bodies.read_text(encoding="utf-8").splitlines() if line.strip()]
    tally = Tally()
    start = time.perf_counter() + 0.2  # every connection is up before the first scheduled send
    threads = []
    for k in range(args.connections):
        if args.mode == "closed":
            target_args = (url, context, bodies, k * 7919, start, (args.warmup, args.warmup + args.duration), tally)
            thread = threading.Thread(target=closed_worker, args=target_args)
        else:
            total = int((args.warmup + args.duration) * args.rate)
            slots = [start + n / args.rate for n in range(k, total, args.connections)]
            thread = threading.Thread(target=open_worker, args=(url, context, bodies, slots, start, args.warmup, tally))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join()
    out = {
        "mode": args.mode,
        "completed": tally.completed,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "window_seconds": args.duration,
        "connections": args.connections,
        "latencies_ms": sorted(tally.latencies_ms),
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
