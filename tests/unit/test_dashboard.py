"""The Grafana dashboard and the alert rules query metrics that exist, by their right names.

Every metric name in a PromQL expression of ``deploy/grafana/livecomments-dashboard.json``
and ``deploy/prometheus/alerts.yml`` must be one ``livecomments/kernel/metrics.py``
declares, with the suffix its type exports (``_total`` for a counter, ``_bucket``,
``_sum`` or ``_count`` for a histogram), or the process collector's, or one
Prometheus makes itself. ``tests/system/test_metrics.py`` then checks that a
running cluster exports each of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from livecomments.kernel import metrics as m

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "livecomments-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# Exported by prometheus_client's process collector in every process.
PROCESS = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"}
# Made by Prometheus (a target's scrape) or the blackbox exporter, not by us.
EXTERNAL = {"up", "probe_success"}
_NAME = re.compile(r"\b((?:livecomments|process)_[a-z0-9_]+|up|probe_success)\b(?!\s*\()")


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> list[str]:
        found: list[str] = []
        for panel in panels:
            found += [t["expr"] for t in panel.get("targets", ())]
            found += walk(panel.get("panels", []))
        return found

    return walk(document["panels"])


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def referenced() -> set[str]:
    """Every metric name the dashboard and the rules query."""
    names: set[str] = set()
    for expr in dashboard_expressions() + alert_expressions():
        # Label values and legends are quoted: not metric names.
        names.update(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))
    return names


def spec_of(sample: str) -> m.Spec | None:
    """The metric a sample name belongs to, if it is one of ours with the right suffix."""
    for spec in m.SPECS.values():
        if sample in spec.samples():
            return spec
    return None


def test_every_queried_name_is_a_declared_metric_with_its_suffix() -> None:
    names = referenced()
    assert len(names) > 30  # the regex found them
    wrong = sorted(n for n in names if n not in PROCESS | EXTERNAL and spec_of(n) is None)
    assert not wrong, f"not declared in livecomments/kernel/metrics.py (or a wrong suffix): {wrong}"


def test_the_dashboard_shows_what_operators_look_at() -> None:
    names = referenced()
    for spec in (
        m.POSTS, m.POST_DURATION, m.POST_STAGE, m.OUTBOX_DEPTH, m.OUTBOX_AGE, m.RTMS_DELIVERIES,
        m.RTMS_LATENCY, m.RTMS_VIEWERS, m.RTMS_SLOW_DROPS, m.ZK_CONNECTED,
        m.DISPATCHER_DROPPED,
    ):  # fmt: skip
        assert set(spec.samples()) & names, spec.name
    assert "process_cpu_seconds_total" in names
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(titles) == len(set(titles)), "two panels with one title"


def test_the_rules_cover_the_failures_of_the_issue() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    alerts = {rule["alert"]: rule for rule in rules}
    for name in (
        "LivecommentsOutboxAgeHigh", "LivecommentsZooKeeperDisconnected",
        "LivecommentsSlowViewerDropsHigh", "LivecommentsFanoutLatencyHigh",
        "LivecommentsProcessDown", "LivecommentsNotReady",
    ):  # fmt: skip
        assert name in alerts
        assert alerts[name]["annotations"]["summary"]


def test_specs_are_consistent() -> None:
    for spec in m.SPECS.values():
        assert spec.name.startswith("livecomments_")
        assert spec.components and set(spec.components) <= set(m.COMPONENTS)
        if spec.kind == m.HISTOGRAM:
            assert spec.name.endswith("_seconds"), spec.name
        if spec.kind == m.COUNTER:
            assert spec.family + "_total" == spec.name


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = m.Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(value)
    assert hist.buckets() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert hist.count == 5 and hist.sum == 8.65
