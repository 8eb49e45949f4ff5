"""deploy/prometheus and deploy/grafana: every query selects series the service really exports.

Without Prometheus: the YAML and JSON parse, each alert has a severity and a summary, and each
metric name and label matcher exists in reaseq/service/metrics.py (names from its collectors,
label values from its error kinds and buckets). With promtool (Debian package `prometheus`;
REASEQ_REQUIRE_PROMTOOL=1 makes its absence a failure): `promtool check rules` and `check
config`, every dashboard query parsed by promtool, and the rule unit tests
(deploy/prometheus/*.test.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
ALERTS = PROM / "alerts.yaml"
DASHBOARD = GRAFANA / "reaseq-dashboard.json"
SEVERITIES = {"critical", "warning", "info"}


def rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_panels() -> list[dict]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]
    out += [(a["name"], a["expr"]) for a in doc["annotations"]["list"] if "expr" in a]
    return out


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("REASEQ_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not installed: apt-get install -y prometheus")
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
    return binary


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


# ---- rules, without Prometheus


def test_every_alert_has_severity_summary_and_description() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 10
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in alerts:
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        assert rule.get("annotations", {}).get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]


def test_the_alerts_the_operations_need_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    needs = {
        "ReaseqLatencySLOBurnFast": "reaseq:latency_slo_bad_ratio:rate5m",
        "ReaseqLatencySLOBurnSlow": "reaseq:latency_slo_bad_ratio:rate3d",
        "ReaseqHighErrorRate": "reaseq_errors_total",
        "ReaseqFeatureStoreUnavailable": 'kind="feature_store_unavailable"',
        "ReaseqModelBackendUnavailable": 'kind="model_backend_unavailable"',
        "ReaseqTritonFallback": "reaseq_triton_fallback_total",
        "ReaseqReleaseRefused": "reaseq_releases_refused_total",
        "ReaseqReleaseFallback": "reaseq_release_fallback",
        "ReaseqActiveReleaseOld": "time() - (reaseq_active_release_created_timestamp_seconds",
        "ReaseqNotReady": "reaseq_ready",
        "ReaseqReleaseSkew": "reaseq_active_release",
    }
    for alert, fragment in needs.items():
        assert alert in exprs, f"missing alert {alert}"
        assert fragment in exprs[alert], f"{alert} does not use {fragment}"


def test_slo_rules_use_one_target_that_is_a_bucket_boundary() -> None:
    bad_ratio = [
        rule for rule in rules() if rule.get("record", "").startswith("reaseq:latency_slo")
    ]
    assert {r["record"].rsplit(":", 1)[1] for r in bad_ratio} == {
        "rate5m",
        "rate30m",
        "rate1h",
        "rate2h",
        "rate6h",
        "rate1d",
        "rate3d",
    }
    les = {
        value
        for rule in bad_ratio
        for sel in promql.selectors(rule["expr"])
        for label, _, value in sel.matchers
        if label == "le"
    }
    assert les == {"0.05"}, f"one SLO target across the windows, got {les}"


def test_rule_expressions_select_exported_series() -> None:
    known = recorded()
    issues = {}
    for rule in rules():
        found = promql.problems(rule["expr"], known)
        if found:
            issues[rule.get("alert") or rule["record"]] = found
    assert not issues, issues
    used = {sel.metric for rule in rules() for sel in promql.selectors(rule["expr"])}
    assert used - known - promql.PROMETHEUS_SERIES <= set(promql.exported())


def test_the_checker_catches_wrong_names_labels_and_values() -> None:
    assert promql.problems("rate(reaseq_requests[5m])")  # a Counter is X_total
    assert promql.problems('reaseq_errors_total{reason="x"}')
    assert promql.problems('reaseq_errors_total{kind="store_down"}')
    assert promql.problems('reaseq_stage_latency_seconds_bucket{le="0.050"}')
    assert promql.problems('reaseq_stage_latency_seconds_bucket{stage="network"}')
    assert not promql.problems(
        'sum by (le) (rate(reaseq_stage_latency_seconds_bucket{stage="total", le="+Inf"}[5m]))'
    )
    assert [
        s.metric for s in promql.selectors("topk by (job) (1, count by (job, r) (x == 1))")
    ] == ["x"]


# ---- dashboard, without Grafana


def test_dashboard_queries_select_exported_series() -> None:
    known = recorded()
    issues = {
        title: found
        for title, expr in dashboard_queries()
        if (found := promql.problems(promql.expand_grafana(expr), known))
    }
    assert not issues, issues


def test_dashboard_shows_every_metric_of_the_service() -> None:
    shown = {
        sel.metric
        for _, expr in dashboard_queries()
        for sel in promql.selectors(promql.expand_grafana(expr))
    }
    families = {promql.exported()[name].family for name in shown if name in promql.exported()}
    missing = set(promql.collectors()) - families
    assert not missing, f"metrics without a panel: {sorted(missing)}"


def test_dashboard_structure() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'job="$job"' in target["expr"], f"{panel['title']}: not filtered by $job"


def test_grafana_provisioning() -> None:
    (source,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus"
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "reaseq.yaml").read_text()
    )["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# ---- with promtool


def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    binary = promtool()
    done = run([binary, "check", "rules", str(ALERTS)], PROM)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([binary, "check", "config", "prometheus.yml"], PROM)
    if done.returncode != 0 and "kubernetes_sd_configs not found" in done.stdout + done.stderr:
        # Debian's promtool is built without Kubernetes service discovery: check the rest of
        # the file (relabelling, rule files) with the discovery swapped for a static target
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        for job in config["scrape_configs"]:
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
        config["rule_files"] = [str(ALERTS)]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        done = run([binary, "check", "config", "prometheus.yml"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    binary = promtool()
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query{i}", "expr": promql.expand_grafana(expr)}
            for i, (_, expr) in enumerate(dashboard_queries())
        ],
    }
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    done = run([binary, "check", "rules", "dashboard.yaml"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    binary = promtool()
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # the cases pin labels; check rules pins templates
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = sorted(PROM.glob("*.test.yaml"))
    assert len(tests) == 2
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    done = run([binary, "test", "rules", *(t.name for t in tests)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
