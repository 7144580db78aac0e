"""gunicorn app factories for the admission benchmark: the real webhook over a preloaded cache, and the floor (I/O).

`gunicorn -c webhook/gunicorn_conf.py 'bench.webhook_app:create_bench_app()'` serves the real
`webhook.app.build_app` with its production `ClusterCache` holding the benchmark cluster (as
list+watch would fill it, trimmed); `create_floor_app()` is a trivial Flask app under the same
gunicorn + TLS config that answers every AdmissionReview with a constant "allowed".
"""

from __future__ import annotations

import gc
import json
import logging

from flask import Flask, Response, request

from bench import data
from bench.resolution import fill_cache
from webhook.admission import AdmissionConfig
from webhook.app import Runtime, build_app

logger = logging.getLogger(__name__)


def create_bench_app() -> Flask:
    cluster = data.build_cluster()
    cache = fill_cache(cluster)
    del cluster  # production never holds the untrimmed objects: only the cache stays
    gc.collect()
    runtime = Runtime(
        view=cache,
        config=AdmissionConfig(signing_key=data.BENCH_SIGNING_KEY),
        ready=lambda: True,
        cache_sizes=cache.sizes,
    )
    logger.warning("benchmark webhook ready", extra={"objects": cache.sizes()})
    return build_app(runtime)


def create_floor_app() -> Flask:
    app = Flask("nodeport-guard-bench-floor")

    @app.post("/mutate")
    def mutate() -> Response:
        # The least an AdmissionReview webhook can do: read the body, echo the uid, allow.
        uid = json.loads(request.get_data())["request"]["uid"]
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": True},
        }
        return Response(json.dumps(answer), mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    return app
