"""deploy/prometheus: promtool checks the config (with target files as the devnet writes them) and
runs the alert rules' unit tests; the dashboards in deploy/grafana are the generated ones."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from avs.monitoring import dashboards
from avs.monitoring.prometheus import DEPLOY_PROMETHEUS, compute_config, find_promtool
from avs.monitoring.targets import DEFAULT_METRICS_PORTS, ScrapeJob, ScrapeTarget, remove_targets, write_targets

DEPLOY = DEPLOY_PROMETHEUS.parent
PROMTOOL = find_promtool()
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: apt-get install -y --no-install-recommends prometheus"
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _copy_config(tmp_path: Path) -> Path:
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        shutil.copy(DEPLOY_PROMETHEUS / name, tmp_path / name)
    for job in ScrapeJob:
        targets = [ScrapeTarget(f"127.0.0.1:{DEFAULT_METRICS_PORTS[job]}", {"component": job.value})]
        write_targets(job, targets, tmp_path / "targets")
    return tmp_path


@needs_promtool
def test_promtool_check_config(tmp_path: Path) -> None:
    result = _promtool("check", "config", "prometheus.yml", cwd=_copy_config(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr  # every file_sd glob matched a valid file


@needs_promtool
def test_promtool_check_config_with_fast_scrapes(tmp_path: Path) -> None:
    """The config the live test and the devnet run (every interval 1 s) is valid too."""
    folder = _copy_config(tmp_path)
    config = compute_config(yaml.safe_load((folder / "prometheus.yml").read_text()), "1s")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", "prometheus.yml", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml", cwd=DEPLOY_PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", "alerts_test.yml", cwd=DEPLOY_PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_promtool_test() -> None:
    rules = yaml.safe_load((DEPLOY_PROMETHEUS / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((DEPLOY_PROMETHEUS / "alerts_test.yml").read_text())
    fired = {
        case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert alerts == fired
    assert {
        "AvsOperatorDown",
        "AvsOperatorSigningRateLow",
        "AvsOperatorSlashed",
        "AvsBatchNotCertifiedInTime",
    } <= alerts


def test_scrape_jobs_match_the_target_writer() -> None:
    config = yaml.safe_load((DEPLOY_PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["file_sd_configs"][0]["files"] for job in config["scrape_configs"]}
    assert jobs == {job.value: [f"targets/{job.value}*.json"] for job in ScrapeJob}


def test_write_targets_is_file_sd(tmp_path: Path) -> None:
    path = write_targets(
        ScrapeJob.OPERATORS,
        [ScrapeTarget("127.0.0.1:9092", {"operator": "op-1"}), ScrapeTarget("127.0.0.1:9192", {"operator": "op-2"})],
        tmp_path,
        {"network": "devnet"},
    )
    assert path == tmp_path / "operators.json"
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9092"], "labels": {"network": "devnet", "operator": "op-1"}},
        {"targets": ["127.0.0.1:9192"], "labels": {"network": "devnet", "operator": "op-2"}},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["operators.json"]  # no temp file left
    remove_targets(tmp_path)
    assert not list(tmp_path.iterdir())


def test_committed_dashboards_are_the_generated_ones() -> None:
    for name, dashboard in dashboards.DASHBOARDS.items():
        committed = (DEPLOY / "grafana" / "dashboards" / f"{name}.json").read_text()
        assert committed == dashboards.compute_dashboard_text(dashboard), "run python -m avs.monitoring.dashboards"


def test_dashboards_use_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/avs.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/avs"
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), path
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_compute_promql_replaces_grafana_variables() -> None:
    expr = 'sum(rate(x{instance=~"$instance"}[$__rate_interval]))'
    assert dashboards.compute_promql(expr) == 'sum(rate(x{instance=~".*"}[1m]))'


def test_the_alert_tests_use_the_buckets_the_aggregator_exports() -> None:
    """histogram_quantile cannot exceed the top finite bucket: AvsCertificationSlow (p95 > 120 s) can
    only fire if the exported buckets go past 120 s, and its unit test must use those buckets."""
    from avs_aggregator.metrics import REQUEST_BUCKETS

    tests = yaml.safe_load((DEPLOY_PROMETHEUS / "alerts_test.yml").read_text())
    used = {
        series["series"].split('le="')[1].split('"')[0]
        for test in tests["tests"]
        for series in test.get("input_series", [])
        if series["series"].startswith("avs_aggregator_request_seconds_bucket")
    }
    exported = {f"{b:g}" for b in REQUEST_BUCKETS} | {"+Inf"}
    assert used and used <= exported
    assert max(REQUEST_BUCKETS) > 120
