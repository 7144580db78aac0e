"""The canary's wiring in the enforcer: the Node watch, its metrics, the Warning Event on a bypassed Node (I/O)."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from contract.path_status import Probe
from enforcer.canary import CanaryProber, NodeAddresses, canary_armed, trim_node
from enforcer.loop import SyncLoop
from enforcer.settings import EnforcerSettings
from kube.listwatch import ListWatch

logger = logging.getLogger(__name__)

RESULTS = ("filtering", "answered", "error")
API_TIMEOUT_SECONDS = 10


class CanaryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.result = Gauge(
            "nodeport_guard_canary_result",
            "1 for the latest result of this enforcer's canary probe of each peer node: filtering (the filter "
            "dropped it: verified), answered (a denied source reaches that node: bypassed), error (unverified)",
            ["node", "result"],
            registry=registry,
        )
        self.probes = Counter(
            "nodeport_guard_canary_probes", "Canary probes sent, by result", ["result"], registry=registry
        )

    def observe(self, probe: Probe) -> None:
        self.probes.labels(probe.result).inc()
        for result in RESULTS:
            self.result.labels(probe.target, result).set(1 if probe.result == result else 0)


def node_event_recorder(api_client: Any, reporter: str) -> Callable[[Probe], None]:
    """A Warning Event on the probed Node when its canary answered (I/O)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def record(probe: Probe) -> None:
        now = datetime.datetime.now(datetime.UTC)
        core.create_namespaced_event(
            "default",
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{probe.target}.nodeport-guard.", namespace="default"),
                involved_object=client.V1ObjectReference(api_version="v1", kind="Node", name=probe.target),
                reason="NodePortFilterBypassed",
                message=(
                    f"nodeport-guard: the canary NodePort on {probe.target} answered a probe from {reporter} "
                    f"({probe.detail}): denied sources reach this node's NodePorts; see "
                    "'kubectl nodeport-guard status' and docs/operations.md#supported-platforms"
                )[:1000],
                type="Warning",
                source=client.V1EventSource(component="nodeport-guard-enforcer", host=reporter or None),
                first_timestamp=now,
                last_timestamp=now,
                count=1,
                reporting_component="nodeport-guard-enforcer",
                reporting_instance=reporter or "unknown",
            ),
            _request_timeout=API_TIMEOUT_SECONDS,
        )

    return record


def start_canary(
    settings: EnforcerSettings, api_client: Any, loop: SyncLoop, registry: CollectorRegistry, stop: threading.Event
) -> CanaryProber | None:
    """Start the Node watch and the prober (None when NPG_CANARY_NODEPORT is 0 or the node has no name)."""
    if not settings.canary_nodeport or not settings.node_name:
        logger.warning(
            "the canary is off (NPG_CANARY_NODEPORT or NPG_NODE_NAME unset): this node verifies no peer"
        )
        return None
    from kubernetes import client

    addresses = NodeAddresses()
    ListWatch("nodes", client.CoreV1Api(api_client).list_node, addresses, stop, trim_node).start()
    metrics = CanaryMetrics(registry)
    event = node_event_recorder(api_client, settings.node_name)

    def armed() -> str | None:
        if settings.audit_all:
            return "NPG_MODE=audit on the probing node: nothing is dropped, so nothing can be verified"
        return canary_armed(loop.ports_view, settings.canary_nodeport)

    def on_result(probe: Probe, before: Probe | None) -> None:
        metrics.observe(probe)
        if probe.result == (before.result if before else None):
            return
        log = logger.warning if probe.result != "filtering" else logger.info
        log("canary result changed", extra={"peer": probe.target, "result": probe.result, "detail": probe.detail})
        if probe.result == "answered":
            try:
                event(probe)
            except Exception as exc:  # an Event is best effort; the Lease and the metric carry the result
                logger.warning("could not record the Node event", extra={"node": probe.target, "error": str(exc)[:200]})

    prober = CanaryProber(
        settings.node_name,
        settings.canary_nodeport,
        addresses,
        armed,
        period=settings.canary_period_seconds,
        peers=settings.canary_peers,
        timeout=settings.canary_timeout_seconds,
        on_result=on_result,
    )
    prober.start(stop)
    logger.info(
        "canary probes started",
        extra={"nodeport": settings.canary_nodeport, "period": settings.canary_period_seconds,
               "peers": settings.canary_peers},
    )
    return prober
