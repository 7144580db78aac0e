"""Drop counters at the edges: the Prometheus collector and the bounded would-drop log (I/O).

Both read the kernel through one `DropReader` (enforcer/counters.py folds the reads into
monotonic totals). A scrape reads the kernel once: the counter sets are sparse (a member per node
address and port that saw a denied connection), so its cost follows the ports that were hit, not
the ports protected (bench `drop_scrape`, bench/RESULTS.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from enforcer.counters import DropKey, DropTotals, audit_log_lines, increases, parse_counter_save

logger = logging.getLogger(__name__)

DROPPED_METRIC = "nodeport_guard_dropped_packets"  # exposed as nodeport_guard_dropped_packets_total
_FAMILY_LABEL = {4: "IPv4", 6: "IPv6"}


class DropReader:
    """Reads the kernel's counter sets (`read_text`, e.g. Dataplane.read_counters) into totals."""

    def __init__(self, read_text: Callable[[], str], exclude_ports: frozenset[int] = frozenset()) -> None:
        self._read_text = read_text
        self._exclude = exclude_ports  # the canary's NodePort: its probes are no user's drops
        self._totals = DropTotals()
        self.last_seconds = 0.0

    def __call__(self) -> dict[DropKey, int]:
        started = time.perf_counter()
        totals = self._totals.update(parse_counter_save(self._read_text()))
        self.last_seconds = time.perf_counter() - started
        if self._exclude:
            return {k: v for k, v in totals.items() if k.port not in self._exclude}
        return totals


def render_samples(totals: Mapping[DropKey, int]) -> CounterMetricFamily:
    """The counter family for `totals`, one sample per (nodeport, protocol, family, mode)."""
    family = CounterMetricFamily(
        DROPPED_METRIC,
        "New connections to a protected NodePort from a source its verdict denies, per NodePort: "
        "dropped (mode=enforce) or counted and let through (mode=audit). Counted per packet: a TCP "
        "client retrying a dropped SYN counts once per attempt",
        labels=["nodeport", "protocol", "family", "mode"],
    )
    for key in sorted(totals):
        family.add_metric([str(key.port), key.protocol, _FAMILY_LABEL[key.family], key.mode], totals[key])
    return family


class DropCollector(Collector):
    """Reads the counters at scrape time; a failed read exposes no sample and counts an error."""

    def __init__(self, read: DropReader) -> None:
        self._read = read
        self._errors = 0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            totals = self._read()
        except Exception as exc:  # a scrape must answer; the error is counted and logged
            self._errors += 1
            logger.warning("could not read the drop counters", extra={"error": str(exc)[:300]})
            totals = None
        if totals is not None:
            yield render_samples(totals)
        errors = CounterMetricFamily(
            "nodeport_guard_drop_counter_read_errors", "Failed reads of the kernel's drop counters"
        )
        errors.add_metric([], self._errors)
        yield errors
        seconds = GaugeMetricFamily(
            "nodeport_guard_drop_counter_read_seconds", "Duration of the last read of the kernel's drop counters"
        )
        seconds.add_metric([], self._read.last_seconds)
        yield seconds


def log_audit_forever(read: DropReader, stop: threading.Event, period: float, limit: int = 20) -> None:
    """Every `period` seconds, log the audited NodePorts whose would-drop count grew (at most
    `limit` lines, the most hit first, then one line saying how many more): bounded whatever the traffic."""
    before: dict[DropKey, int] | None = None
    while not stop.wait(period if before is not None else 0.0):
        try:
            now = read()
        except Exception as exc:
            logger.warning("could not read the drop counters", extra={"error": str(exc)[:300]})
            continue
        if before is not None:
            lines, more = audit_log_lines(increases(before, now), limit)
            for key, grown in lines:
                logger.warning(
                    "audit: would have dropped new connections",
                    extra={
                        "nodeport": key.port,
                        "protocol": key.protocol,
                        "family": _FAMILY_LABEL[key.family],
                        "connections": grown,
                        "seconds": period,
                    },
                )
            if more:
                logger.warning("audit: more NodePorts would have dropped", extra={"nodeports": more, "seconds": period})
        before = now
