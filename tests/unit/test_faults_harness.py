"""The pure parts of the faults tier's harness: leak/loss accounting, churn blocks, flags, the result table."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

from localcluster.faults import with_flags
from tests.faults.churn import churn_block
from tests.faults.prober import Expect, ProbeRecord, ProbeTarget, summarize
from tests.faults.results import FaultResult, ResultTable

TARGET = ProbeTarget("node1", "198.51.100.11", 30080, "tcp")
CLIENTS = [ipaddress.ip_address("198.51.100.70"), ipaddress.ip_address("203.0.113.10"),
           ipaddress.ip_address("2001:db8:a::70"), ipaddress.ip_address("2001:db8:b::10")]


def record(t: float, expect: Expect, outcome: str) -> ProbeRecord:
    source = "client-a" if expect == "allowed" else "client-b"
    return ProbeRecord(t, "node1", source, expect, TARGET, outcome)


def test_leak_is_an_answered_denied_probe_and_loss_an_unanswered_allowed_one() -> None:
    records = [record(1, "allowed", "answer:pod"), record(2, "allowed", "timeout"), record(3, "allowed", "refused"),
               record(4, "denied", "timeout"), record(5, "denied", "answer:pod")]
    s = summarize(records)
    assert (s.leak, s.loss, s.allowed_attempts, s.allowed_answered, s.denied_attempts) == (1, 2, 3, 1, 2)
    assert [r.t for r in s.losses] == [2, 3] and [r.t for r in s.leaks] == [5]


def test_probes_inside_a_stated_window_or_outside_the_range_do_not_count() -> None:
    records = [record(1, "denied", "answer:pod"), record(5, "denied", "answer:pod"), record(9, "allowed", "timeout")]
    s = summarize(records, windows=[(4, 6)], since=2)
    assert (s.leak, s.loss, s.excused) == (0, 1, 1)


def test_churn_blocks_never_hold_a_probing_client() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        cidr = ipaddress.ip_network(churn_block(rng)[0]["ipBlock"]["cidr"])
        assert not any(c.version == cidr.version and c in cidr for c in CLIENTS), cidr


def test_with_flags_replaces_a_flag_of_the_same_name_and_appends_new_ones() -> None:
    argv = ["kube-apiserver", "--v=1", "--etcd-servers=http://127.0.0.1:2379"]
    assert with_flags(argv, ["--v=3", "--watch-cache=false"]) == [
        "kube-apiserver", "--etcd-servers=http://127.0.0.1:2379", "--v=3", "--watch-cache=false"]


def test_the_result_table_keeps_one_row_per_fault_and_merges_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"faults": [{"fault": "9 other", "leak": 0, "loss": 0, "convergence_s": 1.0}]}))
    table = ResultTable()
    table.add(FaultResult("1 x", 1, 0, None))
    table.add(FaultResult("1 x", 0, 0, 2.5, {"takeover s": 3}))
    assert len(table.rows) == 1 and "2.50" in table.render() and "takeover s=3" in table.render()
    table.save(path)
    saved = {r["fault"]: r for r in json.loads(path.read_text())["faults"]}
    assert set(saved) == {"1 x", "9 other"} and saved["1 x"]["convergence_s"] == 2.5
