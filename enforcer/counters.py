"""Drop and would-drop counters per NodePort: parsing the kernel's counter sets, monotonic totals (pure).

The skeleton counts each denied new connection in a sparse counter set (`npg-<f>-dropped` for
enforced ports, `npg-<f>-audited` for audited ones), one member per (node address, proto:port)
that saw one (docs/dataplane.md). A set can be rebuilt or destroyed and recreated (a family's
last port goes), which resets its members; `DropTotals` turns what it reads into counters that
never go down, so Prometheus sees no reset the kernel caused.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from contract.annotation import PROTOCOLS, Mode, Protocol
from enforcer import sets
from enforcer.plan import FAMILIES, Family

_PROTO_UPPER: dict[str, Protocol] = {p.lower(): p for p in PROTOCOLS}


@dataclass(frozen=True, slots=True, order=True)
class DropKey:
    """One NodePort of one protocol and family, in one mode: the labels of one counter."""

    family: Family
    protocol: Protocol
    port: int
    mode: Mode


def _set_modes() -> dict[str, tuple[Family, Mode]]:
    return {sets.counter_set_name(f, m): (f, m) for f in FAMILIES for m in ("enforce", "audit")}


_SET_MODES = _set_modes()

# (set name, member) -> packets, as read from the kernel.
RawCounters = dict[tuple[str, str], int]


def parse_counter_save(text: str) -> RawCounters:
    """Members of our counter sets with their packet counts, from `ipset save` lines
    (`add npg-4-dropped 198.51.100.11,tcp:30080 packets 3 bytes 180`); other lines are ignored."""
    out: RawCounters = {}
    sets = _SET_MODES
    for line in text.splitlines():
        fields = line.split(" ", 5)
        # Fast path for the kernel's own layout; anything else is skipped, never guessed.
        if len(fields) < 5 or fields[0] != "add" or fields[1] not in sets or fields[3] != "packets":
            continue
        if fields[4].isdigit():
            out[(fields[1], fields[2])] = int(fields[4])
    return out


def drop_key(set_name: str, member: str) -> DropKey | None:
    """The counter a member adds to: (family, protocol, port, mode); None when not ours."""
    where = _SET_MODES.get(set_name)
    if where is None:
        return None
    proto_text, _, port_text = member.rpartition(",")[2].partition(":")
    protocol = _PROTO_UPPER.get(proto_text)
    if protocol is None or not port_text.isdigit():
        return None
    return DropKey(where[0], protocol, int(port_text), where[1])


_UNSEEN = DropKey(4, "TCP", 0, "enforce")  # a sentinel: never a real member's key (port 0)


class DropTotals:
    """Monotonic totals per DropKey from successive kernel reads (thread-safe).

    A member read for the first time contributes its whole count (it was created since the last
    read, or before this process started: the kernel's count is the truth either way). A member
    whose count went down was recreated (set rebuilt or destroyed): its new count is all new.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Mapping[tuple[str, str], int] = {}
        self._keys: dict[tuple[str, str], DropKey | None] = {}  # parsed once per member
        self._totals: dict[DropKey, int] = {}

    def update(self, raw: Mapping[tuple[str, str], int]) -> dict[DropKey, int]:
        """Fold one read in; returns the totals (a copy)."""
        with self._lock:
            keys, last, totals = self._keys, self._last, self._totals
            for member, packets in raw.items():
                key = keys.get(member, _UNSEEN)
                if key is _UNSEEN:
                    key = keys[member] = drop_key(*member)
                if key is None:
                    continue
                before = last.get(member, 0)
                totals[key] = totals.get(key, 0) + (packets if packets < before else packets - before)
            # Members gone (set destroyed): forget their last count so a recreated one counts from 0.
            self._last = raw
            if len(keys) > 2 * len(raw) + 1024:
                self._keys = {m: k for m, k in keys.items() if m in raw}
            return dict(totals)

    def totals(self) -> dict[DropKey, int]:
        with self._lock:
            return dict(self._totals)


def increases(before: Mapping[DropKey, int], after: Mapping[DropKey, int]) -> dict[DropKey, int]:
    """The counters that grew between two totals, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def audit_log_lines(grown: Mapping[DropKey, int], limit: int) -> tuple[list[tuple[DropKey, int]], int]:
    """The audited ports to log for one period (most would-drops first, at most `limit`) and how
    many more grew: the log stays bounded whatever the traffic."""
    audited = sorted(((k, n) for k, n in grown.items() if k.mode == "audit"), key=lambda kn: (-kn[1], kn[0]))
    return audited[:limit], max(0, len(audited) - limit)
