"""The PromQL name/label extraction the monitoring tests rely on (pure)."""

from __future__ import annotations

import pytest

from tests.monitoring_names import missing, scraped_series, used_series


def test_matchers_and_grouping_labels_are_needed_on_the_selector_below() -> None:
    expr = 'sum by (nodeport, protocol) (rate(nodeport_guard_dropped_packets_total{mode="enforce"}[5m])) > 1'
    assert used_series(expr) == {"nodeport_guard_dropped_packets_total": {"mode", "nodeport", "protocol"}}
    quantile = "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))"
    assert used_series(quantile) == {"x_bucket": {"le"}}
    assert used_series("count by (key_id) (a) != scalar(count(b))") == {"a": {"key_id"}, "b": set()}


def test_a_bad_expression_does_not_parse() -> None:
    with pytest.raises(ValueError):
        used_series("sum by (le (rate(x[5m]))")


def test_missing_names_and_labels_but_not_target_labels() -> None:
    scraped = scraped_series('# TYPE a counter\na_total{mode="audit"} 1\n')
    assert missing({"a_total": {"mode", "instance"}}, scraped) == []
    assert missing({"a_total": {"nodeport"}, "b": set()}, scraped) == ["a_total{nodeport}", "b"]
