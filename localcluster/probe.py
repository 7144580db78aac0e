"""Real packets from a client namespace: one TCP connect or UDP exchange per target, or a steady probe (I/O).

Run inside a client namespace (`nsenter --net=/run/netns/<client> python -m localcluster.probe`):

- `once`: reads a JSON list of targets `{"dst", "port", "proto", "timeout"}` on stdin, probes them
  all concurrently, prints a JSON list of results: `"answer:<text>"` (what the backend pod said,
  its name), `"timeout"` or `"refused"`;
- `steady DST PORT PROTO INTERVAL`: a new connection every INTERVAL seconds until stdin closes,
  then prints `{"attempts": n, "answered": [[t, text], ...]}`.

`probe_many` and `SteadyProbe` run these from the root namespace for the tests and the demo.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

Proto = Literal["tcp", "udp"]


@dataclass(frozen=True, slots=True)
class Target:
    dst: str
    port: int
    proto: Proto = "tcp"
    timeout: float = 1.0


def probe(target: Target, source_port: int | None = None) -> str:
    """One connection (TCP) or exchange (UDP). `source_port`: bind it first (the kernel picks one
    if it is taken), so a steady prober never reuses a recent 4-tuple and with it a node's
    conntrack entry (a timed-out SYN's entry lives 120 s and keeps its DNAT to the old backend)."""
    family = socket.AF_INET6 if ":" in target.dst else socket.AF_INET
    kind = socket.SOCK_STREAM if target.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(target.timeout)
        if source_port is not None:
            with contextlib.suppress(OSError):  # taken: an unbound socket gets a free port from the kernel
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))  # noqa: S104 - a client
        try:
            if target.proto == "tcp":
                s.connect((target.dst, target.port))
                data = s.recv(256)
            else:
                s.sendto(b"ping", (target.dst, target.port))
                data, _ = s.recvfrom(256)
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"error:{exc.strerror or exc}"
    return "answer:" + data.decode(errors="replace").strip()


def _once() -> int:
    targets = [Target(**t) for t in json.loads(sys.stdin.read())]
    with ThreadPoolExecutor(max(1, min(32, len(targets)))) as pool:
        results = list(pool.map(probe, targets))
    print(json.dumps(results))
    return 0


def _steady(dst: str, port: int, proto: Proto, interval: float) -> int:
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    attempts, answered = 0, []
    started = time.monotonic()
    print("ready", flush=True)
    while not stop.is_set():
        tick = time.monotonic()
        result = probe(Target(dst, port, proto, timeout=interval))
        attempts += 1
        if result.startswith("answer:"):
            answered.append([round(tick - started, 3), result])
        stop.wait(max(0.0, interval - (time.monotonic() - tick)))
    print(json.dumps({"attempts": attempts, "answered": answered}), flush=True)
    return 0


def probe_many(netns: str, targets: list[Target], python: str = sys.executable) -> list[str]:
    """Probe every target from inside `netns`, concurrently; results in the same order."""
    payload = json.dumps([{"dst": t.dst, "port": t.port, "proto": t.proto, "timeout": t.timeout} for t in targets])
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", python, "-m", "localcluster.probe", "once"],
        input=payload, capture_output=True, text=True, check=True, timeout=60,
    )
    results: list[str] = json.loads(proc.stdout)
    return results


class SteadyProbe:
    """A client probing one target every `interval` seconds from `netns` while the `with` block runs."""

    def __init__(self, netns: str, target: Target, interval: float = 0.1) -> None:
        self._argv = [
            "nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m", "localcluster.probe", "steady",
            target.dst, str(target.port), target.proto, str(interval),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.result: dict[str, Any] = {}

    def __enter__(self) -> SteadyProbe:
        self._proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("steady probe did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=30)
        self.result = json.loads(out.strip().splitlines()[-1])

    @property
    def attempts(self) -> int:
        return int(self.result["attempts"])

    @property
    def answered(self) -> list[list[Any]]:
        return list(self.result["answered"])


def main(argv: list[str]) -> int:
    if argv[:1] == ["once"]:
        return _once()
    if argv[:1] == ["steady"] and len(argv) == 5:
        return _steady(argv[1], int(argv[2]), argv[3], float(argv[4]))  # type: ignore[arg-type]
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
