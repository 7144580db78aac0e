"""Print the certificate a TLS server presents (PEM), unverified: `python -m tests.faults.tls_peek HOST PORT`.

Run inside a namespace that routes to the pods (the control plane's, as the apiserver does) to see
which certificate each webhook pod serves right now.
"""

from __future__ import annotations

import ssl
import sys


def main(argv: list[str]) -> int:
    host, port = argv[0], int(argv[1])
    try:
        pem = ssl.get_server_certificate((host, port), timeout=5)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(pem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
