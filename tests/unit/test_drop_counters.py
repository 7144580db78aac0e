"""Drop counters, pure parts: parsing the kernel's counter sets, monotonic totals, the bounded
audit log and the Prometheus rendering (through prometheus_client's real exposition)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from enforcer.counters import DropKey, DropTotals, audit_log_lines, drop_key, increases, parse_counter_save
from enforcer.drops import DropCollector, DropReader, log_audit_forever
from enforcer.loop import EnforcerMetrics

SAVE = """create npg-4-dropped hash:ip,port family inet hashsize 1024 maxelem 262144 counters bucketsize 12
add npg-4-dropped 198.51.100.11,tcp:30080 packets 3 bytes 180
add npg-4-dropped 203.0.113.1,tcp:30080 packets 2 bytes 120
add npg-4-dropped 198.51.100.11,sctp:30090 packets 1 bytes 64
create npg-6-audited hash:ip,port family inet6 hashsize 1024 maxelem 262144 counters bucketsize 12
add npg-6-audited 2001:db8::11,udp:30081 packets 7 bytes 700
add npg-4-allow 198.51.100.0/24,tcp:30080
add npg-4-dropped garbage
"""


def test_parse_and_key() -> None:
    raw = parse_counter_save(SAVE)
    assert raw == {
        ("npg-4-dropped", "198.51.100.11,tcp:30080"): 3,
        ("npg-4-dropped", "203.0.113.1,tcp:30080"): 2,
        ("npg-4-dropped", "198.51.100.11,sctp:30090"): 1,
        ("npg-6-audited", "2001:db8::11,udp:30081"): 7,
    }
    assert drop_key("npg-6-audited", "2001:db8::11,udp:30081") == DropKey(6, "UDP", 30081, "audit")
    assert drop_key("npg-4-allow", "198.51.100.0/24,tcp:30080") is None
    assert drop_key("npg-4-dropped", "198.51.100.11,icmp:0") is None


def test_totals_sum_addresses_and_never_go_down() -> None:
    totals = DropTotals()
    first = totals.update(parse_counter_save(SAVE))
    assert first == {
        DropKey(4, "TCP", 30080, "enforce"): 5,
        DropKey(4, "SCTP", 30090, "enforce"): 1,
        DropKey(6, "UDP", 30081, "audit"): 7,
    }
    # 2 more on one address; the set of the other family was destroyed and recreated (reset to 1).
    later = {
        ("npg-4-dropped", "198.51.100.11,tcp:30080"): 5,
        ("npg-4-dropped", "203.0.113.1,tcp:30080"): 2,
        ("npg-4-dropped", "198.51.100.11,sctp:30090"): 1,
        ("npg-6-audited", "2001:db8::11,udp:30081"): 1,
    }
    second = totals.update(later)
    assert second[DropKey(4, "TCP", 30080, "enforce")] == 7
    assert second[DropKey(6, "UDP", 30081, "audit")] == 8
    # The member vanishes (set destroyed) and comes back: counted from its new value.
    totals.update({})
    third = totals.update({("npg-6-audited", "2001:db8::11,udp:30081"): 2})
    assert third[DropKey(6, "UDP", 30081, "audit")] == 10 and third == totals.totals()
    assert increases(second, third) == {DropKey(6, "UDP", 30081, "audit"): 2}


def test_audit_log_is_bounded_and_most_hit_first() -> None:
    grown = {DropKey(4, "TCP", 30000 + i, "audit"): i for i in range(1, 31)}
    grown[DropKey(4, "TCP", 31000, "enforce")] = 99  # drops are in the metric, not this log
    lines, more = audit_log_lines(grown, 20)
    assert len(lines) == 20 and more == 10
    assert lines[0] == (DropKey(4, "TCP", 30030, "audit"), 30) and all(k.mode == "audit" for k, _ in lines)


def test_metric_rendering() -> None:
    metrics = EnforcerMetrics()
    metrics.watch_drops(DropReader(lambda: SAVE))
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE nodeport_guard_dropped_packets_total counter" in text
    assert (
        'nodeport_guard_dropped_packets_total{family="IPv4",mode="enforce",nodeport="30080",protocol="TCP"} 5.0'
        in text
    )
    ipv6 = 'nodeport_guard_dropped_packets_total{family="IPv6",mode="audit",nodeport="30081",protocol="UDP"} 7.0'
    assert ipv6 in text
    assert "nodeport_guard_drop_counter_read_errors_total 0.0" in text


def test_a_failed_read_is_counted_and_the_scrape_still_answers() -> None:
    def broken() -> str:
        raise RuntimeError("ipset: no such command")

    registry = CollectorRegistry()
    registry.register(DropCollector(DropReader(broken)))
    text = generate_latest(registry).decode()
    assert "nodeport_guard_drop_counter_read_errors_total 1.0" in text
    assert "nodeport_guard_dropped_packets_total{" not in text


def test_audit_logger_logs_growth_of_audited_ports(caplog: object) -> None:
    reads = iter(
        [
            "add npg-4-audited 198.51.100.11,tcp:30080 packets 1 bytes 60\n",
            "add npg-4-audited 198.51.100.11,tcp:30080 packets 4 bytes 240\n",
        ]
    )
    stop = threading.Event()
    seen: list[dict[str, object]] = []

    def read_text() -> str:
        try:
            return next(reads)
        except StopIteration:
            stop.set()
            return "add npg-4-audited 198.51.100.11,tcp:30080 packets 4 bytes 240\n"

    import logging

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append({"msg": record.getMessage(), "connections": getattr(record, "connections", None)})

    handler = Capture()
    logging.getLogger("enforcer.drops").addHandler(handler)
    try:
        log_audit_forever(DropReader(read_text), stop, period=0.01)
    finally:
        logging.getLogger("enforcer.drops").removeHandler(handler)
    assert {"msg": "audit: would have dropped new connections", "connections": 3} in seen
