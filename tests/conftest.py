"""Shared pytest fixtures: one real control plane per session, a fresh namespace per test.

At the end of the session no process this session started may still run (an orphaned relay or
daemon fails the run, with its command line printed).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.components import (
    Installation,
    WebhookServer,
    install_manifests,
    remove_webhooks,
)
from tests.controlplane.harness import ControlPlane, running_control_plane
from tests.machine import SESSION_START, MachineSnapshot, boot_ticks, take_snapshot, wait_for_no_processes


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION_START] = boot_ticks() - 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = wait_for_no_processes(session.config.stash[SESSION_START])
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["processes started by this test session outlived it:", *left]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def machine_before() -> MachineSnapshot:
    """The machine as it was before the first fixture that could change it (the local cluster) ran."""
    return take_snapshot()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with running_control_plane() as plane:
        yield plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    # Without a namespace controller, deleted namespaces never finish terminating: use fresh names.
    name = f"t-{secrets.token_hex(4)}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # Services hold ClusterIPs from a small documentation range: free them explicitly.
    control_plane.kubectl(
        "delete",
        "services,networkpolicies,pods",
        "--all",
        "-n",
        name,
        "--wait=false",
        "--grace-period=0",
        "--force",
        check=False,
    )
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def installation(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Installation:
    """manifests/ applied for real, certs and secrets installed by the certs tool."""
    return install_manifests(control_plane, tmp_path_factory.mktemp("install"))


@pytest.fixture(scope="session")
def webhook(
    control_plane: ControlPlane, installation: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookServer]:
    """The webhook under gunicorn + TLS with its own ServiceAccount token, registered with the apiserver."""
    server = WebhookServer(control_plane, installation, tmp_path_factory.mktemp("webhook") / "webhook.log")
    try:
        server.start()
        yield server
    finally:
        remove_webhooks(control_plane)
        server.stop()
