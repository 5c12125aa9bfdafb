"""Every benchmark's smoke mode runs here, so a benchmark that breaks fails the tests; and the
load benchmark refuses to report a ratio when a side answers errors."""

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import driftgate

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

# Baselines that break the way a baseline rots, served by the load benchmark through
# --baseline-app (uvicorn runs in benchmarks/, so load_apps is importable).
BROKEN_APPS = '''
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from load_apps import bare, status_document


def answers_500() -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def fail(request: Request, call_next):
        return JSONResponse({"detail": "broken"}, status_code=500)

    return app


def fails_after_first() -> FastAPI:
    """The real baseline for the first request on each path, 500 after that: it passes the
    check before the run, so only counting wrk's answers can catch it."""
    app = bare()
    seen = set()

    @app.middleware("http")
    async def fail(request: Request, call_next):
        if request.url.path in seen:
            return JSONResponse({"detail": "broken"}, status_code=500)
        seen.add(request.url.path)
        return await call_next(request)

    return app


def old_answer() -> FastAPI:
    """The demo's answer before it carried a solution signature (and the other baselines as
    they are, so that only /verify differs)."""
    app = FastAPI()
    status = status_document()

    @app.get("/api/v1/readyz")
    @app.get("/included/api/v1/readyz")
    @app.get("/sync/api/v1/readyz")
    def readyz():
        return {"status": "ready"}

    @app.get("/api/guardian/rollout/status")
    def rollout_status():
        return status

    @app.post("/verify")
    def verify():
        result = {"shadow": "ok", "enforced": "ok", "in_rollout": False, "drift": False}
        return {"policy_id": "lksg.v1", "verdict": "ok", "result": result}

    return app
'''

WRK_REPORT = """Running 1s test @ http://127.0.0.1:8000/verify
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.56ms    3.10ms  53.41ms   90.00%
    Req/Sec   540.00     40.00   600.00     70.00%
  Latency Distribution
     50%   14.56ms
     75%   15.10ms
     90%   18.00ms
     99%    1.20s
  1063 requests in 1.00s, 300.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 1000
Requests/sec:   1063.00
Transfer/sec:    300.00KB
"""


def run_benchmark(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk not found (Debian package: wrk); the load benchmark needs it")


@pytest.fixture
def load(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("load")


def test_wrk_report_counts_non_2xx_answers_and_socket_errors_as_failures(load):
    run = load.parse_wrk(WRK_REPORT)
    assert (run.requests, run.non_2xx, run.socket_errors, run.failures) == (1063, 1000, 5, 1005)
    assert (run.rps, run.p50_ms, run.p99_ms) == (1063.0, 14.56, 1200.0)


def test_wrk_report_without_failure_lines_has_no_failures(load):
    report = "\n".join(
        line for line in WRK_REPORT.splitlines() if "Socket" not in line and "Non-2xx" not in line
    )
    assert load.parse_wrk(report).failures == 0


def test_a_wrk_report_that_cannot_be_read_stops_the_run(load):
    with pytest.raises(load.BenchmarkError, match="Requests/sec"):
        load.parse_wrk(WRK_REPORT.replace("Requests/sec", "Reqs"))


def test_answer_shapes_compare_fields_and_types_not_values(load):
    assert load.shape({"a": 1, "b": {"c": "x"}}) == load.shape({"b": {"c": "y"}, "a": 2})
    assert load.shape({"a": 1}) != load.shape({"a": 1, "b": 2})
    assert load.shape({"a": 1}) != load.shape({"a": "1"})


@pytest.mark.slow
@pytest.mark.integration
def test_core_benchmarks_smoke(tmp_path):
    output = tmp_path / "benchmarks.md"
    result = run_benchmark("benchmarks/run.py", "--smoke", "--output", str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke run: every benchmark ran" in result.stdout
    text = output.read_text()
    assert "- Command: `python benchmarks/run.py --smoke --output" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 26  # the header and every figure
    assert "`Enforcer.decide` with two callables" in text
    assert "`Enforcer.decide` of a rollout's policy with 100 rollouts on the enforcer" in text
    assert "`/api/v1/metrics` body, OpenMetrics, 8 policies" in text


@pytest.mark.slow
@pytest.mark.integration
def test_load_benchmark_smoke(tmp_path):
    require_wrk()
    output = tmp_path / "benchmarks.md"
    result = run_benchmark("benchmarks/load.py", "--smoke", "--output", str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    text = output.read_text()
    answered = [int(n) for n in re.findall(r"all (\d+) answers 2xx", text)]
    assert len(answered) == 5 and min(answered) > 0, text
    # every baseline of the probe, named, and the scrape's rows
    assert "declared on the app (`@app.get`)" in text
    assert "in an included `APIRouter`" in text
    assert "plain `def`" in text
    assert text.count("`GET /api/v1/metrics`, 8 policies") == 3


@pytest.mark.slow
@pytest.mark.integration
def test_fleet_benchmark_smoke(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server not found (Debian package: redis-server); the fleet needs it")
    output = tmp_path / "benchmarks.md"
    result = run_benchmark("benchmarks/fleet.py", "--smoke", "--output", str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke run: every fleet step ran" in result.stdout
    text = output.read_text()
    assert "- Command: `python benchmarks/fleet.py --smoke --output" in text
    # both propagation paths measured every transition, and both stores committed
    assert len(re.findall(r"over 6 transitions \| median [\d.]+ ms, p99", text)) == 2, text
    rates = re.search(r"\| (\d+) / (\d+) per s = ", text)
    assert rates is not None and min(int(rates[1]), int(rates[2])) > 0, text


def test_fleet_benchmark_stops_on_a_transition_that_does_not_commit(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    fleet = importlib.import_module("fleet")
    stages = driftgate.RolloutConfig.default().stages
    at_final = driftgate.RolloutConfig(stages, current_stage_index=len(stages) - 1)
    manager = driftgate.RolloutManager(at_final)  # advance refused: already at the final stage
    with pytest.raises(fleet.BenchmarkError, match="transition 0 did not commit"):
        fleet.move(manager, 0)


def run_load_against(tmp_path: Path, factory: str) -> subprocess.CompletedProcess:
    require_wrk()
    (tmp_path / "broken_apps.py").write_text(BROKEN_APPS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return run_benchmark(
        "benchmarks/load.py", "--smoke", "--baseline-app", f"broken_apps:{factory}", env=env
    )


@pytest.mark.slow
@pytest.mark.integration
def test_load_benchmark_fails_when_the_baseline_answers_500_under_load(tmp_path):
    result = run_load_against(tmp_path, "fails_after_first")
    assert result.returncode == 1, result.stdout + result.stderr
    failed = re.search(r"baseline \(without driftgate\) failed (\d+) requests", result.stderr)
    assert failed is not None and int(failed.group(1)) > 0, result.stderr
    assert "no ratio reported" in result.stderr
    assert "ratio" not in result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_load_benchmark_checks_one_answer_of_each_side_before_measuring(tmp_path):
    result = run_load_against(tmp_path, "answers_500")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "baseline (without driftgate) answered `GET /api/v1/readyz`" in result.stderr
    assert "with 500 before the run" in result.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_load_benchmark_refuses_a_baseline_that_answers_other_fields(tmp_path):
    result = run_load_against(tmp_path, "old_answer")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "`POST /verify` with `decide()`: the baseline answers" in result.stderr
    assert "the baseline must answer what driftgate answers" in result.stderr
