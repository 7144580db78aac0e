"""The fault prober's source ports: no 4-tuple comes back while a node may still hold its conntrack entry."""

from __future__ import annotations

import itertools

from tests.faults.probe_loop import FIRST_PORT, PORTS, source_ports


def test_ports_stay_in_range_and_do_not_repeat_within_a_cycle() -> None:
    ports = list(itertools.islice(source_ports(1_796_000_000.0, 80.0), PORTS + 5))
    assert all(FIRST_PORT <= p < FIRST_PORT + PORTS for p in ports)
    assert len(set(ports[:PORTS])) == PORTS
    assert ports[PORTS:] == ports[:5]  # the cycle, after PORTS ports


def test_the_next_loop_continues_the_cycle_instead_of_restarting_it() -> None:
    """A second loop started 60 s later (as the next fault test) uses none of the ports the first
    one used in its last 120 s (the longest SYN_SENT / TIME_WAIT conntrack timeout)."""
    first = list(itertools.islice(source_ports(1_796_000_000.0, 80.0), 80 * 60))
    second = list(itertools.islice(source_ports(1_796_000_060.0, 80.0), 80 * 500))  # its next 500 s
    assert not set(first) & set(second)
