"""A process killed at any moment leaves a valid state file holding a committed state."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest

import driftgate
from driftgate import RolloutConfig, RolloutManager

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KILLS = 200

CHILD = """
import sys
import driftgate

manager = driftgate.RolloutManager(
    driftgate.RolloutConfig.default(),
    registry=driftgate.MetricsRegistry(),
    state_path=sys.argv[1],
)
print("ready", manager.get_status(transitions=0)["version"], flush=True)
while True:
    # canary <-> quarter: every call is a committed transition
    if manager.get_status(transitions=0)["current_stage"]["name"] == "canary":
        manager.manual_advance("crash-test")
    else:
        manager.manual_rollback("crash-test", "crash test")
    print(manager.get_status(transitions=0)["version"], flush=True)
"""


def test_sigkill_at_random_moments_leaves_a_committed_state(tmp_path):
    path = tmp_path / "rollout.json"
    rng = random.Random(2026)
    last_committed = 0
    for _ in range(KILLS):
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
        ) as child:
            ready = child.stdout.readline().split()
            assert ready[0] == "ready", ready
            # The restarted process resumed exactly where the killed one left the file.
            assert int(ready[1]) == last_committed or last_committed == 0
            # A random moment to kill at: somewhere inside the next few transitions.
            time.sleep(rng.uniform(0, 0.02))
            child.send_signal(signal.SIGKILL)
            printed = [int(line) for line in child.stdout.read().split()]
        returned = printed[-1] if printed else int(ready[1])

        saved = json.loads(path.read_text())  # parses: never torn
        # Either the last state a call returned with, or the one being committed when killed.
        assert saved["version"] in (returned, returned + 1)
        assert saved["stage_name"] in ("canary", "quarter")
        resumed = RolloutManager(
            RolloutConfig.default(), registry=driftgate.MetricsRegistry(), state_path=path
        )
        assert resumed.get_status(transitions=0)["version"] == saved["version"]
        last_committed = saved["version"]
    # The children did make transitions between kills (fewer on a loaded machine).
    assert last_committed > KILLS // 2
