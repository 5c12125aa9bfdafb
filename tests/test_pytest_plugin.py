"""driftgate's pytest plugin, exercised the way a user's project meets it: through pytester."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_with_driftgate.py"


def test_example_test_file_passes(pytester):
    pytester.makepyfile(test_example=EXAMPLE.read_text())

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=5)


def test_every_fixture_and_helper_work_in_a_project(pytester):
    pytester.makepyfile(
        """
        import driftgate
        from driftgate.testing import advance_to_stage, metric_value, record_decisions

        def test_fixtures_are_wired(driftgate_clock, driftgate_registry, driftgate_tracker,
                                    driftgate_enforcer, driftgate_rollout):
            assert isinstance(driftgate_clock, driftgate.ManualClock)
            assert driftgate_registry is not driftgate.default_registry()
            assert driftgate_tracker.registry is driftgate_registry
            assert driftgate_tracker.clock is driftgate_clock
            assert driftgate_enforcer.tracker is driftgate_tracker
            assert driftgate_rollout.enforcer is driftgate_enforcer
            assert driftgate_enforcer.options.rollout_percent == 10

        def test_record_decisions_exact_drift(driftgate_enforcer, driftgate_tracker):
            driftgate_enforcer.set_options(rollout_percent=20)
            assert record_decisions(driftgate_enforcer, "p", 1000, 0.013) == 13
            assert driftgate_tracker.counts("5m", "p") == (13, 1000)

        def test_advance_to_final_stage(driftgate_rollout, driftgate_clock, driftgate_registry):
            decision = advance_to_stage(driftgate_rollout, driftgate_clock, "full")
            assert decision.to_stage == "full"
            assert metric_value(driftgate_registry, "adapt_enforce_rollout_percent") == 100

        def test_client(driftgate_client):
            assert driftgate_client.get("/api/v1/healthz").json() == {"status": "ok"}
            advanced = driftgate_client.post("/api/guardian/rollout/advance")
            assert advanced.status_code == 200, advanced.text
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=4)


def test_wrong_metric_expectation_fails_listing_the_family(pytester):
    pytester.makepyfile(
        """
        from driftgate.testing import metric_value, record_decisions

        def test_wrong(driftgate_tracker, driftgate_registry):
            record_decisions(driftgate_tracker, "lksg.v1", 10, 0.3)
            assert metric_value(driftgate_registry, "adapt_drift_events_total",
                                {"policy_id": "lksg.v1"}) == 4

        def test_missing_sample(driftgate_tracker, driftgate_registry):
            record_decisions(driftgate_tracker, "lksg.v1", 10, 0.3)
            metric_value(driftgate_registry, "adapt_drift_events_total", {"policy_id": "other"})
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*assert 3.0 == 4*",
            '*AssertionError: no sample matches adapt_drift_events_total{policy_id="other"}*',
            '*adapt_drift_events_total{policy_id="lksg.v1"} 3.0*',
        ]
    )


def test_advance_to_unknown_or_unreachable_stage_fails_readably(pytester):
    pytester.makepyfile(
        """
        from driftgate.testing import advance_to_stage

        def test_unknown(driftgate_rollout, driftgate_clock):
            advance_to_stage(driftgate_rollout, driftgate_clock, "halfway")

        def test_unreachable(driftgate_rollout, driftgate_clock):
            advance_to_stage(driftgate_rollout, driftgate_clock, "full", error_rate=0.5)
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            # fnmatch reads [...] as a character class: ? stands for each bracket
            "*ValueError: stage_name='halfway': no such stage; the stages are "
            "?'canary', 'quarter', 'half', 'most', 'full'?",
            "*AssertionError: cannot advance to 'full' with error_rate=0.5: stuck at 'canary'*",
        ]
    )


def test_http_fixtures_skip_with_a_reason_without_fastapi(pytester):
    pytester.makeconftest("import sys\nsys.modules['fastapi'] = None  # as if not installed\n")
    pytester.makepyfile("def test_http(driftgate_client):\n    pass\n")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")

    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*driftgate_app needs the fastapi extra: pip install 'driftgate?fastapi?'"]
    )


def test_project_without_driftgate_fixtures_is_untouched(pytester):
    pytester.makepyfile(
        """
        import sys
        import driftgate

        tracker = driftgate.DriftTracker()  # on the default registry, as a service would

        def test_first():
            tracker.record("p", "ok", "fail")

        def test_second(request):
            assert not [name for name in request.fixturenames if name.startswith("driftgate")]
            assert "adapt_drift_events_total" in driftgate.default_registry().exposition()
            assert tracker.counts("5m", "p") == (1, 1)
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)


def test_plugin_is_registered_and_imports_nothing_heavy():
    heavy = ["fastapi", "starlette", "prometheus_client", "httpx", "numpy"]
    code = (
        "import sys, driftgate.pytest_plugin, driftgate.testing\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_fixtures_are_listed(pytester):
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")

    result.stdout.fnmatch_lines(
        ["*fixtures defined from driftgate.pytest_plugin*", "driftgate_client -- *"]
    )
