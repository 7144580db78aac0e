"""`nodeport-guard-enforcer run|cleanup`: wiring, HTTP probes and signals only."""

from __future__ import annotations

import argparse
import base64
import datetime
import http.server
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal, cast

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from contract import field_managers
from contract.doors import canonical_ip
from contract.node_status import lease_name
from contract.path_status import PathReport
from contract.signing import PublicKey, VerifierKeys, parse_public_keys_pem, public_keys_from_data
from enforcer.apihealth import ApiHealth
from enforcer.backend import Backend, detect_backend
from enforcer.canary_run import start_canary
from enforcer.datapath import DatapathDetector
from enforcer.dataplane import Dataplane
from enforcer.drops import DropReader, log_audit_forever
from enforcer.loop import EnforcerMetrics, SyncLoop
from enforcer.policies import PolicyStore, RejectedAnnotation, trim_policy
from enforcer.settings import EnforcerSettings, SettingsError
from enforcer.status import StatusPublisher, lease_writer
from kube.listwatch import ListWatch
from kube.logs import configure_logging

logger = logging.getLogger("enforcer")
FORCED_REFRESH_SECONDS = 5.0  # a signature by an unknown key id re-reads the keys at most this often
# Calls made from the sync loop are bounded: on a dropped route, an unbounded call would hold the
# loop (and every later sync) until TCP gave up, minutes later.
API_TIMEOUT_SECONDS = 10


def _api_client(settings: EnforcerSettings) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    if settings.kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(settings.kubeconfig), client_configuration=configuration
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class VerifierKeySource:
    """The trusted Ed25519 public keys (current, then previous during a rotation) from the
    ConfigMap or a file, plus, only while `accept_legacy_hmac` is on, the legacy HMAC key.

    Re-read periodically so that a rotation takes effect without a restart. The enforcer never
    reads the private key: its RBAC does not allow it (manifests/base/enforcer-rbac.yaml).
    """

    def __init__(self, settings: EnforcerSettings, api_client: Any, metrics: EnforcerMetrics | None = None) -> None:
        self._settings = settings
        self._api_client = api_client
        self._metrics = metrics
        self._keys: VerifierKeys | None = None
        self._fetched = 0.0
        self._forced = -FORCED_REFRESH_SECONDS

    def _public_keys(self) -> tuple[PublicKey, ...]:
        path = self._settings.public_keys_file
        if path is not None:
            return parse_public_keys_pem(path.read_bytes(), f"NPG_PUBLIC_KEYS_FILE={path}")
        from kubernetes import client

        assert self._settings.public_keys_configmap is not None
        namespace, name = self._settings.public_keys_configmap
        data = client.CoreV1Api(self._api_client).read_namespaced_config_map(
            name, namespace, _request_timeout=API_TIMEOUT_SECONDS
        ).data or {}
        return public_keys_from_data(data, f"ConfigMap {namespace}/{name}")

    def _legacy_hmac_keys(self) -> tuple[bytes, ...]:
        if not self._settings.accept_legacy_hmac:
            return ()
        if self._settings.legacy_hmac_file is not None:
            return (self._settings.legacy_hmac_file.read_bytes(),)
        from kubernetes import client

        assert self._settings.legacy_hmac_secret is not None
        namespace, name = self._settings.legacy_hmac_secret
        data = client.CoreV1Api(self._api_client).read_namespaced_secret(
            name, namespace, _request_timeout=API_TIMEOUT_SECONDS
        ).data or {}
        keys = tuple(base64.b64decode(data[k]) for k in ("key", "previous") if data.get(k))
        if not keys:
            raise SettingsError(
                f"Secret {namespace}/{name} has no data key 'key' (the legacy HMAC key); "
                "set NPG_ACCEPT_LEGACY_HMAC=false if the upgrade is complete"
            )
        return keys

    def _read(self) -> VerifierKeys:
        keys = VerifierKeys(self._public_keys(), self._legacy_hmac_keys())
        if keys != self._keys:
            logger.info(
                "trusted signing keys loaded",
                extra={"key_ids": list(keys.key_ids()), "legacy_hmac": bool(keys.legacy_hmac_keys)},
            )
            if self._metrics is not None:
                self._metrics.trusted_keys.clear()
                for kid in keys.key_ids():
                    self._metrics.trusted_keys.labels(kid).set(1)
                self._metrics.legacy_hmac.set(1 if keys.legacy_hmac_keys else 0)
            return keys
        assert self._keys is not None
        return self._keys  # the same object: the verification cache compares it first by identity

    def refresh(self) -> VerifierKeys:
        """Re-read now, at most once every FORCED_REFRESH_SECONDS (forged key ids cannot flood the API)."""
        now = time.monotonic()
        if now - self._forced >= FORCED_REFRESH_SECONDS:
            self._forced = now
            self._fetched = now - self._settings.key_refresh_seconds - 1.0
        return self()

    def __call__(self) -> VerifierKeys:
        now = time.monotonic()
        if self._keys is None or now - self._fetched > self._settings.key_refresh_seconds:
            try:
                self._keys = self._read()
                self._fetched = now
            except Exception:
                if self._keys is None:
                    raise
                logger.warning("could not refresh the trusted signing keys; using the previous ones", exc_info=True)
        return self._keys


def _event_recorder(api_client: Any, node_name: str) -> Any:
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def record(rejected: RejectedAnnotation) -> None:
        now = datetime.datetime.now(datetime.UTC)
        core.create_namespaced_event(
            rejected.namespace,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{rejected.name}.", namespace=rejected.namespace),
                involved_object=client.V1ObjectReference(
                    api_version="networking.k8s.io/v1",
                    kind="NetworkPolicy",
                    name=rejected.name,
                    namespace=rejected.namespace,
                    resource_version=rejected.resource_version,
                ),
                reason="AnnotationRejected",
                message=f"nodeport-guard enforcer ignores this policy's NodePort annotation: {rejected.reason}"[:1000],
                type="Warning",
                source=client.V1EventSource(component="nodeport-guard-enforcer", host=node_name or None),
                first_timestamp=now,
                last_timestamp=now,
                count=1,
                reporting_component="nodeport-guard-enforcer",
                reporting_instance=node_name or "unknown",
            ),
            field_manager=field_managers.ENFORCER,
            _request_timeout=API_TIMEOUT_SECONDS,
        )

    return record


def _serve_probes(
    loop: SyncLoop, metrics: EnforcerMetrics, bind: tuple[str, int], health: ApiHealth | None = None
) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok", "text/plain")
            elif self.path == "/readyz":
                # Not ready while the apiserver is out of reach: the rules stay, but they are only
                # as fresh as the last plan (kubectl shows it once the node is back).
                if not loop.ready.is_set():
                    self._send(503, b"not synced yet", "text/plain")
                elif health is not None and not health.ok():
                    self._send(503, f"no answer from the apiserver for {health.silence() or 0:.0f}s; "
                               "enforcing the last plan".encode(), "text/plain")
                else:
                    self._send(200, b"ok", "text/plain")
            elif self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would drown the structured log

    server = http.server.ThreadingHTTPServer(bind, Handler)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server


def run(settings: EnforcerSettings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("stopping; rules stay in place so a restart opens no window", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    api_client = _api_client(settings)
    backend = detect_backend() if settings.backend == "auto" else settings.backend
    logger.info("iptables backend selected", extra={"backend": backend, "choice": settings.backend})
    metrics = EnforcerMetrics()
    metrics.backend.labels(backend).set(1)
    dataplane = Dataplane(
        backend,
        settings.nodeport_range,
        lock_path=str(settings.xtables_lock),
        clear_conntrack=settings.clear_conntrack,
        audit_all=settings.audit_all,
    )
    canary_port = frozenset({settings.canary_nodeport} - {0})
    drops = DropReader(dataplane.read_counters, exclude_ports=canary_port)
    metrics.watch_drops(drops)
    from kubernetes import client

    store = PolicyStore()
    keys = VerifierKeySource(settings, api_client, metrics)
    watch = ListWatch(
        "networkpolicies",
        client.NetworkingV1Api(api_client).list_network_policy_for_all_namespaces,
        store,
        stop,
        trim_policy,
    )
    loop = SyncLoop(
        store=store,
        dataplane=dataplane,
        signing_keys=keys,
        refresh_keys=keys.refresh,
        nodeport_range=settings.nodeport_range,
        stop=stop,
        metrics=metrics,
        resync_seconds=settings.resync_seconds,
        debounce_seconds=settings.debounce_seconds,
        on_rejected=_event_recorder(api_client, settings.node_name),
        node_addresses=_node_addresses(api_client, settings.node_name),
    )
    health = ApiHealth(lambda: client.VersionApi(api_client).get_code(_request_timeout=3),
                       on_recover=watch.reconnect)
    server = _serve_probes(loop, metrics, settings.metrics_bind, health)
    health.start(stop)
    prober = start_canary(settings, api_client, loop, metrics.registry, stop)
    detector = DatapathDetector(backend, lambda: _families(loop), on_jump_missing=loop.request_repair)
    detector.start(stop, loop.ready.is_set, settings.resync_seconds)

    def path() -> PathReport:
        return PathReport(detector.findings(), prober.report() if prober else (), loop.ready_since)

    publisher = _status_publisher(settings, api_client, loop, store, path)
    status_thread = publisher.start(stop) if publisher else None
    threading.Thread(
        target=log_audit_forever, args=(drops, stop, settings.audit_log_seconds), name="audit-log", daemon=True
    ).start()
    watch.start()
    loop.run()
    server.shutdown()
    if status_thread is not None:
        status_thread.join(timeout=10)  # its last write says "stopped"
    return 0


def _families(loop: SyncLoop) -> set[Literal[4, 6]]:
    """The families our skeleton is installed in: those with a protected port."""
    return {4 if family == 4 else 6 for family, _, _ in (loop.ports_view() or {})}


def _node_addresses(api_client: Any, node_name: str, ttl: float = 30.0) -> Callable[[], frozenset[str]]:
    """This node's own addresses (its Node's status.addresses), re-read at most every `ttl` seconds: a door
    on one is never filtered (docs/semantics.md, "Doors"). The last answer stays on an API error."""
    from kubernetes import client

    last: list[Any] = [frozenset(), float("-inf")]

    def read() -> frozenset[str]:
        if not node_name or time.monotonic() - last[1] < ttl:
            return frozenset(last[0])
        try:
            node = client.CoreV1Api(api_client).read_node(node_name, _request_timeout=5)
            status = node.status
            found = {canonical_ip(a.address) for a in ((status.addresses if status else None) or []) if a.address}
            last[0] = frozenset(ip for ip in found if ip is not None)
        except Exception as exc:  # the webhook never names a node address either; keep the last answer
            logger.warning("could not read this node's addresses", extra={"node": node_name, "error": str(exc)[:200]})
        last[1] = time.monotonic()  # also after an error: at most one read per `ttl`, never one per sync
        return frozenset(last[0])

    return read


def _status_publisher(
    settings: EnforcerSettings, api_client: Any, loop: SyncLoop, store: PolicyStore, path: Callable[[], PathReport]
) -> StatusPublisher | None:
    if not settings.node_name:
        logger.warning("NPG_NODE_NAME is empty: this node's status is not published (kubectl nodeport-guard status)")
        return None
    name = lease_name(settings.node_name)
    return StatusPublisher(
        settings.node_name,
        settings.status_namespace,
        lease_writer(api_client, settings.status_namespace, name),
        generation=lambda: (loop.generation, store.resource_version),
        read=loop.programmed,
        min_interval=settings.status_min_interval_seconds,
        heartbeat=settings.status_heartbeat_seconds,
        path=path,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeport-guard-enforcer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="watch NetworkPolicies and program this node's iptables/ipset")
    cleanup = sub.add_parser("cleanup", help="remove every chain, rule and set nodeport-guard owns on this node")
    cleanup.add_argument("--backend", choices=["auto", "legacy", "nft"], default=None)
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("NPG_LOG_LEVEL", "INFO"))
    if args.command == "cleanup":
        choice = args.backend or os.environ.get("NPG_BACKEND", "auto")
        if choice not in ("auto", "legacy", "nft"):
            print(f"nodeport-guard-enforcer: NPG_BACKEND={choice!r}: expected auto, legacy or nft", file=sys.stderr)
            return 2
        # "auto" cleans both backends: rules written under one stay if the host switched to the other.
        # Rules of every backend go first: a set cannot be destroyed while any rule references it.
        backends: tuple[Backend, ...] = ("legacy", "nft") if choice == "auto" else (cast(Backend, choice),)
        lock = os.environ.get("NPG_XTABLES_LOCK", "/run/xtables.lock")
        dataplanes = [Dataplane(backend, (1, 65535), lock_path=lock) for backend in backends]
        for backend, dataplane in zip(backends, dataplanes, strict=True):
            dataplane.remove_rules()
            logger.info("removed all nodeport-guard chains and rules", extra={"backend": backend})
        dataplanes[-1].destroy_sets()
        logger.info("removed all nodeport-guard sets")
        return 0
    try:
        settings = EnforcerSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"nodeport-guard-enforcer: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
