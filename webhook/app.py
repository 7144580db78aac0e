"""Flask application factory: /mutate /validate /healthz /readyz /metrics around the pure admission (I/O).

HTTP is a thin shell: parse the AdmissionReview (400 with a JSON error when malformed), call
the pure `admission.mutate`/`validate` with the cache, return its AdmissionReview. Nothing is
opened at import time; `create_app()` builds the cache, watches and reconciler.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kube.listwatch import ListWatch
from kube.logs import configure_logging
from webhook import admission, review
from webhook.cache import TRIMMERS, ClusterCache
from webhook.cluster_view import ClusterView
from webhook.inforce import InForceAnnouncer, cached_policies
from webhook.reconcile import LeaseElector, Reconciler, kubernetes_patcher
from webhook.settings import WebhookSettings, read_signing_key

logger = logging.getLogger(__name__)

Handler = Callable[[review.AdmissionRequest, ClusterView, admission.AdmissionConfig], dict[str, Any]]


class WebhookMetrics:
    """The webhook's Prometheus metrics, in a registry of their own (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.requests = Counter(
            "nodeport_guard_admission_requests",
            "AdmissionReview requests handled",
            ["endpoint", "result"],
            registry=registry,
        )
        self.latency = Histogram(
            "nodeport_guard_admission_duration_seconds",
            "Time to answer an AdmissionReview",
            ["endpoint"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.rejections = Counter(
            "nodeport_guard_admission_rejections", "Requests denied", ["endpoint"], registry=registry
        )
        self.warnings = Counter(
            "nodeport_guard_admission_warnings", "Warnings returned to clients", ["endpoint"], registry=registry
        )
        self.cache_objects = Gauge(
            "nodeport_guard_cache_objects", "Objects held in the webhook cache", ["kind"], registry=registry
        )
        self.annotation_patches = Counter(
            "nodeport_guard_reconciler_patches", "Policy annotations updated by the reconciler", registry=registry
        )


@dataclass
class Runtime:
    """What create_app wires together; tests pass their own view and no watches."""

    view: ClusterView
    config: admission.AdmissionConfig
    ready: Callable[[], bool]
    max_body_bytes: int = 3 * 1024 * 1024
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)
    cache_sizes: Callable[[], dict[str, int]] = dict


def _json_error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


def build_app(runtime: Runtime) -> Flask:
    app = Flask("nodeport-guard-webhook")
    metrics = runtime.metrics

    def handle(endpoint: str, handler: Handler) -> Response:
        started = time.perf_counter()
        result = "error"
        try:
            length = request.content_length
            if length is not None and length > runtime.max_body_bytes:
                return _json_error(400, f"body is {length} bytes; the limit is {runtime.max_body_bytes}")
            raw = request.get_data(cache=False)
            if len(raw) > runtime.max_body_bytes:
                return _json_error(400, f"body is larger than the limit of {runtime.max_body_bytes} bytes")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                return _json_error(400, f"body is not JSON: {exc}")
            try:
                admission_request = review.parse_review(body)
            except review.ReviewError as exc:
                return _json_error(400, str(exc))
            try:
                answer = handler(admission_request, runtime.view, runtime.config)
            except Exception:
                # A bug must not admit a policy unchecked: deny with a well-formed answer.
                logger.exception("admission failed", extra={"endpoint": endpoint, "uid": admission_request.uid})
                answer = review.denied(
                    admission_request.uid,
                    500,
                    "nodeport-guard webhook internal error; see the webhook logs and retry",
                    [],
                )
            response = answer["response"]
            result = "allowed" if response.get("allowed") else "denied"
            if not response.get("allowed"):
                metrics.rejections.labels(endpoint).inc()
            if response.get("warnings"):
                metrics.warnings.labels(endpoint).inc(len(response["warnings"]))
            return Response(json.dumps(answer), status=200, mimetype="application/json")
        finally:
            metrics.requests.labels(endpoint, result).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    @app.post("/mutate")
    def mutate() -> Response:
        return handle("mutate", admission.mutate)

    @app.post("/validate")
    def validate() -> Response:
        return handle("validate", admission.validate)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        if runtime.ready():
            return Response("ok", mimetype="text/plain")
        return Response("caches not synced", status=503, mimetype="text/plain")

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        for kind, count in runtime.cache_sizes().items():
            metrics.cache_objects.labels(kind).set(count)
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _api_client(settings: WebhookSettings) -> Any:
    from kubernetes import client, config

    if settings.kubeconfig:
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(settings.kubeconfig), client_configuration=client.Configuration()
        )
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def _keep_lease(
    elector: LeaseElector,
    leader: threading.Event,
    reconciler: Reconciler,
    cache: ClusterCache,
    stop: threading.Event,
    resign: threading.Event | None = None,
) -> None:
    resign = resign or threading.Event()
    while not stop.is_set() and not resign.is_set():
        try:
            was_leader = leader.is_set()
            if elector.try_acquire():
                leader.set()
                if not was_leader:
                    logger.info("became reconciler leader", extra={"identity": elector.identity})
                    for ns in cache.namespaces():
                        reconciler.mark_dirty("leader", ns)
            else:
                leader.clear()
        except Exception as exc:  # API unreachable: stop acting as leader until renewed
            leader.clear()
            logger.warning("lease renewal failed", extra={"error": str(exc)[:300]})
        resign.wait(2.0)
    if resign.is_set() and leader.is_set():
        # Shutting down: hand the Lease over now. Without this the other replica waited for the
        # lease to expire after this pod's graceful shutdown ended (~36 s, measured by the faults tier).
        leader.clear()
        try:
            released = elector.release()
        except Exception as exc:  # the other replica then takes over when the lease expires
            logger.warning("could not release the reconciler lease", extra={"error": str(exc)[:300]})
        else:
            logger.info("released the reconciler lease", extra={"identity": elector.identity, "released": released})


def resign_on_sigterm(resign: threading.Event) -> None:
    """On SIGTERM (gunicorn's graceful stop of the worker) also set `resign`, then let gunicorn's
    own handler drain requests as before. Only from the main thread (where signals are handled)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        resign.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def start_cluster_runtime(
    settings: WebhookSettings, stop: threading.Event, resign: threading.Event | None = None
) -> Runtime:
    """Cache + list/watch threads + (optionally) the leader-elected reconciler; setting `resign`
    releases the reconciler Lease (the process is shutting down) while the rest keeps serving."""
    from kubernetes import client

    key = read_signing_key(settings.signing_key_file)
    logger.info("signing annotations with Ed25519", extra={"key_id": key.public.key_id})
    api_client = _api_client(settings)
    metrics = WebhookMetrics()
    cache = ClusterCache()
    config = admission.AdmissionConfig(
        signing_key=key,
        max_cidrs_per_policy=settings.max_cidrs_per_policy,
        max_nodeports_per_policy=settings.max_nodeports_per_policy,
        max_doors_per_policy=settings.max_doors_per_policy,
    )
    reconciler: Reconciler | None = None
    if settings.reconcile:
        leader = threading.Event()
        reconciler = Reconciler(
            cache,
            key,
            kubernetes_patcher(api_client),
            stop,
            is_leader=leader.is_set,
            resync_seconds=settings.resync_seconds,
            on_patched=lambda _p: metrics.annotation_patches.inc(),
            excluded_namespaces=settings.excluded_namespaces,
            memo=config.compiled,
        )
        cache.add_listener(reconciler.mark_dirty)
        if settings.lease_namespace:
            identity = f"{settings.pod_name}-{socket.gethostname()}-{os.getpid()}"
            elector = LeaseElector(api_client, settings.lease_namespace, identity)
            threading.Thread(
                target=_keep_lease, args=(elector, leader, reconciler, cache, stop, resign), name="lease", daemon=True
            ).start()
            # The Normal Event once a policy is in force on every node (webhook/inforce.py), by the leader.
            InForceAnnouncer(api_client, settings.lease_namespace, cached_policies(cache), leader.is_set, stop).start()
        else:
            leader.set()
    core, networking = client.CoreV1Api(api_client), client.NetworkingV1Api(api_client)
    watches = [
        ListWatch("services", core.list_service_for_all_namespaces, cache, stop, TRIMMERS["services"]),
        ListWatch("pods", core.list_pod_for_all_namespaces, cache, stop, TRIMMERS["pods"]),
        # Node addresses are never doors (webhook/doors.py).
        ListWatch("nodes", core.list_node, cache, stop, TRIMMERS["nodes"]),
        ListWatch(
            "networkpolicies",
            networking.list_network_policy_for_all_namespaces,
            cache,
            stop,
            TRIMMERS["networkpolicies"],
        ),
    ]
    for w in watches:
        w.start()
    if reconciler is not None:
        reconciler.start()
    return Runtime(
        view=cache,
        config=config,
        ready=lambda: all(w.synced.is_set() for w in watches),
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        cache_sizes=cache.sizes,
    )


def create_app(runtime: Runtime | None = None) -> Flask:
    """Entry point for gunicorn (`webhook.app:create_app()`) and for tests (pass a Runtime)."""
    if runtime is None:
        settings = WebhookSettings.from_env(os.environ)
        configure_logging(settings.log_level)
        resign = threading.Event()
        resign_on_sigterm(resign)
        runtime = start_cluster_runtime(settings, threading.Event(), resign)
    return build_app(runtime)
