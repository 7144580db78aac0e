"""Production gunicorn configuration for the webhook (plain Python, read by `gunicorn -c`).

One worker process with threads: the cache (tens of MB for large clusters) and the reconciler
live once per pod instead of once per worker. TLS 1.2+ only; a rotated certificate on disk is
loaded into the live SSL context, so new handshakes use it and in-flight requests continue.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

bind = os.environ.get("NPG_BIND", "0.0.0.0:8443")
workers = int(os.environ.get("NPG_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("NPG_THREADS", "8"))
backlog = 256
timeout = 30
graceful_timeout = 20
keepalive = 75  # the apiserver keeps webhook connections alive; don't close them under it
certfile = os.environ.get("NPG_TLS_CERT_FILE", "/etc/nodeport-guard/tls/tls.crt")
keyfile = os.environ.get("NPG_TLS_KEY_FILE", "/etc/nodeport-guard/tls/tls.key")
accesslog = None
errorlog = "-"
loglevel = os.environ.get("NPG_LOG_LEVEL", "info").lower()
CERT_POLL_SECONDS = float(os.environ.get("NPG_CERT_POLL_SECONDS", "10"))
logger = logging.getLogger("webhook.tls")


def _watch_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    def stamp() -> tuple[float, float]:
        return (os.stat(cert).st_mtime, os.stat(key).st_mtime)

    seen = stamp()
    while True:
        threading.Event().wait(CERT_POLL_SECONDS)
        try:
            current = stamp()
            if current != seen:
                context.load_cert_chain(cert, key)
                seen = current
                # Operators finish a CA rotation once every pod logged this (docs/operations.md).
                logger.info("serving certificate reloaded", extra={"cert_file": cert})
        except (OSError, ssl.SSLError):
            continue  # mid-rotation (files being replaced): try again on the next poll


def ssl_context(config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    threading.Thread(
        target=_watch_certificate, args=(context, config.certfile, config.keyfile), name="cert-reload", daemon=True
    ).start()
    return context
