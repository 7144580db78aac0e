"""Monitoring as code, checked for real: the chart's alert rules and Grafana dashboard parse as
PromQL (promql-parser), every runbook_url names a section of docs/operations.md, and every metric
name and label they use from the webhook exists on the real webhook's /metrics (gunicorn + TLS,
after real AdmissionReviews from the real apiserver). The enforcers' names are held on the local
cluster (tests/cluster/test_7_helm.py), where they run on real nodes."""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from pathlib import Path

from tests.components import WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.integration.test_chart import CHART, _docs, helm_template
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.monitoring_names import merge_used, missing, scraped_series, used_series

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_PREFIXES = ("nodeport_guard_admission_", "nodeport_guard_cache_", "nodeport_guard_reconciler_")
# Not ours: kube-state-metrics (kube_*) and the apiserver's own view of its webhooks (apiserver_*).
EXTERNAL_PREFIXES = ("kube_", "apiserver_")


def alert_rules() -> list[dict[str, object]]:
    rendered = helm_template("--set", "monitoring.enabled=true", "--show-only", "templates/prometheusrule.yaml")
    (rule_object,) = _docs(rendered)
    rules: list[dict[str, object]] = [r for group in rule_object["spec"]["groups"] for r in group["rules"]]
    return rules


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def monitoring_exprs() -> list[str]:
    return [str(r["expr"]) for r in alert_rules()] + dashboard_exprs()


def ours(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    return {n: labels for n, labels in merge_used(monitoring_exprs()).items() if n.startswith(prefixes)}


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_parses_and_has_a_runbook_section() -> None:
    rules = alert_rules()
    # The table in docs/operations.md ("Alerts worth setting") has one row per alert.
    table = (REPO / "docs" / "operations.md").read_text().split("## Alerts worth setting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| alert")]
    assert len(rules) == len(rows) >= 14
    anchors = {
        _slug(line.lstrip("#"))
        for line in (REPO / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        assert used_series(str(rule["expr"])), f"{rule['alert']}: no metric in {rule['expr']}"
        url = str(rule["annotations"]["runbook_url"])  # type: ignore[index]
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: {url} names no section of docs/operations.md"


def test_every_dashboard_query_parses() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 8
    for expr in exprs:
        assert used_series(expr), expr


def test_every_metric_name_is_ours_or_named_external() -> None:
    for name in merge_used(monitoring_exprs()):
        assert name.startswith(("nodeport_guard_", *EXTERNAL_PREFIXES)), name


def test_the_webhook_serves_every_name_and_label_the_rules_and_dashboard_use(
    control_plane: ControlPlane, namespace: str, webhook: WebhookServer
) -> None:
    http = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    workload = (pod("web-1", {"app": "web"}, http), nodeport_service("web", {"app": "web"}, [{"port": 80}]))
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*workload))
    # One admitted and one denied policy, so the labelled series (endpoint, result) exist.
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(policy("deny-all", {}, [])))
    bad = policy("sloppy", {}, [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}])
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(bad), check=False)
    ctx = ssl.create_default_context(cafile=str(webhook.install.certs_dir / "ca.crt"))
    with urllib.request.urlopen(f"{webhook.url}/metrics", context=ctx, timeout=10) as response:  # noqa: S310
        scraped = scraped_series(response.read().decode())
    used = ours(WEBHOOK_PREFIXES)
    assert used, "the rules and the dashboard use no webhook metric"
    assert missing(used, scraped) == []
