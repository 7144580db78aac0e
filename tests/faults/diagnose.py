"""What was going on around a lost or leaked probe, for an assertion message (I/O).

A loss of a few probes after recovery has two very different causes: the product (a rule missing,
a set half-written) or Kubernetes itself (a backend pod restarted; kube-proxy still DNATs to its
old address until its EndpointSlice says so). These helpers record the evidence that tells them
apart: what answered just before and after on the same target, the Service's endpoints over time,
and kube-proxy's log on the node.
"""

from __future__ import annotations

import calendar
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localcluster.cluster import Cluster
from tests.faults.prober import ProbeRecord

_KLOG = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d+)")


def neighbours(records: Sequence[ProbeRecord], losses: Sequence[ProbeRecord], margin: float = 1.5,
               limit: int = 40) -> list[str]:
    """Pure: the probes of the same source and target within `margin` s of each loss, oldest first."""
    keys = {(r.source, r.target) for r in losses}
    times = [r.t for r in losses]
    near = sorted((r for r in records if (r.source, r.target) in keys and any(abs(r.t - t) <= margin for t in times)),
                  key=lambda r: r.t)
    return [f"{r.t:.2f} {r.source}->{r.node}:{r.target.port}/{r.target.proto} {r.outcome}" for r in near[:limit]]


def klog_time(line: str, year: int) -> float | None:
    """Pure: the wall time of a klog line (`I1130 03:36:12.123456 ...`, UTC here), None if it is not one."""
    m = _KLOG.match(line)
    if m is None:
        return None
    month, day, hour, minute, sec, frac = m.groups()
    base = calendar.timegm((year, int(month), int(day), int(hour), int(minute), int(sec), 0, 0, 0))
    return base + float(f"0.{frac}")


def node_log_near(cluster: Cluster, node: str, component: str, times: Sequence[float], margin: float = 3.0,
                  limit: int = 30) -> list[str]:
    """The lines of `component`'s log on `node` (logs/<component>.log) within `margin` s of `times`."""
    path = cluster.dir / node / "logs" / f"{component}.log"
    if not times or not path.exists():
        return []
    year = time.gmtime(min(times)).tm_year
    out: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        t = klog_time(line, year)
        if t is not None and any(abs(t - x) <= margin for x in times):
            out.append(line[:300])
    return out[-limit:]


@dataclass
class SliceRecorder:
    """Polls a Service's EndpointSlices (kubectl) every `interval` s in a thread; keeps each change and its time.

    `with SliceRecorder(cluster, "demo", "echo") as slices:` ... `slices.describe()`."""

    cluster: Cluster
    namespace: str
    service: str
    interval: float = 1.0  # a kubectl process a second: little load beside the fault being measured
    changes: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read(self) -> tuple[str, ...] | None:
        proc = self.cluster.kubectl("-n", self.namespace, "get", "endpointslices", "-l",
                                    f"kubernetes.io/service-name={self.service}", "-o", "json", check=False,
                                    timeout=10)
        if proc.returncode != 0:
            return None
        items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
        return tuple(sorted(
            f"{a} {(e.get('targetRef') or {}).get('name', '?')} ready={(e.get('conditions') or {}).get('ready')}"
            for s in items for e in s.get("endpoints") or [] for a in e.get("addresses", [])))

    def _run(self) -> None:
        last: tuple[str, ...] | None = None
        while not self._stop.is_set():
            try:
                now, seen = time.time(), self._read()
            except Exception:  # the apiserver is down during a fault: keep polling
                seen = None
            if seen is not None and seen != last:
                self.changes.append((now, seen))
                last = seen
            self._stop.wait(self.interval)

    def __enter__(self) -> SliceRecorder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def describe(self) -> list[str]:
        return [f"{t:.2f} {list(seen)}" for t, seen in self.changes]
