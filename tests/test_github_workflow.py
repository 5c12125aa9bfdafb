"""The example GitHub workflow that checks a rollout every 30 minutes: valid for GitHub's
schema, clean under zizmor's security audits (offline), least privilege, and its check step
runs as written against the demo service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from servers import demo_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "github" / "rollout-check.yml"
BIN = Path(sys.executable).parent
TOKEN = "admin-" + "t" * 40

# canary is over at once and quarter needs a person: the check has something to say
VALUES = """\
enforce_enabled: true
rollout:
  enabled: true
  check_interval_seconds: 86400
  stages:
    - {name: canary, percentage: 10, duration_seconds: 0, max_error_rate: 0.01}
    - {name: quarter, percentage: 25, duration_seconds: 0, max_error_rate: 0.01,
       requires_approval: true}
    - {name: full, percentage: 100, max_error_rate: 0.01}
"""


def workflow() -> dict:
    # PyYAML reads the `on:` key as True (YAML 1.1); GitHub reads it as "on"
    return yaml.safe_load(WORKFLOW.read_text())


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is installed by the test extra (pip install '.[test]')"
    return str(path)


def test_the_workflow_matches_githubs_schema():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_even_as_an_auditor():
    # the auditor persona also reports what the default one suppresses (e.g. secrets used
    # outside a dedicated environment)
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", "--persona=auditor", str(WORKFLOW)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr, result.stdout
    assert "suppressed" not in result.stdout + result.stderr, result.stdout


def test_the_workflow_runs_every_30_minutes_with_no_permissions():
    document = workflow()
    triggers = document[True]
    assert triggers["schedule"] == [{"cron": "*/30 * * * *"}]
    assert "workflow_dispatch" in triggers
    assert document["permissions"] == {}
    for job in document["jobs"].values():
        assert job["permissions"] == {}
        assert job["environment"] == "rollout-check"  # its secrets reach this job only
        for step in job["steps"]:
            # no third-party code; an action would have to be pinned to a full commit SHA
            uses = step.get("uses")
            assert uses is None or len(uses.rpartition("@")[2]) == 40, uses
            # secrets reach the shell through env only, never pasted into the script
            assert "${{" not in step.get("run", "")


def check_step() -> dict:
    steps = workflow()["jobs"]["check"]["steps"]
    (step,) = [s for s in steps if "status --check" in s.get("run", "")]
    return step


def run_step(step: dict, runner_temp: Path, url: str, token: str) -> subprocess.CompletedProcess:
    """The step's script as the runner runs it (bash -e), with the secrets it names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}
    secrets = {"DRIFTGATE_URL": url, "DRIFTGATE_STATUS_TOKEN": token}
    for name, value in step["env"].items():
        secret = value.removeprefix("${{ secrets.").removesuffix(" }}")
        env[name] = secrets[secret]
    env.update({"RUNNER_TEMP": str(runner_temp), "GITHUB_ACTIONS": "true"})
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", step["run"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_check_step_runs_against_the_demo_service(tmp_path):
    # the install step's venv, made of the driftgate this test runs
    venv_bin = tmp_path / "runner" / "driftgate" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "driftgate").symlink_to(BIN / "driftgate")
    step = check_step()
    with demo_service(tmp_path / "service", VALUES, token=TOKEN) as url:
        result = run_step(step, tmp_path / "runner", url, TOKEN)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (
            "::warning title=driftgate rollout::stage canary (10%25) is done and waits for "
            "approval to enter quarter (25%25)"
        ) in result.stdout, result.stdout

        aborted = subprocess.run(
            [str(BIN / "driftgate"), "rollback", "--url", url, "--reason", "test"],
            env={**os.environ, "DRIFTGATE_ADMIN_TOKEN": TOKEN},
            capture_output=True,
            text=True,
        )
        assert aborted.returncode == 0, aborted.stderr
        result = run_step(step, tmp_path / "runner", url, TOKEN)
        assert result.returncode == 5, result.stdout + result.stderr
        assert "::error title=driftgate rollout::the rollout is aborted" in result.stdout

        unreachable = run_step(step, tmp_path / "runner", "http://127.0.0.1:9", TOKEN)
        assert unreachable.returncode == 2
        assert TOKEN not in unreachable.stdout + unreachable.stderr
