"""`nodeport-guard-webhook serve`: run the webhook under gunicorn with its production config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeport-guard-webhook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve /mutate /validate /healthz /readyz /metrics over TLS")
    serve.add_argument("--bind", help="address:port (env NPG_BIND, default 0.0.0.0:8443)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.bind:
            os.environ["NPG_BIND"] = args.bind
        conf = Path(__file__).with_name("gunicorn_conf.py")
        argv_ = [sys.executable, "-m", "gunicorn", "-c", str(conf), "webhook.app:create_app()"]
        os.execv(sys.executable, argv_)  # noqa: S606 - replace this process with gunicorn
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
