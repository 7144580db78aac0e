"""`python -m certs generate|signing-key|install|rotate`: the webhook PKI and Ed25519 signing-key tool (wiring only)."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from certs.install import InstallError, apply_tls_secret, inject_ca_bundle, install, load_api_client
from certs.pki import (
    CA_DAYS,
    NAMESPACE,
    SERVICE_NAME,
    SERVING_DAYS,
    IPAddress,
    PkiError,
    build_ca,
    build_signing_key,
    expires_within,
    issue_serving_cert,
    list_sans,
    service_dns_names,
)
from certs.store import CertsDir, StoreError

logger = logging.getLogger("certs")


def _ip(value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--ip {value!r} is not an IPv4 or IPv6 address") from exc


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from exc
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be positive")
    return number


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from exc
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m certs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="create a CA, a serving certificate and a signing key pair in a directory")
    gen.add_argument(
        "--out", type=Path, required=True, help="directory for ca.crt ca.key tls.crt tls.key signing.pem signing.pub"
    )
    gen.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    gen.add_argument("--ip", action="append", type=_ip, default=[], help="extra IP SAN, e.g. 127.0.0.1 (repeatable)")
    gen.add_argument("--days", type=_positive, default=SERVING_DAYS, help="serving certificate validity in days")
    gen.add_argument("--service", default=SERVICE_NAME, help="webhook Service name (for the default SANs)")
    gen.add_argument("--service-namespace", default=NAMESPACE, help="webhook Service namespace (default SANs)")
    gen.add_argument("--force", action="store_true", help="replace an existing CA (clients must get the new ca.crt)")
    gen.add_argument("--new-signing-key", action="store_true", help="replace an existing signing.pem (kept by default)")

    key = sub.add_parser(
        "signing-key", help="create the Ed25519 signing key pair (signing.pem, signing.pub) in a directory if missing"
    )
    key.add_argument("--dir", type=Path, required=True, help="directory for signing.pem and signing.pub")
    key.add_argument("--new", action="store_true", help="replace an existing pair (step 1 of a rotation)")

    ins = sub.add_parser("install", help="create/update the Secrets and inject the CA into the webhook configurations")
    ins.add_argument("--kubeconfig", type=Path, required=True)
    ins.add_argument("--dir", type=Path, default=Path("."), help="directory written by `generate`")
    ins.add_argument("--namespace", default=NAMESPACE, help="namespace of the Secrets")
    ins.add_argument(
        "--replace-signing-key",
        action="store_true",
        help="rotate: the local signing.pem becomes the signing key; the old public key stays trusted as 'previous'",
    )
    ins.add_argument(
        "--drop-previous-signing-key",
        action="store_true",
        help="finish a rotation: stop trusting the previous public key (after the webhook re-signed every annotation)",
    )
    ins.add_argument(
        "--public-key-only",
        action="store_true",
        help="only publish the public key in the ConfigMap (first step of the upgrade from HMAC signatures)",
    )
    ins.add_argument(
        "--signing-key-only",
        action="store_true",
        help="only the signing keys (when cert-manager issues the TLS certificate and injects the CA)",
    )

    for name, text in (
        ("bootstrap", "in the cluster (the chart's pre-install hook): TLS Secret, signing keys if missing"),
        ("inject", "in the cluster (the chart's post-install hook): copy the TLS Secret's CA into both webhooks"),
    ):
        hook = sub.add_parser(name, help=text)
        hook.add_argument("--namespace", required=True, help="the release namespace (holds the Secrets)")
        if name == "bootstrap":
            hook.add_argument("--signing-key-only", action="store_true", help="cert-manager issues the TLS certificate")
    rot = sub.add_parser(
        "rotate",
        help="re-issue the serving certificate (from the same CA when it expires soon; or from a new CA with --ca)",
    )
    rot.add_argument("--dir", type=Path, required=True, help="directory written by `generate`")
    rot.add_argument("--kubeconfig", type=Path, help="also update the TLS Secret in this cluster")
    rot.add_argument("--namespace", default=NAMESPACE, help="namespace of the TLS Secret")
    rot.add_argument("--renew-before", type=_non_negative, default=30, help="days before expiry to re-issue")
    rot.add_argument("--days", type=_positive, default=SERVING_DAYS, help="validity of the new certificate in days")
    rot.add_argument("--force", action="store_true", help="re-issue even if the certificate is not expiring")
    rot.add_argument(
        "--ca",
        action="store_true",
        help="also replace the CA: the apiserver trusts the new and the previous CA until --drop-previous-ca",
    )
    rot.add_argument(
        "--drop-previous-ca",
        action="store_true",
        help="finish a CA rotation: stop trusting the previous CA (once every webhook pod serves the new certificate)",
    )
    return parser


def cmd_generate(args: argparse.Namespace, now: datetime.datetime) -> int:
    store = CertsDir(args.out)
    if store.has_ca() and not args.force:
        logger.error(
            "%s already holds a CA; pass --force to replace it (every client must then trust the new ca.crt), "
            "or use `rotate` to re-issue only the serving certificate",
            args.out,
        )
        return 2
    ca = build_ca(now, days=CA_DAYS)
    names = [*service_dns_names(args.service, args.service_namespace), *args.dns]
    serving = issue_serving_cert(ca, now, names, args.ip, days=args.days)
    store.write_ca(ca)
    store.write_serving(serving)
    if store.read_signing_key() is None or args.new_signing_key:
        store.write_signing_key(build_signing_key())
    else:
        logger.info("kept the existing %s (pass --new-signing-key to replace it)", store.file("signing.pem"))
    sans = list_sans(serving.cert)
    logger.info(
        "wrote %s: CA valid until %s, serving certificate valid until %s for %s",
        args.out,
        ca.cert.not_valid_after_utc.date().isoformat(),
        serving.cert.not_valid_after_utc.date().isoformat(),
        ", ".join([*sans.dns, *map(str, sans.ips)]),
    )
    return 0


def cmd_signing_key(args: argparse.Namespace) -> int:
    store = CertsDir(args.dir)
    existing = store.read_signing_key()
    if existing is not None and not args.new:
        logger.info("kept %s (key id %s); pass --new to replace it", store.file("signing.pem"), existing.public.key_id)
        return 0
    signer = build_signing_key()
    store.write_signing_key(signer)
    logger.info("wrote %s and signing.pub (key id %s)", store.file("signing.pem"), signer.public.key_id)
    if existing is not None:
        logger.info(
            "to rotate: `python -m certs install --dir %s --signing-key-only --replace-signing-key`, then restart "
            "the webhook (docs/operations.md, 'Signing-key rotation')",
            args.dir,
        )
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    store = CertsDir(args.dir)
    tls = None
    if not args.signing_key_only and not args.public_key_only:
        serving = store.read_serving()
        # During a CA rotation the bundle holds the previous CA too: re-running install keeps it trusted.
        tls = (serving.cert_pem(), serving.key_pem(), store.read_ca_bundle_pem())
    api_client = load_api_client(args.kubeconfig)
    try:
        report = install(
            api_client,
            args.namespace,
            tls,
            store.read_signing_key(),
            args.replace_signing_key,
            args.drop_previous_signing_key,
            args.public_key_only,
        )
    finally:
        api_client.close()
    logger.info("Secret %s/nodeport-guard-signing-private-key: %s", args.namespace, report.signing_secret)
    logger.info(
        "ConfigMap %s/nodeport-guard-signing-public-keys: %s (trusted key ids: %s)",
        args.namespace,
        report.public_keys,
        ", ".join(report.key_ids),
    )
    if args.replace_signing_key and report.signing_secret == "updated":  # noqa: S105 - an outcome, not a secret
        logger.info(
            "rotation started: wait until every enforcer trusts key id %s (metric "
            "nodeport_guard_trusted_signing_keys, at most 30 s), then "
            "`kubectl -n %s rollout restart deployment/nodeport-guard-webhook`",
            report.key_ids[0],
            args.namespace,
        )
    if report.tls_secret is not None:
        logger.info("Secret %s/nodeport-guard-webhook-tls: %s", args.namespace, report.tls_secret)
    for kind, name, outcome in report.ca_bundles:
        logger.info("%s nodeport-guard webhook %s caBundle: %s", kind, name, outcome)
    return 0


def cmd_rotate(args: argparse.Namespace, now: datetime.datetime) -> int:
    """Re-issue the serving certificate; with --ca from a new CA, trusted next to the old one.

    The order keeps every admission working: the apiserver trusts the new CA (caBundle: new, then
    previous) before any webhook pod can serve a certificate issued by it, and the previous CA is
    only dropped by a later `--drop-previous-ca`, once the pods have reloaded the new certificate.
    """
    if args.ca and args.drop_previous_ca:
        logger.error("--ca starts a CA rotation and --drop-previous-ca finishes one: run them one after the other")
        return 2
    store = CertsDir(args.dir)
    ca = store.read_ca()
    current = store.read_serving()
    window = datetime.timedelta(days=args.renew_before)
    if args.ca:
        if store.has_previous_ca():
            logger.error(
                "%s still trusts a previous CA (%s): finish that rotation first with `rotate --drop-previous-ca`",
                args.dir, store.file("ca-previous.crt"),
            )
            return 2
        store.write_previous_ca(ca.cert_pem())
        ca = build_ca(now, days=CA_DAYS)
        store.write_ca(ca)
        logger.info("new CA in %s (valid until %s); the previous one stays trusted until --drop-previous-ca",
                    store.file("ca.crt"), ca.cert.not_valid_after_utc.date().isoformat())
    elif expires_within(ca.cert, window, now):
        logger.warning(
            "the CA in %s expires at %s: rotate it with `rotate --ca` (no failed admission), then "
            "`rotate --drop-previous-ca` once the webhook serves the new certificate",
            args.dir,
            ca.cert.not_valid_after_utc.isoformat(),
        )
    if args.drop_previous_ca:
        store.drop_previous_ca()
        logger.info("dropped the previous CA: only %s is trusted from now on", store.file("ca.crt"))
    if args.ca or args.force or expires_within(current.cert, window, now):
        sans = list_sans(current.cert)
        serving = issue_serving_cert(ca, now, sans.dns, sans.ips, days=args.days)
        store.write_serving(serving)
        logger.info(
            "re-issued %s (was valid until %s, now until %s)",
            store.file("tls.crt"),
            current.cert.not_valid_after_utc.isoformat(),
            serving.cert.not_valid_after_utc.isoformat(),
        )
        current = serving
    else:
        logger.info(
            "%s is valid until %s, beyond the %d-day window; nothing to do",
            store.file("tls.crt"),
            current.cert.not_valid_after_utc.isoformat(),
            args.renew_before,
        )
    if args.kubeconfig is not None:
        # Always reconcile both: a previous run may have written the files but failed here. The
        # caBundles first, so the apiserver trusts the issuer before the webhook serves the cert.
        bundle = store.read_ca_bundle_pem()
        api_client = load_api_client(args.kubeconfig)
        try:
            bundles = inject_ca_bundle(api_client, bundle)
            outcome = apply_tls_secret(api_client, args.namespace, current.cert_pem(), current.key_pem(), bundle)
        finally:
            api_client.close()
        for kind, name, result in bundles:
            logger.info("%s nodeport-guard webhook %s caBundle: %s", kind, name, result)
        logger.info("Secret %s/nodeport-guard-webhook-tls: %s", args.namespace, outcome)
        if args.ca:
            logger.info(
                "CA rotation started: once every webhook pod serves the new certificate (the kubelet refreshes "
                "the Secret volume within about a minute, the webhook reloads it within NPG_CERT_POLL_SECONDS; "
                "the webhook logs 'serving certificate reloaded'), run `python -m certs rotate --dir %s "
                "--kubeconfig %s --drop-previous-ca`",
                args.dir,
                args.kubeconfig,
            )
    return 0


def cmd_hook(args: argparse.Namespace, now: datetime.datetime) -> int:
    from certs import incluster

    api_client = incluster.incluster_api_client()
    try:
        if args.command == "bootstrap":
            incluster.bootstrap(api_client, args.namespace, now, tls=not args.signing_key_only)
        else:
            incluster.inject(api_client, args.namespace)
    finally:
        api_client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    now = datetime.datetime.now(datetime.UTC)
    try:
        if args.command == "generate":
            return cmd_generate(args, now)
        if args.command == "install":
            return cmd_install(args)
        if args.command == "signing-key":
            return cmd_signing_key(args)
        if args.command in ("bootstrap", "inject"):
            return cmd_hook(args, now)
        return cmd_rotate(args, now)
    except (PkiError, StoreError, InstallError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
