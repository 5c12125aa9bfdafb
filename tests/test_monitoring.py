"""The Prometheus rules and the Grafana dashboard as files: promtool checks and unit-tests the
rules, every alert has a test in which it fires and one in which it stays silent, and the
dashboard is importable JSON whose queries name only metrics driftgate exports."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from driftgate.demo import create_demo_app
from driftgate.settings import parse_settings
from servers import cohort_keys, require_tool

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "prometheus"
RULE_FILES = sorted(RULES.glob("*.rules.yml"))
RULE_TESTS = sorted((RULES / "tests").glob("*.test.yml"))
DASHBOARD = ROOT / "grafana" / "dashboards" / "verifier.json"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "le", "inf", "nan", "sum", "min", "max", "avg", "rate", "increase",
    "time", "clamp_min", "histogram_quantile", "label_values",
}  # fmt: skip
LABELS = {
    "job",
    "instance",
    "window",
    "mode",
    "policy_id",
    "rollout",
    "stage_name",
    "to_stage",
    "from_stage",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], cwd=RULES, capture_output=True, text=True, timeout=60
    )


def alert_names(path: Path) -> set[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def recorded_names(path: Path) -> set[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


@pytest.mark.integration
def test_rule_files_pass_promtool_check():
    assert RULE_FILES, "no rule files"
    result = promtool("check", "rules", *(p.name for p in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_rule_unit_tests_pass():
    result = promtool("test", "rules", *(str(p.relative_to(RULES)) for p in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.slow
@pytest.mark.integration
def test_rule_unit_tests_catch_a_broken_threshold(tmp_path):
    """The unit tests can fail: with the drift alerts' volume floor removed, the low-volume
    case pages and promtool says so."""
    broken = tmp_path / "driftgate.rules.yml"
    broken.write_text((RULES / "driftgate.rules.yml").read_text().replace(">= 100", ">= 1"))
    test = tmp_path / "tests" / "driftgate.test.yml"
    test.parent.mkdir()
    test.write_text((RULES / "tests" / "driftgate.test.yml").read_text())
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", "tests/driftgate.test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "drift alerts stay silent on low volume" in result.stdout + result.stderr


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_fires_and_stays_silent_in_a_unit_test(rules):
    cases: dict[str, set[str]] = {}
    for test_file in RULE_TESTS:
        spec = yaml.safe_load(test_file.read_text())
        if f"../{rules.name}" not in spec["rule_files"]:
            continue
        for group in spec["tests"]:
            for case in group.get("alert_rule_test", []):
                outcome = "fires" if case["exp_alerts"] else "silent"
                cases.setdefault(case["alertname"], set()).add(outcome)
    for alert in alert_names(rules):
        assert cases.get(alert) == {"fires", "silent"}, f"{alert}: tested {cases.get(alert)}"


def test_rules_cover_what_the_issue_asks():
    alerts = set().union(*(alert_names(p) for p in RULE_FILES))
    assert {
        "DriftgateDriftAboveLimit",
        "DriftgateDriftAboveTwiceLimit",
        "DriftgateReadinessGateClosed",
        "GuardianRolloutStuck",
        "GuardianRolloutRollback",
        "GuardianRolloutAnalysisErrors",
        "SolverBudgetOverrun",
        "SolverOverrunRateHigh",
        "SolverP95RuntimeHigh",
        "SolverSafetyStop",
    } <= alerts


def test_rules_record_the_per_window_ratio_names_of_the_original_dashboards():
    recorded = set().union(*(recorded_names(p) for p in RULE_FILES))
    assert {"adapt_drift_ratio_5m", "adapt_drift_ratio_15m", "adapt_drift_ratio_60m"} <= recorded


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> str:
    """The demo service's metrics after a drifting, a failing and an unstable decision."""
    state = tmp_path_factory.mktemp("demo") / "rollout.json"
    settings = parse_settings(
        {"enforce_enabled": True, "rollout": {"enabled": True, "state_path": str(state)}}
    )
    client = TestClient(create_demo_app(settings))
    subject = cohort_keys(1)[0]  # in the canary's 10 %
    for flag in ("_demo_drift", "_demo_error", "_demo_unstable"):
        body = {"policy_id": "lksg.v1", "context": {"subject_id": subject, flag: True}}
        assert client.post("/verify", json=body).status_code == 200
    return client.get("/api/v1/metrics").text


@pytest.mark.integration
def test_the_exposition_passes_promtool_lint(exposition):
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=exposition, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dashboard ---------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def panel_expressions() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_dashboard_is_importable_grafana_json():
    board = dashboard()
    classic_model = {"id", "uid", "title", "tags", "timezone", "editable", "graphTooltip",
                     "panels", "time", "timepicker", "templating", "annotations", "refresh",
                     "schemaVersion", "version", "links"}  # fmt: skip
    assert classic_model <= set(board)
    assert board["id"] is None  # Grafana assigns one on import
    assert board["uid"] == "driftgate-verifier"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_dashboard_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_has_the_panels_the_runbook_names():
    titles = " | ".join(title for title, _ in panel_expressions()).lower()
    for topic in [
        "drift ratio (fleet): 5m / 15m / 60m",
        "drift events (rate 5m) by policy",
        "rollout %",
        "requests by mode",
        "rollout stage",
        "rollout error rate",
        "advancements and rollbacks",
        "readiness gate",
        "signature uniqueness",
        "determinism mismatches",
    ]:
        assert topic in titles, topic


def test_dashboard_queries_name_only_exported_metrics(exposition):
    exported = set()
    for family in text_string_to_metric_families(exposition):
        exported |= {sample.name for sample in family.samples}
    for title, expr in panel_expressions():
        without_strings = re.sub(r'"[^"]*"', "", expr)
        without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
        for name in re.findall(r"\b[a-z_][a-z0-9_]*\b", without_ranges):
            if name not in PROMQL_WORDS | LABELS:
                assert name in exported, f"{title}: {name} is not a driftgate metric"


# -- the docs --------------------------------------------------------------------------------


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in markdown.splitlines()
        if line.startswith("#")
    }


def test_every_alert_links_to_a_runbook_section():
    runbook = ROOT / "docs" / "runbook_rollout.md"
    anchors = heading_anchors(runbook.read_text())
    for rules in RULE_FILES:
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                link = rule["annotations"]["runbook"]
                path, _, anchor = link.partition("#")
                assert ROOT / path == runbook, f"{rule['alert']}: {link}"
                assert anchor in anchors, f"{rule['alert']}: no section #{anchor}"
                if not rule["alert"].startswith("Solver"):
                    assert f"`{rule['alert']}`" in runbook.read_text(), rule["alert"]


def test_every_exported_metric_is_documented(exposition):
    documented = (ROOT / "docs" / "metrics.md").read_text()
    for family in text_string_to_metric_families(exposition):
        if family.name.startswith(("process_", "python_")):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in documented, name


def test_every_recorded_series_is_documented():
    documented = (ROOT / "docs" / "metrics.md").read_text()
    for rules in RULE_FILES:
        for name in recorded_names(rules):
            assert f"`{name}`" in documented, f"{rules.name}: {name}"
