"""The traffic prober: allowed and denied clients probing protected NodePorts on both nodes during a fault.

One `tests.faults.probe_loop` process per client namespace opens a new TCP connection (and sends a
UDP datagram) to each target every 100 ms; every probe is recorded with its wall time, node, source
and outcome. `summarize` turns the records into the two figures of a fault: **leak** (probes from a
denied source that were answered) and **loss** (probes from an allowed source that were not), each
counted outside the windows the test states (e.g. while a just-applied policy is not programmed yet).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from localcluster.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.1
TIMEOUT = 1.0
Window = tuple[float, float]  # wall-clock seconds (time.time()), inclusive
Expect = Literal["allowed", "denied"]


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    node: str
    dst: str
    port: int
    proto: Literal["tcp", "udp"]


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    t: float  # wall time the probe started
    node: str
    source: str  # client name
    expect: Expect
    target: ProbeTarget
    outcome: str  # "answer:<pod>", "timeout", "refused" or "error:<why>"

    @property
    def answered(self) -> bool:
        return self.outcome.startswith("answer:")


@dataclass(frozen=True, slots=True)
class ProbeSummary:
    """What the probes saw: attempts per expectation, leaks and losses outside the stated windows."""

    allowed_attempts: int
    allowed_answered: int
    denied_attempts: int
    leaks: tuple[ProbeRecord, ...]
    losses: tuple[ProbeRecord, ...]
    excused: int  # probes inside a stated window (not counted either way)

    @property
    def leak(self) -> int:
        return len(self.leaks)

    @property
    def loss(self) -> int:
        return len(self.losses)

    def describe(self, limit: int = 5) -> str:
        def show(records: Sequence[ProbeRecord]) -> str:
            return ", ".join(f"{r.t:.1f} {r.source}->{r.node}:{r.target.port}/{r.target.proto}={r.outcome}"
                             for r in records[:limit])
        return (f"allowed {self.allowed_answered}/{self.allowed_attempts} answered, denied {self.denied_attempts} "
                f"probes; leak {self.leak} [{show(self.leaks)}]; loss {self.loss} [{show(self.losses)}]; "
                f"excused {self.excused}")


def _inside(t: float, windows: Iterable[Window]) -> bool:
    return any(lo <= t <= hi for lo, hi in windows)


def summarize(records: Iterable[ProbeRecord], windows: Iterable[Window] = (), since: float = 0.0,
              until: float = float("inf")) -> ProbeSummary:
    """Pure: leak and loss of the records started in [since, until], outside `windows`.

    A probe still in flight when the prober stopped is not recorded, so it never counts as a loss."""
    windows = list(windows)
    chosen = [r for r in records if since <= r.t <= until]
    counted = [r for r in chosen if not _inside(r.t, windows)]
    allowed = [r for r in counted if r.expect == "allowed"]
    denied = [r for r in counted if r.expect == "denied"]
    return ProbeSummary(
        allowed_attempts=len(allowed),
        allowed_answered=sum(r.answered for r in allowed),
        denied_attempts=len(denied),
        leaks=tuple(sorted((r for r in denied if r.answered), key=lambda r: r.t)),
        losses=tuple(sorted((r for r in allowed if not r.answered), key=lambda r: r.t)),
        excused=len(chosen) - len(counted),
    )


def default_targets(cluster: Cluster, port: int = 30080, protos: Sequence[Literal["tcp", "udp"]] = ("tcp", "udp"),
                    ipv6: bool = False) -> list[ProbeTarget]:
    """The protected NodePort on every node, each protocol (IPv4; IPv6 too when asked)."""
    targets = [ProbeTarget(n.name, n.v4, port, proto) for n in cluster.plan.nodes for proto in protos]
    if ipv6:
        targets += [ProbeTarget(n.name, n.v6, port, proto) for n in cluster.plan.nodes for proto in protos]
    return targets


@dataclass
class _Client:
    name: str
    expect: Expect
    proc: subprocess.Popen[str]
    reader: threading.Thread | None = None


@dataclass
class TrafficProber:
    """`with TrafficProber(cluster, allowed="client-a", denied="client-b") as p:` ... `p.summary(...)`.

    Probes run from `start()` (the `with`) until `stop()`; `records` holds every finished probe."""

    cluster: Cluster
    allowed: str = "client-a"
    denied: str = "client-b"
    targets: list[ProbeTarget] = field(default_factory=list)
    interval: float = INTERVAL
    timeout: float = TIMEOUT
    records: list[ProbeRecord] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0
    _clients: list[_Client] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> TrafficProber:
        if not self.targets:
            self.targets = default_targets(self.cluster)
        payload = json.dumps([[t.dst, t.port, t.proto] for t in self.targets])
        for name, expect in ((self.allowed, "allowed"), (self.denied, "denied")):
            netns = self.cluster.plan.client(name).netns
            argv = ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m", "tests.faults.probe_loop",
                    str(self.interval), str(self.timeout)]
            proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            client = _Client(name, "allowed" if expect == "allowed" else "denied", proc)
            self._clients.append(client)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(payload + "\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "ready":
                self.stop()
                raise RuntimeError(f"the probe loop in {netns} did not start")
            client.reader = threading.Thread(target=self._read, args=(client,), daemon=True)
            client.reader.start()
        self.started_at = time.time()
        return self

    def _read(self, client: _Client) -> None:
        assert client.proc.stdout is not None
        for line in client.proc.stdout:
            if not line.startswith("{"):
                continue
            raw = json.loads(line)
            target = self.targets[int(raw["i"])]
            record = ProbeRecord(float(raw["t"]), target.node, client.name, client.expect, target, str(raw["r"]))
            with self._lock:
                self.records.append(record)

    def stop(self) -> None:
        self.stopped_at = self.stopped_at or time.time()
        for client in self._clients:
            if client.proc.stdin is not None and not client.proc.stdin.closed:
                client.proc.stdin.close()
        for client in self._clients:
            try:
                client.proc.wait(timeout=self.timeout + 10)
            except subprocess.TimeoutExpired:
                client.proc.kill()
                client.proc.wait(timeout=10)
            if client.reader is not None:
                client.reader.join(timeout=10)
        self._clients.clear()

    def __enter__(self) -> TrafficProber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[ProbeRecord]:
        with self._lock:
            return list(self.records)

    def summary(self, windows: Iterable[Window] = (), since: float = 0.0, until: float = float("inf")) -> ProbeSummary:
        return summarize(self.snapshot(), windows, since, until)
