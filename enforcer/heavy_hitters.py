"""The top sources of denied connections per (family, protocol, NodePort, mode), in fixed memory (pure).

A Space-Saving summary (Metwally, Agrawal, El Abbadi 2005) per key keeps at most `per_key` sources:
a new source, when the summary is full, replaces the least counted one and inherits its count as
its `error`. So each kept count overestimates the true one by at most `error`, and any source
with more than 1/per_key of the key's samples is always kept, whatever order they come in.
At most `max_keys` keys per window; samples of further keys are only counted (`unattributed`).
Windows are tumbling (`window` seconds, aligned on the clock); a report merges the current and
the previous one. Memory is therefore at most 2 x max_keys x per_key entries whatever is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.node_sources import KeySources, NodeSources, SourceCount, SourceKey

PER_KEY = 16
MAX_KEYS = 512
WINDOW_SECONDS = 600.0


@dataclass(slots=True)
class _Entry:
    count: int
    error: int
    last_seen: float


@dataclass(slots=True)
class SpaceSaving:
    """One key's summary of at most `capacity` sources."""

    capacity: int
    entries: dict[str, _Entry] = field(default_factory=dict)
    total: int = 0  # every sample of this key, kept or not

    def add(self, source: str, at: float) -> None:
        self.total += 1
        entry = self.entries.get(source)
        if entry is not None:
            entry.count += 1
            entry.last_seen = max(entry.last_seen, at)
            return
        if len(self.entries) < self.capacity:
            self.entries[source] = _Entry(1, 0, at)
            return
        # O(capacity) with capacity 16: cheaper in Python than keeping a heap in step.
        victim = min(self.entries, key=lambda s: (self.entries[s].count, self.entries[s].last_seen, s))
        low = self.entries.pop(victim).count
        self.entries[source] = _Entry(low + 1, low, at)

    def floor(self) -> int:
        """What an unlisted source may have had at most: the least kept count when full, else 0."""
        if len(self.entries) < self.capacity:
            return 0
        return min(e.count for e in self.entries.values())


def _merged(summaries: list[SpaceSaving]) -> tuple[int, dict[str, _Entry]]:
    """Two windows' summaries of one key as one: counts and errors add; a source absent from a
    full summary may have had up to that summary's floor there, which is added to its error."""
    total = sum(s.total for s in summaries)
    out: dict[str, _Entry] = {}
    for s in summaries:
        for src, e in s.entries.items():
            acc = out.setdefault(src, _Entry(0, 0, e.last_seen))
            acc.count += e.count
            acc.error += e.error
            acc.last_seen = max(acc.last_seen, e.last_seen)
    for s in summaries:
        floor = s.floor()
        if floor:
            for src, acc in out.items():
                if src not in s.entries:
                    acc.count += floor
                    acc.error += floor
    return total, out


class TopSources:
    """Per key, the most frequent sources of the current and the previous window. Not thread-safe:
    the caller (the sampler) holds its own lock."""

    def __init__(self, per_key: int = PER_KEY, max_keys: int = MAX_KEYS, window: float = WINDOW_SECONDS) -> None:
        if per_key < 1 or max_keys < 1 or window <= 0:
            raise ValueError("per_key, max_keys and window must be positive")
        self.per_key, self.max_keys, self.window = per_key, max_keys, window
        self._start: float | None = None  # start of the current window
        self._current: dict[SourceKey, SpaceSaving] = {}
        self._previous: dict[SourceKey, SpaceSaving] = {}
        self._unattributed = [0, 0]  # previous, current window

    def _roll(self, now: float) -> None:
        start = now - (now % self.window)
        if self._start is None:
            self._start = start
            return
        if start <= self._start:
            return
        if start - self._start == self.window:
            self._previous, self._unattributed = self._current, [self._unattributed[1], 0]
        else:  # more than a whole window without a sample: both windows are empty
            self._previous, self._unattributed = {}, [0, 0]
        self._current, self._start = {}, start

    def add(self, key: SourceKey, source: str, now: float) -> None:
        self._roll(now)
        summary = self._current.get(key)
        if summary is None:
            if len(self._current) >= self.max_keys:
                self._unattributed[1] += 1
                return
            summary = self._current[key] = SpaceSaving(self.per_key)
        summary.add(source, now)

    def entries(self) -> int:
        """How many sources are held (the memory bound's measure)."""
        return sum(len(s.entries) for w in (self._previous, self._current) for s in w.values())

    def report(self, node: str, now: float) -> NodeSources:
        """The sources of the previous and the current window, most counted first per key."""
        self._roll(now)
        start = self._start if self._start is not None else now - (now % self.window)
        keys = []
        for key in sorted(set(self._current) | set(self._previous)):
            summaries = [w[key] for w in (self._previous, self._current) if key in w]
            total, merged = _merged(summaries)
            ranked = sorted(merged.items(), key=lambda kv: (-kv[1].count, kv[1].error, kv[0]))[: self.per_key]
            keys.append(KeySources(key, total, tuple(SourceCount(s, e.count, e.error, e.last_seen) for s, e in ranked)))
        since = start - self.window if self._previous else start
        return NodeSources(node, since, now, tuple(keys), sum(self._unattributed))
