"""List+watch of one Kubernetes resource as raw JSON dicts (I/O), shared by webhook cache and enforcer.

Lists (paginated), then watches from the list's resourceVersion with bookmarks; relists on
410 Gone; retries errors with exponential backoff and full jitter (never a tight loop).
Objects are passed through `trim` so that caches keep only the fields they use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

logger = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Obj = dict[str, Any]
ListFunction = Callable[..., Any]
T = TypeVar("T")

WATCH_TIMEOUT_SECONDS = 240
LIST_PAGE_SIZE = 500


class Gone(Exception):
    """The resourceVersion we resume from is too old (410): relist."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter; `reset()` after a success."""

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random | None = None

    def next_delay(self) -> float:
        self.attempt += 1
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 16)))
        return (self.rng or random).uniform(self.base / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class ObjectSink(Generic[T]):
    """What a list+watch feeds: a full replacement after each list, then single events."""

    def replace(self, kind: str, objects: list[T], resource_version: str) -> None:
        raise NotImplementedError

    def apply(self, kind: str, event: EventType, obj: T) -> None:
        raise NotImplementedError


def _iter_lines(response: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _identity(obj: Obj) -> Any:
    return obj


class ListWatch(Generic[T]):
    """Keeps `sink` in step with one resource until `stop` is set."""

    def __init__(
        self,
        kind: str,
        list_function: ListFunction,
        sink: ObjectSink[T],
        stop: threading.Event,
        trim: Callable[[Obj], T] = _identity,
        backoff: Backoff | None = None,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.kind = kind
        self._list_function = list_function
        self._sink = sink
        self._stop = stop
        self._trim = trim
        self._backoff = backoff or Backoff()
        self._on_error = on_error
        self.synced = threading.Event()
        self._response: Any = None  # the open watch response, for `reconnect`
        self._wake = threading.Event()

    def _list(self) -> str:
        items: list[T] = []
        continue_token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "_preload_content": False, "_request_timeout": 60}
            if continue_token:
                kwargs["_continue"] = continue_token
            body = json.loads(self._list_function(**kwargs).data)
            items.extend(self._trim(o) for o in body.get("items", []))
            continue_token = body.get("metadata", {}).get("continue") or None
            if not continue_token:
                resource_version = str(body["metadata"]["resourceVersion"])
                break
        self._sink.replace(self.kind, items, resource_version)
        self.synced.set()
        logger.info("listed", extra={"kind": self.kind, "count": len(items), "resourceVersion": resource_version})
        return resource_version

    def _watch(self, resource_version: str) -> str:
        response = self._list_function(
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_TIMEOUT_SECONDS + 30),
        )
        self._response = response
        try:
            for line in _iter_lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "resource version too old"))
                    raise RuntimeError(f"watch error for {self.kind}: {obj.get('message', obj)}")
                resource_version = str(obj.get("metadata", {}).get("resourceVersion", resource_version))
                if etype == "BOOKMARK":
                    continue
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._sink.apply(self.kind, etype, self._trim(obj))
                self._backoff.reset()
        finally:
            self._response = None
            response.release_conn()
        return resource_version

    def reconnect(self) -> None:
        """Drop the current watch connection and cut a backoff wait short (from another thread).

        For a connection that died silently (a dropped route): its reader would otherwise wait
        for its read timeout. The watch resumes from its last resourceVersion (or relists on 410).
        """
        self._wake.set()
        response = self._response
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read; close() alone would not

    def run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                    self._backoff.reset()
                resource_version = self._watch(resource_version)
            except Gone as exc:
                logger.info("watch expired, relisting", extra={"kind": self.kind, "reason": str(exc)})
                resource_version = None
            except Exception as exc:  # any API/network failure: back off and resume
                status = getattr(exc, "status", None)
                if status == 410:
                    resource_version = None
                    continue
                delay = self._backoff.next_delay()
                logger.warning(
                    "list/watch failed; retrying",
                    extra={"kind": self.kind, "error": str(exc)[:300], "retry_in_s": round(delay, 2)},
                )
                if self._on_error:
                    self._on_error(self.kind, exc)
                deadline = time.monotonic() + delay
                while not (self._stop.is_set() or self._wake.is_set()) and time.monotonic() < deadline:
                    self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                self._wake.clear()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"listwatch-{self.kind}", daemon=True)
        thread.start()
        return thread
