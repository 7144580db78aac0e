"""The xtables lock (`flock` on /run/xtables.lock, as `iptables -w` takes it) for python-iptables (I/O)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

DEFAULT_LOCK_PATH = "/run/xtables.lock"


@contextmanager
def xtables_lock(
    path: str = DEFAULT_LOCK_PATH,
    timeout: float = 5.0,
    interval: float = 0.02,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the exclusive xtables lock; retry while another writer holds it, up to `timeout` seconds.

    python-iptables takes no lock and commits whole tables, so every refresh -> modify -> commit
    must run inside this block to serialize with iptables/iptables-restore -w and kube-proxy.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    raise
                if clock() >= deadline:
                    raise TimeoutError(
                        f"xtables lock {path}: still held by another writer after {timeout:.1f}s "
                        "(find it with `fuser -v` and let it finish, or raise the timeout)"
                    ) from exc
                sleep(interval)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
