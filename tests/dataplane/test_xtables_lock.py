"""The xtables lock we take is the one iptables-restore -w waits for (netns for the iptables side)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from enforcer.xtables_lock import xtables_lock
from tests.netns import Node

pytestmark = pytest.mark.netns
SCRIPT = "*mangle\n:KUBE-TEST - [0:0]\nCOMMIT\n"


def test_iptables_restore_waits_for_our_lock(node: Node) -> None:
    env = {**os.environ, "XTABLES_LOCKFILE": node.lock_path}
    argv = ["iptables-legacy-restore", "--noflush", "-w", "1"]
    with xtables_lock(node.lock_path):
        blocked = node.spawn(argv, env=env)
        _, err = blocked.communicate(SCRIPT, timeout=30)
    assert blocked.returncode != 0 and "xtables lock" in err
    free = node.spawn(argv, env=env)
    free.communicate(SCRIPT, timeout=30)
    assert free.returncode == 0


def test_lock_times_out_naming_the_path_then_is_reacquired(tmp_path: Path) -> None:
    path = str(tmp_path / "xtables.lock")
    with xtables_lock(path):
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=str(tmp_path)), xtables_lock(path, timeout=0.2):
            pass
        assert time.monotonic() - start >= 0.2
    with xtables_lock(path, timeout=0.2):
        pass
