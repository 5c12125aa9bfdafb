"""Several rollouts in one service: each RolloutManager with `policies` owns a share of one
enforcer, moves its own policies' percent on its own cohort, counts its own errors, and exports
its own series (labelled `rollout`) in one registry."""

import asyncio
import gc
import math
import re

import pytest

import driftgate
from driftgate import (
    DriftTracker,
    EnforceOptions,
    Enforcer,
    LocalErrorRate,
    ManualClock,
    MetricsRegistry,
    RolloutConfig,
    RolloutManager,
    RolloutStage,
)

START = 1_700_000_000.0
HOUR = 3600.0
KEYS = 100_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def enforcer(clock, registry) -> Enforcer:
    return Enforcer(EnforceOptions(enforce=True), DriftTracker(clock=clock, registry=registry))


@pytest.fixture
def rollout(enforcer, registry, clock, tmp_path):
    """make(rollout, policies, **kwargs): a manager of `rollout` on the shared enforcer and
    registry, with a state file of its own."""

    def make(rollout_name, policies, config=None, **kwargs):
        return RolloutManager(
            config or RolloutConfig.default(),
            enforcer=enforcer,
            registry=registry,
            clock=clock,
            state_path=tmp_path / f"{rollout_name}.json",
            rollout=rollout_name,
            policies=policies,
            **kwargs,
        )

    return make


def three_stages() -> RolloutConfig:
    """a 10 % -> b 20 % -> c 30 %, an hour each, 10 % errors tolerated, c after approval."""
    return RolloutConfig(
        [
            RolloutStage("a", 10, HOUR, 0.1),
            RolloutStage("b", 20, HOUR, 0.1),
            RolloutStage("c", 30, 0, 0.1, True),
        ]
    )


def sample(registry: MetricsRegistry, metric: str, **labels: str) -> float:
    """The value of the one series of `metric` with exactly these labels."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in registry.exposition().splitlines()
        if line.startswith(f"{metric}{{{wanted}}} ")
    ]
    assert len(found) == 1, (metric, wanted, found)
    return found[0]


def series(registry: MetricsRegistry, metric: str, rollout: str) -> list[str]:
    return [
        line
        for line in registry.exposition().splitlines()
        if re.match(rf"{metric}{{.*rollout=\"{re.escape(rollout)}\"", line)
    ]


def within_binomial(count: int, n: int, p: float, sds: float = 4.5) -> bool:
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


# -- shares of one enforcer ------------------------------------------------------------------


def test_each_rollout_moves_its_own_policies_and_the_rest_keep_the_global_percent(
    enforcer, rollout
):
    enforcer.set_options(rollout_percent=5)
    orders = rollout("orders", ["orders.v2", "orders.v3"])
    checkout = rollout("checkout", ["checkout"])
    assert orders.rollout == "orders"
    assert orders.policies == ["orders.v2", "orders.v3"]
    assert orders.cohort == "independent"
    assert enforcer.rollout_percent_of("orders.v3") == 10
    assert enforcer.rollout_percent_of("checkout") == 10
    assert enforcer.rollout_percent_of("search") == 5
    orders.manual_advance("ops")
    orders.manual_advance("ops")
    checkout.manual_rollback("ops")
    assert enforcer.rollout_percent_of("orders.v2") == 50
    assert enforcer.rollout_percent_of("checkout") == 0
    assert checkout.get_status()["state"] == "aborted"
    assert orders.get_status()["state"] == "active"
    assert enforcer.options.rollout_percent == 5
    # The global percent is nobody's: the enforcer's options still set it.
    enforcer.set_options(rollout_percent=7)
    assert enforcer.rollout_percent_of("search") == 7
    assert enforcer.rollout_percent_of("orders.v2") == 50


def test_three_rollouts_advance_roll_back_and_abort_independently(rollout, clock, enforcer):
    a = rollout("a", ["pa"], three_stages())
    b = rollout("b", ["pb"], three_stages())
    c = rollout("c", ["pc"], three_stages())
    clock.advance(2 * HOUR)
    assert a.evaluate(0.0).action == driftgate.DecisionAction.ADVANCED
    assert b.evaluate(0.5).action == driftgate.DecisionAction.ABORTED
    assert c.evaluate_counts(1, 100).action == driftgate.DecisionAction.ADVANCED
    assert c.manual_rollback("ops").action == driftgate.DecisionAction.ROLLED_BACK
    assert [enforcer.rollout_percent_of(p) for p in ("pa", "pb", "pc")] == [20, 0, 10]
    assert b.manual_advance("ops").action == driftgate.DecisionAction.RESUMED
    assert [enforcer.rollout_percent_of(p) for p in ("pa", "pb", "pc")] == [20, 10, 10]


def test_decisions_of_each_policy_use_its_own_percent_on_its_own_cohort(enforcer, rollout):
    orders = rollout("orders", ["orders"])
    checkout = rollout("checkout", ["checkout"])
    orders.manual_advance("ops")  # 25 %
    assert checkout.enforced_percentage == 10
    orders_seed = driftgate.cohort_seed("orders", enforcer.seed)
    checkout_seed = driftgate.cohort_seed("checkout", enforcer.seed)
    counted = {"orders": 0, "checkout": 0}
    for i in range(KEYS):
        key = f"user-{i}"
        in_orders = enforcer.decide("orders", key, "ok", "ok").in_rollout
        in_checkout = enforcer.in_rollout(key, "checkout")
        # Exact: in the cohort iff the key's bucket of the rollout's seed is below its share.
        assert in_orders == (driftgate.sampling_bucket(key, orders_seed) < 2500)
        assert in_checkout == (driftgate.sampling_bucket(key, checkout_seed) < 1000)
        counted["orders"] += in_orders
        counted["checkout"] += in_checkout
    assert within_binomial(counted["orders"], KEYS, 0.25)
    assert within_binomial(counted["checkout"], KEYS, 0.10)


def test_independent_cohorts_overlap_by_chance_and_shared_ones_nest(enforcer, rollout):
    enforcer.set_options(rollout_percent=50)
    a = rollout("a", ["pa"])
    b = rollout("b", ["pb"])
    shared = rollout("s", ["ps"], cohort="shared")
    for manager in (a, b):
        manager.manual_advance("ops")
        manager.manual_advance("ops")  # 50 %
    assert shared.cohort == "shared"
    both = 0
    for i in range(KEYS):
        key = f"user-{i}"
        both += enforcer.in_rollout(key, "pa") and enforcer.in_rollout(key, "pb")
        # 10 % shared lies inside the enforcer's own 50 %.
        if enforcer.in_rollout(key, "ps"):
            assert enforcer.in_rollout(key, "elsewhere")
            assert driftgate.sampling_bucket(key, enforcer.seed) < 1000
    assert within_binomial(both, KEYS, 0.5 * 0.5)  # the same keys would give 50 %


def test_boundary_a_key_whose_salted_bucket_equals_the_share_is_out(enforcer, rollout):
    manager = rollout("orders", ["orders"])  # 10 %: 1000 basis points
    assert manager.enforced_percentage == 10
    seed = driftgate.cohort_seed("orders", enforcer.seed)
    keys = (f"k{i}" for i in range(1_000_000))
    at = next(k for k in keys if driftgate.sampling_bucket(k, seed) == 1000)
    below = next(k for k in keys if driftgate.sampling_bucket(k, seed) == 999)
    assert not enforcer.in_rollout(at, "orders")
    assert not enforcer.decide("orders", at, "ok", "fail").in_rollout
    assert enforcer.in_rollout(below, "orders")
    assert enforcer.decide("orders", below, "ok", "fail").in_rollout


def test_the_default_rollout_keeps_the_enforcers_own_cohort(enforcer, rollout):
    manager = rollout("default", ["p"])
    assert manager.enforced_percentage == 10
    for i in range(5000):
        key = f"user-{i}"
        assert enforcer.in_rollout(key, "p") == (driftgate.sampling_bucket(key, 0) < 1000)


def test_a_rollout_gone_gives_its_policies_back_to_the_global_percent(enforcer, rollout):
    enforcer.set_options(rollout_percent=30)
    orders = rollout("orders", ["orders"])
    assert enforcer.share_policies("orders") == ["orders"]
    del orders
    assert enforcer.share_policies("orders") is None
    assert enforcer.rollout_percent_of("orders") == 30
    assert rollout("checkout", ["orders"]).enforced_percentage == 10


def test_a_dropped_manager_with_a_notifier_gives_its_share_back_at_once(enforcer, rollout):
    """Nothing but the caller keeps a manager alive (its notifier holds it weakly), so a
    rollout a reload built and then refused frees its policies without a garbage collection."""
    from driftgate.notify import Notifier

    notifier = Notifier([])
    gc.disable()
    try:
        orders = rollout("orders", ["orders"], notifier=notifier)
        orders.close()
        del orders
        assert enforcer.share_policies("orders") is None
        assert rollout("again", ["orders"]).policies == ["orders"]
    finally:
        gc.enable()
    # The hook counts while its manager lives, and does nothing once it is gone.
    notifier.count("slack", "advanced", "sent")


# -- refusals ----------------------------------------------------------------------------------


def test_a_policy_another_rollout_holds_is_refused_naming_both(rollout, registry):
    orders = rollout("orders", ["orders.v2", "orders.v3"])
    with pytest.raises(
        ValueError,
        match=r"policy 'orders\.v3' already belongs to rollout 'orders', so rollout 'checkout' "
        "cannot claim it",
    ):
        rollout("checkout", ["checkout", "orders.v3"])
    # The refused manager left nothing behind: its name and policies are free.
    assert 'rollout="checkout"' not in registry.exposition()
    assert rollout("checkout", ["checkout"]).policies == ["checkout"]
    assert orders.policies == ["orders.v2", "orders.v3"]


def test_a_rollout_of_every_policy_and_rollouts_of_some_refuse_each_other(
    enforcer, registry, clock, tmp_path, rollout
):
    def everything(name="default"):
        return RolloutManager(
            RolloutConfig.default(),
            enforcer=enforcer,
            registry=registry,
            clock=clock,
            state_path=tmp_path / "all.json",
            rollout=name,
        )

    orders = rollout("orders", ["orders"])
    with pytest.raises(ValueError, match="rollout 'default' has no policies, so it would govern"):
        everything()
    del orders
    manager = everything()
    with pytest.raises(ValueError, match="whose every policy rollout 'default' governs"):
        rollout("orders", ["orders"])
    assert manager.policies is None


def test_a_claim_past_max_policies_is_refused_naming_it(clock, registry, tmp_path):
    enforcer = Enforcer(
        EnforceOptions(enforce=True),
        DriftTracker(clock=clock, registry=registry, max_policies=3),
    )
    enforcer.decide("seen", "k", "ok", "ok")
    with pytest.raises(ValueError, match="max_policies=3 \\(1 policies are known already\\)"):
        RolloutManager(
            RolloutConfig.default(),
            enforcer=enforcer,
            state_path=tmp_path / "r.json",
            rollout="orders",
            policies=["a", "b", "c"],
        )
    assert enforcer.tracker.policies() == ["seen"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"policies": "orders"}, TypeError, "expected a list of policy ids"),
        ({"policies": ["orders", 3]}, TypeError, "3 is not a policy id"),
        ({"policies": []}, ValueError, "names no policies"),
        ({"policies": ["bad id"]}, ValueError, "invalid policy_id 'bad id'"),
        ({"policies": ["p", "p"]}, ValueError, "names policy 'p' twice"),
        ({"rollout": "bad name", "policies": ["p"]}, ValueError, "invalid rollout name"),
        ({"rollout": "r", "policies": ["p"], "cohort": "mixed"}, ValueError, "cohort='mixed'"),
    ],
)
def test_bad_rollout_arguments_are_refused_before_anything_is_claimed(
    enforcer, tmp_path, kwargs, error, message
):
    kwargs.setdefault("rollout", "r")
    with pytest.raises(error, match=message):
        RolloutManager(
            RolloutConfig.default(), enforcer=enforcer, state_path=tmp_path / "r.json", **kwargs
        )
    assert not (tmp_path / "r.json").exists()
    assert enforcer.share_policies("r") is None


def test_two_managers_of_one_name_on_one_registry_never_remove_each_others_series(
    clock, registry, tmp_path
):
    def manager(path):
        tracker = DriftTracker(clock=clock, registry=registry)
        return RolloutManager(
            RolloutConfig.default(),
            enforcer=Enforcer(EnforceOptions(enforce=True), tracker),
            registry=registry,
            state_path=tmp_path / path,
            rollout="orders",
            policies=["orders"],
        )

    first = manager("one.json")
    second = manager("two.json")  # e.g. a restart tried while the first still lives
    first.manual_advance("ops")
    stages = series(registry, "guardian_rollout_stage", "orders")
    assert sorted(line.split('stage_name="')[1].split('"')[0] for line in stages) == [
        "canary",
        "quarter",
    ]
    del second
    [line] = series(registry, "guardian_rollout_stage", "orders")
    assert 'stage_name="quarter"' in line
    assert sample(registry, "driftgate_state_version", rollout="orders") == first.version


# -- errors of each rollout's own policies -----------------------------------------------------


def test_one_rollouts_errors_never_move_another(enforcer, rollout, clock):
    orders = rollout("orders", ["orders"], three_stages(), min_requests=100)
    checkout = rollout("checkout", ["checkout"], three_stages(), min_requests=100)
    assert isinstance(orders.error_rate_source, LocalErrorRate)
    assert orders.error_rate_source.policies == ("orders",)
    clock.advance(2 * HOUR)  # past the first stage's hour
    for i in range(20_000):
        enforcer.decide("orders", f"u{i}", "ok", lambda: 1 / 0)  # every enforced one fails
        enforcer.decide("checkout", f"u{i}", "ok", "ok")
    failed, total = orders.error_rate_source()
    assert failed == total > 1000
    assert checkout.error_rate_source() == (0, checkout.error_rate_source()[1])
    assert checkout.error_rate_source()[1] > 1000

    assert asyncio.run(orders.check_and_advance()).action == driftgate.DecisionAction.ABORTED
    assert asyncio.run(checkout.check_and_advance()).action == driftgate.DecisionAction.ADVANCED
    assert enforcer.rollout_percent_of("orders") == 0
    assert enforcer.rollout_percent_of("checkout") == 20


def test_local_error_rate_of_some_policies_sums_theirs_alone(enforcer):
    enforcer.set_options(rollout_percent=100)
    for i in range(10):
        enforcer.decide("a", f"k{i}", "ok", lambda: 1 / 0)
        enforcer.decide("b", f"k{i}", "ok", "ok")
        enforcer.decide("c", f"k{i}", "ok", lambda: 1 / 0)
    assert LocalErrorRate(enforcer)() == (20, 30)
    assert LocalErrorRate(enforcer, policies=["a", "b"])() == (10, 20)
    assert LocalErrorRate(enforcer, window="5m", policies=["b"])() == (0, 10)
    source = LocalErrorRate(enforcer, policies=["a", "b"])
    source.stage_entered()
    enforcer.decide("a", "new", "ok", lambda: 1 / 0)
    enforcer.decide("c", "new", "ok", lambda: 1 / 0)
    assert source() == (1, 1)
    assert "policies=['a', 'b']" in repr(source)
    with pytest.raises(TypeError, match="expected a list of policy ids"):
        LocalErrorRate(enforcer, policies="a")
    with pytest.raises(ValueError, match="at least one policy id"):
        LocalErrorRate(enforcer, policies=[])
    with pytest.raises(ValueError, match="invalid policy_id"):
        LocalErrorRate(enforcer, policies=["a", "bad id"])


# -- metrics -------------------------------------------------------------------------------------


def test_every_rollout_series_carries_its_rollout(rollout, registry):
    orders = rollout("orders", ["orders"])
    checkout = rollout("checkout", ["checkout"])
    orders.manual_advance("ops")
    orders.evaluate(0.5)  # rolls back
    checkout.record_analysis_error()
    orders._count_notification("slack", "advanced", "sent")
    assert sample(registry, "guardian_rollout_stage", rollout="orders", stage_name="canary") == 0
    assert sample(registry, "guardian_rollout_stage", rollout="checkout", stage_name="canary") == 0
    assert sample(registry, "guardian_rollout_error_rate", rollout="orders") == 0.5
    assert sample(registry, "guardian_rollout_error_rate", rollout="checkout") == 0
    assert (
        sample(registry, "guardian_rollout_advancement_total", rollout="orders", to_stage="quarter")
        == 1
    )
    assert (
        sample(
            registry,
            "guardian_rollout_rollback_total",
            rollout="orders",
            from_stage="quarter",
            to_stage="canary",
        )
        == 1
    )
    assert sample(registry, "guardian_rollout_analysis_errors_total", rollout="checkout") == 1
    assert sample(registry, "guardian_rollout_analysis_errors_total", rollout="orders") == 0
    assert sample(registry, "driftgate_state_version", rollout="orders") == 3
    assert sample(registry, "driftgate_state_version", rollout="checkout") == 1
    assert (
        sample(
            registry,
            "driftgate_notifications_total",
            event="advanced",
            outcome="sent",
            rollout="orders",
            sink="slack",
        )
        == 1
    )
    assert sample(registry, "adapt_enforce_rollout_percent", rollout="orders") == 10
    assert sample(registry, "adapt_enforce_rollout_percent", rollout="checkout") == 10
    assert sample(registry, "adapt_enforce_rollout_percent", rollout="") == 0
    assert 'guardian_rollout_stage_started_at{rollout="orders"' in registry.exposition()


def test_two_rollouts_keep_their_series_right_through_a_hundred_moves(rollout, registry):
    managers = [rollout("orders", ["orders"]), rollout("checkout", ["checkout"])]
    moves = {"orders": [0, 0], "checkout": [0, 0]}  # advances, rollbacks
    for i in range(100):
        for offset, manager in enumerate(managers):
            back = (i + offset) % 3 == 2
            decision = manager.manual_rollback("ops") if back else manager.manual_advance("ops")
            if decision.moved:
                moves[manager.rollout][1 if back else 0] += 1
    for manager in managers:
        name = manager.rollout
        status = manager.get_status()
        stage = status["current_stage"]["name"] if status["state"] != "aborted" else "aborted"
        [line] = series(registry, "guardian_rollout_stage", name)
        assert f'stage_name="{stage}"' in line
        assert len(series(registry, "guardian_rollout_stage_started_at", name)) == 1
        counted = [
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in series(registry, f"guardian_rollout_{kind}_total", name)
            )
            for kind in ("advancement", "rollback")
        ]
        assert counted == moves[name]
        assert sample(registry, "driftgate_state_version", rollout=name) == manager.version
        assert (
            sample(registry, "adapt_enforce_rollout_percent", rollout=name)
            == manager.enforced_percentage
        )
    assert sum(moves["orders"]) > 50


def test_a_single_rollout_service_keeps_its_names_with_rollout_default(enforcer, registry, clock):
    manager = RolloutManager(RolloutConfig.default(), enforcer=enforcer, clock=clock)
    assert manager.rollout == "default"
    assert manager.policies is None
    text = registry.exposition()
    assert 'guardian_rollout_stage{rollout="default",stage_name="canary"} 0' in text
    assert 'adapt_enforce_rollout_percent{rollout="default"} 10' in text
    assert 'adapt_enforce_rollout_percent{rollout=""}' not in text
    del manager
    assert 'adapt_enforce_rollout_percent{rollout=""} 10' in registry.exposition()


def test_a_named_rollout_is_named_in_its_notifications(rollout):
    assert rollout("orders", ["orders"]).name == "orders"
    assert rollout("default", ["p"]).name == "rollout"
    assert rollout("checkout", ["c"], name="Checkout v2").name == "Checkout v2"
