"""Logging where an operator looks: `driftgate serve` puts the rollout monitor's decisions on
stderr at the level of the values file or `--log-level`, and no line shows a bound method's
repr; under plain uvicorn, the lines docs/cli.md documents do the same for a user's app."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from driftgate.cli import LOG_LEVELS, main
from driftgate.settings import LOG_LEVELS as SETTINGS_LOG_LEVELS
from servers import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
ROLLOUT = "rollout: {enabled: true, check_interval_seconds: 1}\n"
DECISION = "INFO driftgate.rollout: rollout held: canary -> canary (10%)"


@contextmanager
def process_stderr(command: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """Runs `command`, collecting its stderr lines as they come; stops it at the end."""
    process = subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        process.terminate()
        process.wait(10)
        reader.join(10)
        process.stderr.close()


def serve(folder: Path, values: str, *flags: str):
    (folder / "values.yaml").write_text(values)
    port = free_port()
    command = [sys.executable, "-m", "driftgate.cli", "serve", "--config", "values.yaml"]
    command += ["--state-dir", "state", "--port", str(port), *flags]
    return process_stderr(command, folder), f"http://127.0.0.1:{port}"


def logged(lines: list[str], process: subprocess.Popen, text: str) -> str | None:
    if process.poll() is not None:
        raise AssertionError(f"exited with {process.returncode}:\n{''.join(lines)}")
    return next((line for line in list(lines) if text in line), None)


def test_serve_logs_the_monitors_decisions_without_a_bound_methods_repr(tmp_path):
    running, _ = serve(tmp_path, ROLLOUT)
    with running as (process, lines):
        wait_for(lambda: logged(lines, process, DECISION), "the monitor's first decision")
    text = "".join(lines)
    assert "INFO driftgate.rollout: rollout monitor started (every 0:00:01)" in text
    assert "<bound method" not in text and " object at 0x" not in text


def test_the_flag_wins_over_the_values_file(tmp_path):
    running, _ = serve(tmp_path, ROLLOUT + "log_level: warning\n", "--log-level", "info")
    with running as (process, lines):
        wait_for(lambda: logged(lines, process, DECISION), "the monitor's first decision")


def test_at_warning_the_decisions_are_not_logged(tmp_path):
    running, base = serve(tmp_path, ROLLOUT + "log_level: warning\n")

    def checked() -> bool | None:
        logged(lines, process, "no line has this")
        try:
            status = httpx.get(f"{base}/api/guardian/rollout/status", timeout=1).json()
        except httpx.TransportError:
            return None
        return True if status.get("last_check") else None

    with running as (process, lines):
        wait_for(checked, "the monitor's first check")
    assert not [line for line in lines if "INFO driftgate" in line], lines


@pytest.mark.parametrize("level", ["loud", "INFO", "5"])
def test_a_bad_level_in_the_values_is_refused_naming_the_key(level, tmp_path, capsys):
    (tmp_path / "values.yaml").write_text(f"log_level: {level}\n")
    assert main(["serve", "--config", str(tmp_path / "values.yaml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and ": log_level: " in err, err


def test_a_bad_level_flag_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--log-level", "loud", "--check"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--log-level: invalid choice: 'loud'" in err, err


def test_the_cli_and_the_values_accept_the_same_levels():
    assert LOG_LEVELS == SETTINGS_LOG_LEVELS


def documented_logging_block() -> str:
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text.split("## Logs", 1)[1].split("\n## ", 1)[0]
    (block,) = section.split("```python\n")[1:]
    return block.split("```", 1)[0]


def test_the_documented_lines_show_driftgates_info_under_plain_uvicorn(tmp_path):
    app = documented_logging_block() + (
        "\nfrom datetime import timedelta\n\n"
        "from fastapi import FastAPI\n\n"
        "import driftgate\n\n"
        "tracker = driftgate.DriftTracker()\n"
        "enforcer = driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), tracker)\n"
        "manager = driftgate.RolloutManager(driftgate.RolloutConfig.default(), enforcer)\n"
        "app = FastAPI(lifespan=driftgate.rollout_lifespan(manager, timedelta(seconds=1)))\n"
    )
    (tmp_path / "service.py").write_text(app)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service:app", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with process_stderr([*command, "--log-level", "warning"], tmp_path) as (process, lines):
        wait_for(lambda: logged(lines, process, DECISION), "the monitor's first decision")
