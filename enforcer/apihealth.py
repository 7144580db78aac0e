"""Whether this enforcer still hears from the apiserver (a cheap, bounded call on a timer).

A watch on a silently dropped connection (a node cut off from the apiserver) looks healthy to its
reader until its read timeout, minutes later. So the enforcer asks the apiserver something cheap
(GET /version, readable by every identity) every `period` seconds with a short timeout: readiness
requires an answer within `stale_after` seconds, and when answers come back after failures,
`on_recover` runs (the watch reconnects at once instead of waiting for its dead connection).
Rules are never touched here: a node that lost the apiserver keeps enforcing its last plan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def is_fresh(last_ok: float | None, now: float, stale_after: float) -> bool:
    """Pure: an answer came within the last `stale_after` seconds."""
    return last_ok is not None and now - last_ok <= stale_after


@dataclass
class ApiHealth:
    check: Callable[[], object]  # one bounded call to the apiserver; raises when it gets no answer
    period: float = 5.0
    stale_after: float = 15.0
    on_recover: Callable[[], None] | None = None
    clock: Callable[[], float] = time.monotonic
    last_ok: float | None = None
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self) -> bool:
        return is_fresh(self.last_ok, self.clock(), self.stale_after)

    def silence(self) -> float | None:
        """Seconds since the last answer (None before the first)."""
        return None if self.last_ok is None else self.clock() - self.last_ok

    def probe_once(self) -> bool:
        try:
            self.check()
        except Exception as exc:
            with self._lock:
                self.failures += 1
                failures = self.failures
            if failures == 1:
                logger.warning("apiserver not answering; rules stay as last programmed",
                               extra={"error": str(exc)[:300]})
            return False
        with self._lock:
            recovered, self.failures = self.failures > 0, 0
            self.last_ok = self.clock()
        if recovered:
            logger.info("apiserver answering again; reconnecting the watch")
            if self.on_recover is not None:
                self.on_recover()
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.probe_once()
            stop.wait(self.period)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="apihealth", daemon=True)
        thread.start()
        return thread
