"""The stub matches the compiled core, and the installed package type-checks strictly, for its
own code and for a user's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent

USAGE = """
import numpy as np

import driftgate
from driftgate import DriftTracker, Enforcer, EnforceOptions, ManualClock, Verdict

tracker = DriftTracker(clock=ManualClock(0.0), registry=driftgate.MetricsRegistry())
shadow = np.zeros(8, dtype=np.uint8)
enforced = np.full(8, 2, dtype=np.uint8)
drift: int = tracker.record_batch("lksg.v1", shadow, enforced)
drift += tracker.record_batch("lksg.v1", b"\\x00\\x01", bytearray(b"\\x00\\x02"))
drift += tracker.record_batch("lksg.v1", memoryview(b"\\x00"), memoryview(b"\\x02"))

enforcer = Enforcer(EnforceOptions(enforce=True, rollout_percent=50), tracker)
pair = enforcer.decide("lksg.v1", "key", Verdict.OK, lambda: "fail")
in_rollout: bool = pair.in_rollout
verdict: Verdict = driftgate.parse_verdict("warn")
ratio: float = tracker.ratio_5m()
"""


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_stub_matches_the_extension(tmp_path: Path) -> None:
    allowlist = ROOT / "python" / "stubtest-allowlist.txt"
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "driftgate._core", "--allowlist", str(allowlist)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_allowlist_holds_only_the_pybind11_metaclass() -> None:
    entries = [
        line
        for line in (ROOT / "python" / "stubtest-allowlist.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert entries
    assert all(line.endswith("# metaclass pybind11_type") for line in entries), entries


def test_package_passes_mypy_strict(tmp_path: Path) -> None:
    # the checkout's package, stub included, so an edit is checked before it is installed
    result = mypy("--strict", "--cache-dir", str(tmp_path), "-p", "driftgate", cwd=ROOT / "python")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12"])
def test_typed_usage_passes_mypy_strict(version: str, tmp_path: Path) -> None:
    (tmp_path / "usage.py").write_text(USAGE)
    result = mypy("--strict", "--python-version", version, "usage.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_types_are_caught(tmp_path: Path) -> None:
    (tmp_path / "wrong.py").write_text(
        "import numpy as np\nimport driftgate\n"
        "tracker = driftgate.DriftTracker()\n"
        'tracker.record_batch("p", [0, 1], np.zeros(2, dtype=np.uint8))\n'
        "driftgate.parse_verdict(3)\n"
    )
    result = mypy("--strict", "--python-version", "3.11", "wrong.py", cwd=tmp_path)
    assert result.returncode == 1
    assert 'Argument 2 to "record_batch"' in result.stdout
    assert 'Argument 1 to "parse_verdict"' in result.stdout
