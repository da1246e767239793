"""The Grafana dashboard and the Prometheus alert rules shipped in monitoring/: promtool checks
and unit-tests the rules against a recorded hour of a fleet, checks every dashboard query as
PromQL, and every gossipfl_* name they use must be one a peer really serves on /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from peer.runtime.metrics import PeerMetrics

from .netfixtures import ROOT, free_ports

MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
NAME = re.compile(r"\bgossipfl_[a-zA-Z0-9_]+")
# Grafana's variables, as a query would be sent for the default selection
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "gossipfl"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (.ci/install installs Debian's prometheus package)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables' queries."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def alert_queries() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def served_names(share_learning_metrics: bool) -> set[str]:
    """The sample names a peer's /metrics page carries once it has done a round with privacy
    on and seen a rejection (scraped over HTTP, as Prometheus does)."""
    (port,) = free_ports(1)
    m = PeerMetrics("gw-1", "12D3KooWpeer", neighbours=2, share_learning_metrics=share_learning_metrics)
    m.start(f"127.0.0.1:{port}", loop_lag=False)
    try:
        m.bytes_in(10)
        m.bytes_out(10)
        m.rejected("bad_signature")
        m.round_done(3, train={"loss": 0.5}, eval={"accuracy": 0.75}, heard=["x"], aggregated=True, seconds=1.0,
                     privacy={"mode": "update", "epsilon": 1.5, "budget": 10.0, "exhausted": False})
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        m.stop()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_alert_rules_pass_promtool_check():
    r = promtool("check", "rules", ALERTS.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_queries())} rules found" in r.stdout


def test_alert_rules_fire_on_the_recorded_fleet_and_only_there():
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == set(alert_queries())  # every alert is shown firing at least once


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each dashboard query as the expression of a recording rule."""
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)  # Grafana's, not PromQL
        rules.append({"record": f"dashboard:query_{i}", "expr": match.group(1) if match else expr})
        assert "$" not in rules[-1]["expr"], expr
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_is_importable_grafana_json():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "job"} <= variables
    for p in doc["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for t in p.get("targets", []):  # every query goes to the chosen Prometheus
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"], p["title"]


def test_every_metric_the_dashboard_and_the_alerts_use_is_served_by_a_peer():
    shared = served_names(share_learning_metrics=True)
    default = served_names(share_learning_metrics=False)
    used_by_dashboard = {n for e in dashboard_queries() for n in NAME.findall(e)}
    used_by_alerts = {n for e in alert_queries().values() for n in NAME.findall(e)}
    assert used_by_dashboard and used_by_alerts
    assert used_by_dashboard - shared == set()
    assert used_by_alerts - default == set()  # alerts never depend on an opt-in metric
    learning = {"gossipfl_train_metric", "gossipfl_eval_metric"}
    assert learning <= used_by_dashboard and not learning & default
    # and the other way round: everything a peer serves is on the dashboard (histograms by
    # their buckets; the _created time stamps of counters left out)
    def base(names):
        return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names if not n.endswith("_created")}

    assert base(shared) - base(used_by_dashboard) == set()


def test_the_readme_says_how_to_load_them():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Watching a fleet", 1)[1].split("\n## ", 1)[0]
    for needed in ("monitoring/grafana-dashboard.json", "monitoring/alerts.yml", "rule_files",
                   "promtool test rules", *alert_queries()):
        assert needed in section, needed


def test_the_monitoring_folder_holds_what_the_readme_names():
    assert sorted(p.name for p in Path(MONITORING).iterdir()) == ["alerts.yml", "alerts_test.yml",
                                                                  "grafana-dashboard.json"]
