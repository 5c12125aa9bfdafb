"""The command line against a service of several rollouts: `driftgate status` lists them all,
`--rollout NAME` picks one for status, advance and rollback, and `status --check` exits with the
most urgent of them."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

from servers import demo_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DRIFTGATE = Path(sysconfig.get_path("scripts")) / "driftgate"
TOKEN = "several-rollouts-token-" + "t" * 20
VALUES = """
enforce_enabled: true
rollouts:
  orders:
    policies: [orders.v2]
    check_interval_seconds: 3600
    stages:
      - {name: canary, percentage: 10, duration_seconds: 86400}
      - {name: full, percentage: 100, requires_approval: true}
  lksg:
    policies: [lksg.v1]
    check_interval_seconds: 3600
    stages:
      - {name: pilot, percentage: 25, duration_seconds: 86400}
      - {name: all, percentage: 100}
"""


def run(*args: str, token: bool = False, github: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTGATE_", "GITHUB_"))}
    if token:
        env["DRIFTGATE_ADMIN_TOKEN"] = TOKEN
    if github:
        env["GITHUB_ACTIONS"] = "true"
    return subprocess.run(
        [str(DRIFTGATE), *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with demo_service(tmp_path_factory.mktemp("several"), VALUES, TOKEN) as base:
        yield base


def test_status_lists_every_rollout_one_line_each(service):
    listed = run("status", "--url", service)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:2] == ["lksg", "pilot"] and "enforced 25%" in lines[0]
    assert lines[1].split()[:2] == ["orders", "canary"] and "enforced 10%" in lines[1]
    as_json = json.loads(run("status", "--url", service, "--json").stdout)
    assert sorted(as_json) == ["lksg", "orders"]
    assert as_json["orders"]["current_stage"]["name"] == "canary"


def test_rollout_picks_one_for_status_and_moves(service):
    one = run("status", "--url", service, "--rollout", "lksg")
    assert one.returncode == 0, one.stderr
    assert "stage      pilot (1 of 2), active" in one.stdout
    moved = run("advance", "--url", service, "--rollout", "lksg", token=True)
    assert moved.returncode == 0, moved.stderr
    assert "now all at 100%" in moved.stdout
    other = json.loads(run("status", "--url", service, "--rollout", "orders", "--json").stdout)
    assert other["current_stage"]["name"] == "canary"  # untouched
    back = run("rollback", "--url", service, "--rollout", "lksg", "--reason", "drift", token=True)
    assert back.returncode == 0, back.stderr
    unknown = run("status", "--url", service, "--rollout", "nope")
    assert unknown.returncode == 2
    assert "UNKNOWN_ROLLOUT" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = run("status", "--url", service, "--rollout", "no spaces")
    assert bad.returncode == 2 and "expected a rollout's name" in bad.stderr


def test_check_over_every_rollout_exits_with_the_most_urgent_and_names_each(service):
    # lksg aborted (a rollback from its first stage): 5 beats orders' 0
    for _ in range(3):
        run("rollback", "--url", service, "--rollout", "lksg", "--reason", "stop", token=True)
    checked = run("status", "--url", service, "--check", github=True)
    assert checked.returncode == 5, checked.stdout + checked.stderr
    assert "lksg" in checked.stdout and "aborted" in checked.stdout
    annotations = [line for line in checked.stdout.splitlines() if line.startswith("::")]
    assert annotations == [
        "::error title=driftgate rollout::rollout lksg: the rollout is aborted: enforcement is at "
        "0%25 until `driftgate advance` resumes it"  # % escaped, as the runner asks
    ]
    only_orders = run("status", "--url", service, "--check", "--rollout", "orders")
    assert only_orders.returncode == 0, only_orders.stdout
    resumed = run("advance", "--url", service, "--rollout", "lksg", token=True)
    assert resumed.returncode == 0, resumed.stderr


def test_state_export_takes_one_rollout_from_the_service_or_the_values(service, tmp_path):
    exported = run("state", "export", "--url", service, "--rollout", "orders")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["stage_name"] == "canary"
    values = tmp_path / "values.yaml"
    values.write_text(VALUES)
    state = tmp_path / "state"
    from_file = run(
        "state", "export", "--config", str(values), "--state-dir", str(state), "--rollout", "lksg"
    )
    # the rollout's own state file, derived from its name: none written there yet
    assert from_file.returncode == 9
    assert f"state file {state / 'rollout-lksg.json'} holds no rollout state" in from_file.stderr
    unnamed = run("state", "export", "--config", str(values), "--state-dir", str(state))
    assert unnamed.returncode == 2
    assert "--rollout default: the values configure no such rollout" in unnamed.stderr
    assert "lksg, orders" in unnamed.stderr
