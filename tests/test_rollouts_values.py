"""`rollouts:` in the values file: several rollouts, each governing its policies."""

from pathlib import Path

import pytest

from driftgate.settings import MAX_ROLLOUTS, SettingsError, load_settings, parse_settings

ORDERS = {"policies": ["orders.v2", "orders.v3"]}


def test_each_rollout_gets_its_own_state_file_and_store_key_derived_from_its_name():
    settings = parse_settings(
        {
            "rollouts": {
                "orders": {**ORDERS, "store": {}},
                "lksg": {"policies": ["lksg.v1"], "state_path": "state/lksg.json"},
                "default": {"policies": ["kyc.v1"], "store": {}},
            }
        }
    )
    assert settings.rollout is None  # no rollout governs every policy
    by_name = {each.name: each for each in settings.all_rollouts()}
    assert list(by_name) == ["orders", "lksg", "default"]
    orders, lksg, default = by_name["orders"], by_name["lksg"], by_name["default"]
    assert orders.policies == ("orders.v2", "orders.v3") and orders.cohort == "independent"
    assert orders.state_path == Path("driftgate-state/rollout-orders.json")
    assert orders.store is not None and orders.store.key == "driftgate:rollout:{orders}"
    assert lksg.state_path == Path("state/lksg.json") and lksg.store is None
    # the rollout named default keeps the default state path and store key
    assert default.state_path == Path("driftgate-state/rollout.json")
    assert default.store is not None and default.store.key == "driftgate:rollout"
    assert orders.key == "rollouts.orders"


def test_a_named_store_key_is_kept_as_written():
    settings = parse_settings({"rollouts": {"orders": {**ORDERS, "store": {"key": "o:state"}}}})
    (orders,) = settings.rollouts
    assert orders.store is not None and orders.store.key == "o:state"


def test_the_one_rollout_of_rollout_is_the_default_governing_every_policy(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        "rollout: {enabled: true, state_path: s/r.json, min_requests: 7, "
        "check_interval_seconds: 60, store: {key: 'k:r'}}\n"
    )
    settings = load_settings(values)
    assert settings.rollouts == ()
    (default,) = settings.all_rollouts()
    assert default.name == "default" and default.policies is None
    assert default.key == "rollout"
    assert (default.state_path, default.min_requests, default.check_interval_seconds) == (
        Path("s/r.json"),
        7,
        60,
    )
    assert default.store is not None and default.store.key == "k:r"
    assert default.config.fingerprint == settings.rollout.fingerprint  # type: ignore[union-attr]
    assert parse_settings({}).all_rollouts() == ()
    assert parse_settings({"rollout": {"enabled": False}}).all_rollouts() == ()


def test_a_disabled_rollout_of_rollouts_governs_nothing_and_is_still_checked():
    settings = parse_settings({"rollouts": {"orders": {**ORDERS, "enabled": False}}})
    assert settings.all_rollouts() == ()
    with pytest.raises(SettingsError, match=r"rollouts\.orders\.stages"):
        parse_settings(
            {
                "rollouts": {
                    "orders": {
                        **ORDERS,
                        "enabled": False,
                        "stages": [
                            {"name": "a", "percentage": 50},
                            {"name": "b", "percentage": 10},
                        ],
                    }
                }
            }
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"rollout": {"enabled": True}, "rollouts": {"orders": ORDERS}},
            "rollout and rollouts together: rollout is the one rollout governing every policy",
        ),
        (
            {"rollouts": {"orders": ORDERS, "more": {"policies": ["x.v1", "orders.v3"]}}},
            "rollouts.more.policies: orders.v3 is governed by rollouts.orders too",
        ),
        (
            {"rollouts": {"orders": {"policies": ["orders.v2", "orders.v2"]}}},
            "rollouts.orders.policies: orders.v2 is governed twice",
        ),
        ({"rollouts": {"orders": {}}}, "rollouts.orders.policies: missing (required)"),
        ({"rollouts": {"orders": {"policies": []}}}, "rollouts.orders.policies"),
        ({"rollouts": {}}, "rollouts"),
        (
            {"rollouts": {"a b": ORDERS}},
            "rollouts: name 'a b' is not 1-64 characters of [A-Za-z0-9_.:-]",
        ),
        ({"rollouts": {"orders": {"policies": ["no spaces"]}}}, "rollouts.orders.policies[0]"),
        ({"rollouts": {"orders": {**ORDERS, "cohort": "mixed"}}}, "rollouts.orders.cohort"),
        (
            {"rollouts": {"orders": {**ORDERS, "notify_events": ["nothing"]}}},
            "rollouts.orders.notify_events[0]",
        ),
        (
            {"rollouts": {"orders": {**ORDERS, "stages": [{"name": "a", "percentage": 101}]}}},
            "rollouts.orders.stages[0].percentage",
        ),
        ({"rollouts": {"orders": {**ORDERS, "polices": []}}}, "unknown key 'polices'"),
    ],
)
def test_bad_rollouts_are_refused_in_one_line_naming_the_key(values, message):
    with pytest.raises(SettingsError) as refused:
        parse_settings(values)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_at_most_max_rollouts_rollouts():
    def many(n: int) -> dict[str, object]:
        return {"rollouts": {f"r{i}": {"policies": [f"p{i}"]} for i in range(n)}}

    assert len(parse_settings(many(MAX_ROLLOUTS)).rollouts) == MAX_ROLLOUTS
    with pytest.raises(SettingsError, match="rollouts"):
        parse_settings(many(MAX_ROLLOUTS + 1))


def test_shared_cohorts_and_notified_events_are_kept():
    settings = parse_settings(
        {
            "rollouts": {
                "orders": {
                    **ORDERS,
                    "cohort": "shared",
                    "notify_events": ["rolled_back", "aborted"],
                    "status_url": "https://ops.example/orders",
                }
            }
        }
    )
    (orders,) = settings.rollouts
    assert orders.cohort == "shared"
    assert orders.notify_events == ("rolled_back", "aborted")
    assert orders.status_url == "https://ops.example/orders"


def test_a_rollouts_notify_events_narrow_every_sink_to_them():
    from driftgate.notify import Event
    from driftgate.service.sinks import build_notifier

    settings = parse_settings(
        {
            "notifications": [
                {"kind": "slack", "url_env": "SLACK"},
                {"kind": "slack", "url_env": "ADVANCES", "events": ["advanced"]},
            ],
            "rollouts": {"orders": {**ORDERS, "notify_events": ["rolled_back", "aborted"]}},
        }
    )
    environ = {"SLACK": "http://127.0.0.1:9/a", "ADVANCES": "http://127.0.0.1:9/b"}
    notifier = build_notifier(settings, environ=environ, rollout=settings.rollouts[0])
    assert notifier is not None
    try:
        # the sink of advances only takes nothing this rollout announces: left out
        assert [sorted(e.value for e in sink.events) for sink in notifier.sinks] == [
            ["aborted", "rolled_back"]
        ]
        assert Event.ADVANCED not in notifier.sinks[0].events
    finally:
        notifier.close()
