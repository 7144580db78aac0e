"""`python -m enforcer.uninstall`: what `make undeploy` does, as the chart's pre-delete hook (I/O).

The order matters and is the same as the Makefile's: (1) the webhook configurations go, so no
policy write waits on a webhook being removed; (2) the enforcer DaemonSet goes and its pods are
gone (a running enforcer would restore what the cleanup removes); (3) the cleanup DaemonSet runs
`nodeport-guard-enforcer cleanup` on every node and is Ready only once its node is clean;
(4) it is deleted. Helm then deletes the rest of the release.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contract import field_managers

logger = logging.getLogger("enforcer.uninstall")
ENFORCER = "nodeport-guard-enforcer"
WEBHOOK_CONFIGURATION = "nodeport-guard"


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(1.0)


def _ignore_404(call: Callable[[], Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise


def uninstall(api_client: Any, namespace: str, cleanup_daemonset: dict[str, Any], timeout: float) -> None:
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api_client)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    _ignore_404(lambda: admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIGURATION))
    _ignore_404(lambda: admission.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION))
    logger.info("deleted both webhook configurations")
    _ignore_404(lambda: apps.delete_namespaced_daemon_set(ENFORCER, namespace, propagation_policy="Foreground"))
    selector = f"app.kubernetes.io/name={ENFORCER}"
    _wait(lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items, timeout, "enforcer pods gone")
    logger.info("enforcer DaemonSet and pods gone")
    name = cleanup_daemonset["metadata"]["name"]
    _ignore_404(lambda: apps.delete_namespaced_daemon_set(name, namespace))  # a leftover of a failed run
    _wait(lambda: not _exists(apps, name, namespace), timeout, f"old DaemonSet {name} gone")
    # a dict is sent as is
    apps.create_namespaced_daemon_set(namespace, cleanup_daemonset, field_manager=field_managers.ENFORCER)  # type: ignore[arg-type]

    def every_node_clean() -> bool:
        status = apps.read_namespaced_daemon_set(name, namespace).status
        if status is None:
            return False
        desired = status.desired_number_scheduled or 0
        return bool(status.observed_generation) and desired > 0 and (status.number_ready or 0) == desired

    _wait(every_node_clean, timeout, f"DaemonSet {name} Ready on every node (rules and sets removed)")
    logger.info("every node is clean")
    apps.delete_namespaced_daemon_set(name, namespace, propagation_policy="Foreground")
    _wait(lambda: not _exists(apps, name, namespace), timeout, f"DaemonSet {name} deleted")


def _exists(apps: Any, name: str, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        apps.read_namespaced_daemon_set(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--cleanup-daemonset", type=Path, required=True, help="the cleanup DaemonSet, as JSON")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    api_client = client.ApiClient(configuration)
    try:
        uninstall(api_client, args.namespace, json.loads(args.cleanup_daemonset.read_text()), args.timeout)
    except TimeoutError as exc:
        logger.error("%s; see `kubectl -n %s get pods`", exc, args.namespace)
        return 1
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())
