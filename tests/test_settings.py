"""The Helm-style values file: every key validated, errors naming the key and the value."""

import pytest

from driftgate.settings import SettingsError, load_settings, parse_settings


def test_defaults_are_shadow_only():
    settings = parse_settings({})
    assert settings.enforce.enforce is False
    assert settings.gate.enabled is False
    assert settings.rollout is None


def test_the_seed_values_file(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(
        "enforce_enabled: true\n"
        "enforce_rollout_percent: 25\n"
        "drift_max_ratio: 0.005\n"
        "enforce_readiness_gate:\n"
        "  enabled: true\n"
        '  window: "15m"\n'
    )
    settings = load_settings(path)
    assert (settings.enforce.enforce, settings.enforce.rollout_percent) == (True, 25)
    assert (settings.gate.enabled, settings.gate.window, settings.gate.max_ratio) == (
        True,
        "15m",
        0.005,
    )


def test_rollout_stages_from_values():
    settings = parse_settings(
        {
            "rollout": {
                "enabled": True,
                "state_path": "state/r.json",
                "stages": [
                    {"name": "a", "percentage": 5, "duration_seconds": 60, "max_error_rate": 0.01},
                    {"name": "b", "percentage": 100, "max_error_rate": 0.01},
                ],
            }
        }
    )
    assert [s.name for s in settings.rollout.stages] == ["a", "b"]
    assert str(settings.state_path) == "state/r.json"


def test_rollout_error_rate_from_prometheus():
    settings = parse_settings(
        {
            "rollout": {
                "enabled": True,
                "prometheus": {
                    "url": "http://127.0.0.1:9090/",
                    "query": "up",
                    "timeout_seconds": 2,
                },
            }
        }
    )
    source = settings.error_rate_source
    assert (source.base_url, source.query, source.timeout) == ("http://127.0.0.1:9090", "up", 2)
    assert parse_settings({"rollout": {"enabled": True}}).error_rate_source is None


def test_the_example_values_file_loads():
    from pathlib import Path

    settings = load_settings(Path(__file__).parent.parent / "examples" / "values.yaml")
    assert settings.rollout is not None
    assert settings.gate.enabled


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"enforce_enabeld": True}, "unknown key 'enforce_enabeld'"),
        ({"enforce_enabled": "yes"}, "enforce_enabled: expected bool, got 'yes'"),
        ({"enforce_rollout_percent": 120}, "rollout_percent=120"),
        ({"enforce_rollout_percent": True}, "enforce_rollout_percent: expected a number"),
        ({"drift_max_ratio": 2}, "drift_max_ratio=2"),
        ({"drift_max_ratio": float("nan")}, "drift_max_ratio: expected a finite number"),
        ({"enforce_readiness_gate": {"window": "7m"}}, "'7m' is not one of 5m, 15m, 60m"),
        ({"enforce_readiness_gate": {"enabeld": True}}, "unknown key 'enabeld'"),
        ({"enforce_readiness_gate": "on"}, "enforce_readiness_gate: expected a mapping"),
        ({"rollout": {"enabled": True, "stages": "x"}}, "rollout.stages: expected a list"),
        (
            {"rollout": {"enabled": True, "stages": [{"name": "a", "percentage": 200}]}},
            r"rollout.stages\[0\]: .*rollout_percent=200",
        ),
        ({"rollout": {"check_interval_seconds": 0}}, "check_interval_seconds: expected > 0"),
        ({"admin": {"token": "x"}}, "admin: unknown key 'token'"),
        (
            {"rollout": {"prometheus": {"url": "prometheus:9090", "query": "up"}}},
            "rollout.prometheus: base_url='prometheus:9090': expected an http",
        ),
        (
            {"rollout": {"prometheus": {"url": "http://p:9090"}}},
            "rollout.prometheus: query must not be empty",
        ),
        ({"rollout": {"prometheus": {"uri": "http://p"}}}, "unknown key 'uri'"),
        ([1, 2], "values: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings(values)


def test_unreadable_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("enforce_enabled: [unclosed\n")
    with pytest.raises(SettingsError, match=f"{bad}: not valid YAML"):
        load_settings(bad)


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    from driftgate.cli import main

    bad = tmp_path / "values.yaml"
    bad.write_text("drift_max_ratio: 3\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "drift_max_ratio=3" in capsys.readouterr().err
