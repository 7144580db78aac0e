"""Which metric names and labels PromQL expressions use, and which of them a scrape lacks (pure).

Used by the monitoring tests: the chart's alert rules and Grafana dashboard against the real
/metrics of the webhook and the enforcers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import promql_parser as promql

# Put on every series by Prometheus at scrape time (target labels), not by the exporter.
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "container"})


def used_series(expr: str) -> dict[str, set[str]]:
    """metric name -> the labels the expression needs on it (its matchers, and the grouping labels
    of every aggregation above it). Raises ValueError when the expression does not parse."""
    used: dict[str, set[str]] = {}

    def visit(node: object, grouping: frozenset[str]) -> None:
        if isinstance(node, promql.VectorSelector):
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            used.setdefault(str(node.name), set()).update(labels | grouping)
        elif isinstance(node, promql.MatrixSelector):
            visit(node.vector_selector, grouping)
        elif isinstance(node, promql.AggregateExpr):
            modifier = node.modifier
            by = (
                frozenset(modifier.labels)
                if modifier is not None and modifier.type == promql.AggModifierType.By
                else frozenset()
            )
            visit(node.expr, grouping | by)
        elif isinstance(node, promql.BinaryExpr):
            visit(node.lhs, grouping)
            visit(node.rhs, grouping)
        elif isinstance(node, promql.Call):
            for arg in node.args:
                visit(arg, grouping)  # rate(), histogram_quantile() keep the series' labels
        elif isinstance(node, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
            visit(node.expr, grouping)

    visit(promql.parse(expr), frozenset())
    return used


def merge_used(exprs: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for expr in exprs:
        for name, labels in used_series(expr).items():
            out.setdefault(name, set()).update(labels)
    return out


def scraped_series(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def missing(used: Mapping[str, set[str]], scraped: Mapping[str, set[str]]) -> list[str]:
    """What `used` needs that `scraped` lacks: 'name' or 'name{label}'."""
    problems = []
    for name, labels in sorted(used.items()):
        if name not in scraped:
            problems.append(name)
            continue
        problems += [f"{name}{{{label}}}" for label in sorted(labels - TARGET_LABELS - scraped[name])]
    return problems
