"""The Helm-style values file: every key validated, errors naming the key and the value."""

import pytest

from driftgate.settings import SettingsError, StoreSettings, load_settings, parse_settings


def test_defaults_are_shadow_only():
    settings = parse_settings({})
    assert settings.enforce.enforce is False
    assert settings.gate.enabled is False
    assert settings.rollout is None


def test_every_key_left_out_takes_its_default():
    settings = parse_settings(
        {
            "rollout": {
                "enabled": True,
                "stages": [{"name": "a", "percentage": 100}],
                "prometheus": {"url": "http://prometheus:9090", "query": "up"},
                "store": {},
            }
        }
    )
    enforce, gate = settings.enforce, settings.gate
    assert (enforce.enforce, enforce.rollout_percent, enforce.drift_max_ratio) == (False, 0, 0.005)
    assert (gate.enabled, gate.window, gate.max_ratio, gate.min_requests) == (
        False,
        "5m",
        0.005,
        100,
    )
    assert (gate.reopen_ratio, gate.confidence, settings.max_unready_replicas) == (None, None, 1)
    assert (settings.check_interval_seconds, settings.rollout_min_requests) == (900, 0)
    stage = settings.rollout.stages[0]
    assert (stage.duration.total_seconds(), stage.max_error_rate) == (0, 0)
    assert (stage.requires_approval, stage.approvals_required) == (False, 1)
    assert settings.error_rate_source.timeout == 5
    assert settings.store == StoreSettings()
    assert (settings.store.sync_interval_seconds, settings.store.lease_ttl_seconds) == (5, 15)
    assert (settings.store.max_clock_skew_seconds, settings.store.min_replicas_acked) == (1, 0)
    assert settings.store.replica_ack_timeout_seconds == 1
    assert str(settings.state_path) == "driftgate-state/rollout.json"
    assert settings.log_level == "info"


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
        (
            {"enforce_enabeld": True},
            "values: unknown key 'enforce_enabeld' (known: enforce_enabled, ",
        ),
        ({"enforce_enabled": "yes"}, "enforce_enabled: expected true or false, got 'yes'"),
        ({"enforce_enabled": 1}, "enforce_enabled: expected true or false, got 1"),
        (
            {"enforce_rollout_percent": 120},
            "enforce_rollout_percent: expected a number in [0, 100], got 120",
        ),
        (
            {"enforce_rollout_percent": True},
            "enforce_rollout_percent: expected a number in [0, 100], got True",
        ),
        (
            {"enforce_rollout_percent": "25"},
            "enforce_rollout_percent: expected a number in [0, 100], got '25'",
        ),
        (
            {"enforce_rollout_percent": 12.345},
            "enforce_rollout_percent: rollout_percent=12.345: expected a multiple of 0.01",
        ),
        ({"drift_max_ratio": 2}, "drift_max_ratio: expected a number in [0, 1], got 2"),
        (
            {"drift_max_ratio": float("nan")},
            "drift_max_ratio: expected a number in [0, 1], got nan",
        ),
        (
            {"drift_max_ratio": 10**400},
            "drift_max_ratio: expected a number in [0, 1], got a 401-digit integer",
        ),
        (
            {"enforce_readiness_gate": {"window": "7m"}},
            "enforce_readiness_gate.window: expected '5m', '15m' or '60m', got '7m'",
        ),
        (
            {"enforce_readiness_gate": {"enabeld": True}},
            "enforce_readiness_gate: unknown key 'enabeld'",
        ),
        ({"enforce_readiness_gate": "on"}, "enforce_readiness_gate: expected a mapping, got 'on'"),
        (
            {"enforce_readiness_gate": {"min_requests": 20.0}},
            "enforce_readiness_gate.min_requests: expected an integer in [0, 1000000000], got 20.0",
        ),
        (
            {"enforce_readiness_gate": {"min_requests": 10**20}},
            "enforce_readiness_gate.min_requests"
            ": expected an integer in [0, 1000000000], got a 21-digit integer",
        ),
        (
            {"enforce_readiness_gate": {"min_requests": -1}},
            "enforce_readiness_gate.min_requests: expected an integer in [0, 1000000000], got -1",
        ),
        (
            {"enforce_readiness_gate": {"confidence": 1}},
            "enforce_readiness_gate.confidence: expected a number in [0.5, 1), got 1",
        ),
        (
            {"enforce_readiness_gate": {"reopen_ratio": 0.5}},
            "enforce_readiness_gate: reopen_ratio=0.5 must not exceed max_ratio=0.005",
        ),
        ({"rollout": {"enabled": True, "stages": "x"}}, "rollout.stages: expected a list, got 'x'"),
        (
            {"rollout": {"enabled": True, "stages": []}},
            "rollout.stages: list should have at least 1 item",
        ),
        (
            {"rollout": {"enabled": True, "stages": [{"name": "a", "percentage": 200}]}},
            "rollout.stages[0].percentage: expected a number in [0, 100], got 200",
        ),
        (
            {"rollout": {"stages": [{"percentage": 10}]}},
            "rollout.stages[0].name: missing (required)",
        ),
        (
            {"rollout": {"stages": [{"name": "a b", "percentage": 10}]}},
            "rollout.stages[0].name: string should match pattern",
        ),
        (
            {
                "rollout": {
                    "stages": [{"name": "a", "percentage": 50}, {"name": "a", "percentage": 100}]
                }
            },
            "rollout.stages: stage 1 'a': duplicate name",
        ),
        (
            {
                "rollout": {
                    "stages": [{"name": "a", "percentage": 100, "duration_seconds": 1.0e300}]
                }
            },
            "rollout.stages[0].duration_seconds: expected a number in [0, 315360000], got 1e+300",
        ),
        (
            {
                "rollout": {
                    "stages": [{"name": "a", "percentage": 100, "duration_seconds": 315360001}]
                }
            },
            "rollout.stages[0].duration_seconds"
            ": expected a number in [0, 315360000], got 315360001",
        ),
        (
            {"rollout": {"stages": [{"name": "a", "percentage": 100, "duration_seconds": -1}]}},
            "duration_seconds: expected a number in [0, 315360000], got -1",
        ),
        ({"rollout": {"stages": [1]}}, "rollout.stages[0]: expected a mapping, got 1"),
        (
            {"rollout": {"check_interval_seconds": 0}},
            "rollout.check_interval_seconds: expected a number in [1, 86400], got 0",
        ),
        (
            {"rollout": {"check_interval_seconds": 86401}},
            "rollout.check_interval_seconds: expected a number in [1, 86400], got 86401",
        ),
        (
            {"rollout": {"check_interval_seconds": 1.0e300}},
            "rollout.check_interval_seconds: expected a number in [1, 86400], got 1e+300",
        ),
        (
            {"rollout": {"check_interval_seconds": float("inf")}},
            "rollout.check_interval_seconds: expected a number in [1, 86400], got inf",
        ),
        (
            {"rollout": {"min_requests": "1e20"}},
            "rollout.min_requests: expected an integer in [0, 1000000000], got '1e20'",
        ),
        (
            {"rollout": {"state_path": ""}},
            "rollout.state_path: string should have at least 1 character, got ''",
        ),
        (
            {"rollout": {"state_path": "a\0b"}},
            "rollout.state_path: contains a NUL character, got 'a\\x00b'",
        ),
        (
            {"rollout": {"state_path": "\ud800"}},
            "rollout.state_path: input should be a valid string",
        ),
        (
            {"admin": {"token": "x"}},
            "admin: unknown key 'token' "
            "(known: token_env, token_file, oidc, protect_status, people)",
        ),
        ({"admin": {"token_env": "MY TOKEN"}}, "admin.token_env: string should match pattern"),
        (
            {"rollout": {"prometheus": {"url": "prometheus:9090", "query": "up"}}},
            "rollout.prometheus.url: URL scheme should be 'http' or 'https', got 'prometheus:9090'",
        ),
        (
            {"rollout": {"prometheus": {"url": "http://p:9090"}}},
            "rollout.prometheus.query: missing (required)",
        ),
        (
            {"rollout": {"prometheus": {"url": "http://p:9090", "query": " "}}},
            "rollout.prometheus: query must not be empty",
        ),
        (
            {"rollout": {"prometheus": {"url": "http://p", "query": "up", "timeout_seconds": 0}}},
            "rollout.prometheus.timeout_seconds: expected a number in (0, 120], got 0",
        ),
        ({"rollout": {"prometheus": {"uri": "http://p"}}}, "rollout.prometheus: unknown key 'uri'"),
        (
            {"enforce_readiness_gate": {"max_unready_replicas": 0}},
            "enforce_readiness_gate.max_unready_replicas: expected an integer in [1, 1000], got 0",
        ),
        (
            {"enforce_readiness_gate": {"max_unready_replicas": 1001}},
            "enforce_readiness_gate.max_unready_replicas: expected an integer in [1, 1000], "
            "got 1001",
        ),
        (
            {"enforce_readiness_gate": {"max_unready_replicas": 2.0}},
            "enforce_readiness_gate.max_unready_replicas: expected an integer in [1, 1000], "
            "got 2.0",
        ),
        (
            {"enforce_readiness_gate": {"max_unready_replicas": True}},
            "enforce_readiness_gate.max_unready_replicas: expected an integer in [1, 1000], "
            "got True",
        ),
        (
            {"enforce_readiness_gate": {"max_unready_replicas": "1"}},
            "enforce_readiness_gate.max_unready_replicas: expected an integer in [1, 1000], "
            "got '1'",
        ),
        ({1: 2, "a": 3}, "values: key 1 is not a string (and 1 more)"),
        ([1, 2], "values: expected a mapping, got [1, 2]"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(SettingsError) as refused:
        parse_settings(values)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "store, named",
    [
        ({"sentinels": ["h:0"], "sentinel_service": "m"}, "rollout.store.sentinels[0]: expected"),
        ({"sentinels": ["h"], "sentinel_service": "m"}, "got 'h'"),
        ({"sentinels": "h:1", "sentinel_service": "m"}, "rollout.store.sentinels: expected a list"),
        ({"sentinels": [], "sentinel_service": "m"}, "rollout.store.sentinels: list should"),
        ({"sentinels": ["h:1"]}, "sentinels needs sentinel_service"),
        ({"sentinel_service": "m"}, "sentinel_service is set but sentinels is not"),
        ({"sentinels": ["h:1"], "sentinel_service": "a b"}, "rollout.store.sentinel_service:"),
        ({"sentinel_password_env": "1x"}, "rollout.store.sentinel_password_env:"),
        ({"sentinel_password": "hunter2"}, "sentinel_password is never read"),
        ({"password": "hunter2"}, "password is never read"),
        ({"url": "redis://:hunter2@h"}, "url is never read"),
        ({"tls_ca_file": ""}, "rollout.store.tls_ca_file: string should have at least 1"),
        ({"tls_ca_file": 5}, "rollout.store.tls_ca_file: expected a string, got 5"),
        ({"tls_key_file": "k"}, "tls_cert_file and tls_key_file"),
        ({"tls_verify": False}, "rollout.store: unknown key 'tls_verify'"),
    ],
)
def test_store_values_that_cannot_work_are_refused_naming_them(store, named):
    with pytest.raises(SettingsError) as refused:
        parse_settings({"rollout": {"enabled": True, "store": store}})
    assert named in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_bounds_are_inclusive():
    settings = parse_settings(
        {
            "enforce_readiness_gate": {"min_requests": 10**9},
            "rollout": {
                "enabled": True,
                "check_interval_seconds": 86400,
                "min_requests": 0,
                "stages": [{"name": "a", "percentage": 100, "duration_seconds": 315360000}],
                "prometheus": {"url": "http://p", "query": "up", "timeout_seconds": 120},
            },
        }
    )
    assert settings.gate.min_requests == 10**9
    assert settings.check_interval_seconds == 86400
    assert settings.rollout.stages[0].duration_seconds == 315360000
    assert settings.error_rate_source.timeout == 120
    assert parse_settings({"rollout": {"check_interval_seconds": 1}}).check_interval_seconds == 1


def test_the_readiness_budget_is_one_replica_by_default_and_bounded_inclusively():
    assert parse_settings({}).max_unready_replicas == 1
    for budget in (1, 1000):
        values = {"enforce_readiness_gate": {"max_unready_replicas": budget}}
        assert parse_settings(values).max_unready_replicas == budget


def test_stages_are_checked_while_the_rollout_is_off():
    assert (
        parse_settings({"rollout": {"stages": [{"name": "a", "percentage": 100}]}}).rollout is None
    )
    with pytest.raises(SettingsError, match="duration_seconds"):
        parse_settings({"rollout": {"stages": [{"name": "a", "percentage": 100,
                                                "duration_seconds": 1e300}]}})  # fmt: skip


def test_an_empty_file_and_empty_sections_are_the_defaults(tmp_path):
    empty = tmp_path / "values.yaml"
    empty.write_text("# nothing set\n")
    sections = tmp_path / "sections.yaml"
    sections.write_text("enforce_readiness_gate:\nrollout:\nadmin:\n")
    for path in (empty, sections):
        settings = load_settings(path)
        assert (settings.enforce.enforce, settings.gate.enabled, settings.rollout) == (
            False,
            False,
            None,
        )
        assert settings.check_interval_seconds == 900
        assert settings.admin_token_env == "DRIFTGATE_ADMIN_TOKEN"


def test_unreadable_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("enforce_enabled: [unclosed\n")
    with pytest.raises(SettingsError, match=f"{bad}:2:1: not valid YAML: expected ',' or ']'"):
        load_settings(bad)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"rollout:\n  enabled: true\n  enabled: false\n",
            ":3:3: key 'enabled' appears twice (first on line 2)",
        ),
        (b"{1: 2, a: 3}\n", ":1:2: key '1' is not a string (YAML reads it as 1; quote it)"),
        (b"on: true\n", ":1:1: key 'on' is not a string (YAML reads it as True; quote it)"),
        (
            b"drift_max_ratio: 0.1\nenforce_enabled: \xff\n",
            ":2: not UTF-8 (byte 0xff at offset 38)",
        ),
        (b"a: \x07\n", ":1: not valid YAML: unacceptable character #x0007"),
        (b"- " * 2000, ":1:65: nested deeper than 32 levels"),
        (b"[" * 50_000, ":1:33: nested deeper than 32 levels"),
        (b"a:\n" + b"".join(b" " * i + b"k:\n" for i in range(1, 40)), ":33:34: nested deeper"),
        (
            b"rollout: {check_interval_seconds: " + b"9" * 5000 + b"}\n",
            ":1:35: an integer of 5000 characters",
        ),
        (
            b"rollout: {check_interval_seconds: " + b"9" * 400 + b"}\n",
            ": rollout.check_interval_seconds"
            ": expected a number in [1, 86400], got a 400-digit integer",
        ),
        (
            b"rollout: {check_interval_seconds: 1.0e+300}\n",
            ": rollout.check_interval_seconds: expected a number in [1, 86400], got 1e+300",
        ),
        (
            b"enforce_readiness_gate: {min_requests: 1e20}\n",
            ": enforce_readiness_gate.min_requests"
            ": expected an integer in [0, 1000000000], got '1e20'",
        ),
        (
            b"rollout:\n  stages:\n    - {name: a, percentage: 100, duration_seconds: 1.0e+300}\n",
            ": rollout.stages[0].duration_seconds: expected a number in [0, 315360000], got 1e+300",
        ),
        (b"---\na: 1\n---\nb: 2\n", ":3:1: not valid YAML: but found another document"),
        (b"- 1\n- 2\n", ": values: expected a mapping, got [1, 2]"),
        (b"#" * (64 << 10) + b"\n", ": larger than 65536 bytes: not a values file"),
    ],
)
def test_bad_files_are_one_line_naming_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "values.yaml"
    path.write_bytes(content)
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    assert str(refused.value).startswith(f"{path}{message}")
    assert "\n" not in str(refused.value)


def test_merge_keys_may_override_and_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_bytes(
        b"\xef\xbb\xbfenforce_readiness_gate: &gate {enabled: true, min_requests: 5}\n"
        b"rollout: {enabled: true}\n"
    )
    assert load_settings(path).gate.min_requests == 5
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "enforce_readiness_gate:\n  <<: {enabled: true, min_requests: 5}\n  min_requests: 7\n"
    )
    assert load_settings(merged).gate.min_requests == 7


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    from driftgate.cli import main

    bad = tmp_path / "values.yaml"
    bad.write_text("drift_max_ratio: 3\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert capsys.readouterr().err == (
        f"driftgate serve: --config {bad}: drift_max_ratio: expected a number in [0, 1], got 3\n"
    )


def test_every_settings_field_names_the_values_keys_it_is_read_from():
    import dataclasses

    from driftgate.settings import Settings, _section_at, values_key

    for field in dataclasses.fields(Settings):
        for key in values_key(field.name).split(", "):
            *parents, name = key.split(".")
            section = _section_at(tuple(parents))
            assert section is not None and name in section.model_fields, (field.name, key)
    with pytest.raises(KeyError):
        values_key("admin.token_file")  # a key, not a field
