"""The apiserver relay of a test node never outlives the process that started it (no orphans after a run)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.machine import REPO
from tests.netns import Node

STARTER = r"""
import subprocess, sys
relay = subprocess.Popen([sys.executable, "-m", "tests.netns_bridge", sys.argv[1], "0", "1"], stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
assert relay.stdout.readline().strip() == "ready"
print(relay.pid, flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_relay_dies_with_the_process_that_started_it(node: Node) -> None:
    # The starter exits right away, as a test run that ends without stopping its relay (or is killed) does.
    proc = subprocess.run([sys.executable, "-c", STARTER, node.node_ns], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    relay = int(proc.stdout.strip())
    deadline = time.monotonic() + 5
    while _alive(relay) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(relay), f"relay {relay} outlived its parent (orphaned, ppid 1)"
