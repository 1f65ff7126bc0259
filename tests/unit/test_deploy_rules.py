"""deploy/: the alert rules under promtool, and every query naming only exported metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from tests.fixtures.services import unavailable
from tests.support.promql import (
    ALERTS,
    ALERTS_TEST,
    alert_expressions,
    dashboard_expressions,
    exported_names,
    metric_names,
)
from worker.core import metrics


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool", "install Debian's `prometheus` package (.ci/run does)")
    return str(found)


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def registry_names() -> set[str]:
    return exported_names(generate_latest(metrics.REGISTRY).decode())


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    checked = run_promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_exercised_and_has_for_severity_and_runbook() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert rule["alert"] in fired, f"{rule['alert']} never fires in alerts_test.yml"


def test_alert_rules_name_only_metrics_the_worker_exports() -> None:
    exported = registry_names()
    for alert, expr in alert_expressions().items():
        names = metric_names(expr)
        assert names, alert
        assert names <= exported, f"{alert}: {names - exported} not on /metrics"


def test_each_dashboard_panel_queries_only_exported_metrics(tmp_path: Path) -> None:
    exported = registry_names()
    panels = dashboard_expressions()
    assert len(panels) >= 6
    for title, exprs in panels.items():
        assert exprs, title
        for expr in exprs:
            names = metric_names(expr)
            assert names and names <= exported, f"{title}: {expr} names {names - exported}"
    # And every query is valid PromQL: promtool parses them as recording rules.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(e for exprs in panels.values() for e in exprs)
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )
    checked = run_promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (topic) (rate(a_total{kind="x"}[5m])) > 0.1', {"a_total"}),
        ("b and on () (sum(rate(c[5m])) or on () vector(0)) == 0", {"b", "c"}),
        ("histogram_quantile(0.99, sum by (le) (rate(d_bucket[5m]))) > 1e3", {"d_bucket"}),
        ("absent(e)", {"e"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
