"""Pytest fixtures over tests.netns: `node` (a fresh node/client/remote netns trio) (I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Node, make_node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A fresh test node; its namespaces and processes are deleted even when the test fails.

    The xtables lock is per test (XTABLES_LOCKFILE for iptables tools): nothing holds the host's lock.
    """
    with make_node(lock_path=str(tmp_path / "xtables.lock")) as n:
        yield n
