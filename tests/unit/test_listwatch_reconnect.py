"""ListWatch.reconnect: a watch blocked on a silent connection resumes at once from its resourceVersion."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kube.listwatch import ListWatch, ObjectSink


@dataclass
class _Connection:
    sock: socket.socket


@dataclass
class _SilentResponse:
    """A watch response whose connection never sends anything (a dropped route), on a real socket."""

    connection: _Connection
    peer: socket.socket

    def stream(self, amt: int, decode_content: bool) -> Iterator[bytes]:
        while chunk := self.connection.sock.recv(amt):
            yield chunk

    def release_conn(self) -> None:
        self.connection.sock.close()
        self.peer.close()


@dataclass
class _Api:
    calls: list[dict[str, Any]] = field(default_factory=list)
    watching: threading.Event = field(default_factory=threading.Event)
    second_watch: threading.Event = field(default_factory=threading.Event)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if not kwargs.get("watch"):
            return type("Listed", (), {"data": json.dumps({"items": [], "metadata": {"resourceVersion": "7"}})})()
        if self.watching.is_set():
            self.second_watch.set()
        self.watching.set()
        ours, peer = socket.socketpair()
        return _SilentResponse(_Connection(ours), peer)


class _Sink(ObjectSink[dict[str, Any]]):
    def replace(self, kind: str, objects: list[dict[str, Any]], resource_version: str) -> None:
        pass

    def apply(self, kind: str, event: Any, obj: dict[str, Any]) -> None:
        pass


def test_reconnect_drops_a_silent_watch_and_resumes_from_its_resource_version() -> None:
    api, stop = _Api(), threading.Event()
    watch: ListWatch[dict[str, Any]] = ListWatch("networkpolicies", api, _Sink(), stop)
    watch.start()
    try:
        assert api.watching.wait(5)
        assert not api.second_watch.wait(0.5), "the silent watch ended by itself"
        watch.reconnect()
        assert api.second_watch.wait(5), "reconnect did not end the silent watch"
    finally:
        stop.set()
        watch.reconnect()
    watches = [c for c in api.calls if c.get("watch")]
    lists = [c for c in api.calls if not c.get("watch")]
    assert len(lists) == 1, "reconnect relisted instead of resuming the watch"
    assert [c["resource_version"] for c in watches[:2]] == ["7", "7"]
