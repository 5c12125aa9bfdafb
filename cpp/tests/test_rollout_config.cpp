#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "driftgate/rollout_manager.hpp"

using driftgate::AdvanceCheck;
using driftgate::ConfigOwnedError;
using driftgate::DriftTracker;
using driftgate::EnforceOptions;
using driftgate::Enforcer;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::RolloutConfig;
using driftgate::RolloutManager;
using driftgate::RolloutPosition;
using driftgate::RolloutStage;
using driftgate::RolloutState;
using driftgate::StagePlan;

namespace {

constexpr double kHour = 3600;

using Verdict = AdvanceCheck::Verdict;

StagePlan default_plan() { return StagePlan(StagePlan::default_stages()); }

struct ManagerFixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(1'700'000'000.0);
    std::shared_ptr<MetricsRegistry> registry = std::make_shared<MetricsRegistry>();
    std::shared_ptr<DriftTracker> tracker =
        std::make_shared<DriftTracker>(driftgate::default_windows(), clock, registry);

    std::shared_ptr<Enforcer> make_enforcer() const {
        return std::make_shared<Enforcer>(EnforceOptions{true, 0, 0.005}, tracker);
    }

    RolloutManager::Options options(std::shared_ptr<Enforcer> enforcer = nullptr) const {
        RolloutManager::Options out;
        out.enforcer = std::move(enforcer);
        out.registry = registry;
        out.clock = clock;
        return out;
    }
};

}  // namespace

// -- RolloutConfig on its own ----------------------------------------------------------------

TEST_CASE("the default rollout has five stages starting at canary", "[rollout_config]") {
    const auto config = RolloutConfig::default_config();
    REQUIRE(config.stages().size() == 5);
    CHECK(config.current_stage().name == "canary");
    CHECK(config.current_stage().percentage == 10);
    CHECK(config.stages()[1].requires_approval);
    CHECK(config.stages()[2].duration_seconds == 48 * kHour);
    CHECK(config.stages()[4].percentage == 100);
    CHECK(config.rollback_on_error());
    CHECK_FALSE(config.owned());
}

TEST_CASE("can_advance checks error rate, duration, final stage, approval in order",
          "[rollout_config]") {
    auto config = RolloutConfig::default_config();
    config.set_current_stage_started_at(0.0);
    // Error rate comes first, even when the duration is not met.
    auto [ok, reason] = config.can_advance(0.006, 3600);
    CHECK_FALSE(ok);
    CHECK(reason == "Error rate 0.600% exceeds threshold 0.500%");
    std::tie(ok, reason) = config.can_advance(0.001, kHour);
    CHECK_FALSE(ok);
    CHECK(reason == "Stage duration not met (remaining: 23:00:00)");
    std::tie(ok, reason) = config.can_advance(0.001, 25 * kHour);
    CHECK(ok);
    CHECK(reason == "Ready to advance to quarter (requires approval)");
    config.advance(25 * kHour);
    config.advance(50 * kHour);
    std::tie(ok, reason) = config.can_advance(0.001, 50 * kHour + 49 * kHour);
    CHECK(reason == "Ready to advance to most");
    config.advance(100 * kHour);
    config.advance(130 * kHour);
    std::tie(ok, reason) = config.can_advance(0.0, 200 * kHour);
    CHECK_FALSE(ok);
    CHECK(reason == "Already at final stage");
}

TEST_CASE("durations of a day or more read like Python's timedelta", "[rollout_config]") {
    RolloutConfig config({{"slow", 10, 50 * kHour, 0.1, false}, {"end", 20, 0, 0.1, false}}, 0,
                         0.0);
    CHECK(config.can_advance(0, 0).second == "Stage duration not met (remaining: 2 days, 2:00:00)");
}

TEST_CASE("advance and rollback move one stage and stamp the start", "[rollout_config]") {
    auto config = RolloutConfig::default_config();
    config.advance(100.0);
    CHECK(config.current_stage().name == "quarter");
    CHECK(config.current_stage_started_at() == 100.0);
    config.rollback(200.0);
    CHECK(config.current_stage().name == "canary");
    CHECK(config.current_stage_started_at() == 200.0);
    config.rollback(300.0);  // no-op at the first stage
    CHECK(config.current_stage_index() == 0);
    CHECK(config.current_stage_started_at() == 200.0);
}

TEST_CASE("invalid stages are rejected with the stage named", "[rollout_config]") {
    auto make = [](std::vector<RolloutStage> stages) { return RolloutConfig(std::move(stages)); };
    CHECK_THROWS_WITH(make({}), Catch::Contains("at least one stage"));
    CHECK_THROWS_WITH(make({{"a", 101, 0, 0.1, false}}), Catch::Contains("rollout_percent=101"));
    CHECK_THROWS_WITH(make({{"a", 50, 0, 0.1, false}, {"b", 40, 0, 0.1, false}}),
                      Catch::Contains("'b'") && Catch::Contains("above the previous"));
    CHECK_THROWS_WITH(make({{"a", 10, -1, 0.1, false}}), Catch::Contains("duration=-1"));
    CHECK_THROWS_WITH(make({{"a", 10, 0, 1.5, false}}), Catch::Contains("max_error_rate=1.5"));
    CHECK_THROWS_WITH(make({{"a", 10, 0, 0.1, false}, {"a", 20, 0, 0.1, false}}),
                      Catch::Contains("duplicate"));
    CHECK_THROWS_WITH(make({{"has space", 10, 0, 0.1, false}}), Catch::Contains("'has space'"));
    CHECK_THROWS_WITH(RolloutConfig::default_config().can_advance(-0.1, 0),
                      Catch::Contains("error_rate=-0.1"));
    CHECK_THROWS_WITH(RolloutConfig(RolloutConfig::default_config().stages(), 5),
                      Catch::Contains("current_stage_index=5"));
}

TEST_CASE("the fingerprint changes with any stage field", "[rollout_config]") {
    const auto base = RolloutConfig::default_config().stages();
    auto changed = base;
    changed[2].max_error_rate = 0.0031;
    CHECK(driftgate::stages_fingerprint(base) == driftgate::stages_fingerprint(base));
    CHECK(driftgate::stages_fingerprint(base) != driftgate::stages_fingerprint(changed));
    CHECK(driftgate::stages_fingerprint(base).rfind("fnv1a64:", 0) == 0);
}

TEST_CASE("a standalone config advances, rolls back and judges on its injected clock",
          "[rollout_config]") {
    auto clock = std::make_shared<ManualClock>(1'000'000.0);
    auto config = RolloutConfig::default_config(clock);
    config.set_current_stage_started_at(clock->wall());
    clock->advance(23 * kHour);
    CHECK(config.can_advance(0.001).second == "Stage duration not met (remaining: 1:00:00)");
    clock->advance(kHour);
    CHECK(config.can_advance(0.001) ==
          std::pair<bool, std::string>{true, "Ready to advance to quarter (requires approval)"});
    config.advance();
    CHECK(config.current_stage().name == "quarter");
    CHECK(config.current_stage_started_at() == 1'000'000.0 + 24 * kHour);
    clock->advance(10);
    config.rollback();
    CHECK(config.current_stage().name == "canary");
    CHECK(config.current_stage_started_at() == 1'000'000.0 + 24 * kHour + 10);
}

TEST_CASE("rolling back a standalone config at the first stage changes nothing",
          "[rollout_config]") {
    auto clock = std::make_shared<ManualClock>(500.0);
    auto config = RolloutConfig::default_config(clock);
    config.set_current_stage_started_at(100.0);
    config.rollback();
    const RolloutPosition position = config.position();
    CHECK(position.stage_index == 0);
    CHECK(position.state == RolloutState::Active);
    CHECK(position.started_at == 100.0);
}

TEST_CASE("copies of a config share one position", "[rollout_config]") {
    auto config = RolloutConfig::default_config();
    const RolloutConfig copy = config;
    config.advance(10.0);
    CHECK(copy.current_stage().name == "quarter");
    CHECK(copy.current_stage_started_at() == 10.0);
}

TEST_CASE("a config set at the final stage is completed", "[rollout_config]") {
    RolloutConfig config(StagePlan::default_stages(), 4);
    CHECK(config.position().state == RolloutState::Completed);
    CHECK(config.at_final_stage());
    config.advance(1.0);  // no-op at the final stage
    CHECK(config.current_stage_index() == 4);
    CHECK_FALSE(config.current_stage_started_at().has_value());
}

// -- StagePlan: the rules ------------------------------------------------------------------

TEST_CASE("check_advance tests error rate, duration, final stage, then approval",
          "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    const RolloutPosition canary{0, 0.0, RolloutState::Active};
    // A high error rate wins over an unmet duration.
    auto check = plan.check_advance(canary, 0.006, kHour);
    CHECK(check.verdict == Verdict::ErrorRateExceeded);
    CHECK(check.reason == "Error rate 0.600% exceeds threshold 0.500%");
    CHECK_FALSE(check.ready());
    check = plan.check_advance(canary, 0.005, kHour);  // at the maximum is not above it
    CHECK(check.verdict == Verdict::DurationNotMet);
    CHECK(check.reason == "Stage duration not met (remaining: 23:00:00)");
    CHECK_FALSE(check.ready());
    check = plan.check_advance(canary, 0.0, 24 * kHour);
    CHECK(check.verdict == Verdict::NeedsApproval);
    CHECK(check.reason == "Ready to advance to quarter (requires approval)");
    CHECK(check.ready());
    check = plan.check_advance({2, 0.0, RolloutState::Active}, 0.0, 48 * kHour);
    CHECK(check.verdict == Verdict::Ready);
    CHECK(check.reason == "Ready to advance to most");
    CHECK(check.ready());
    // The final stage's own error rate still comes first.
    check = plan.check_advance({4, 0.0, RolloutState::Completed}, 0.01, 0.0);
    CHECK(check.verdict == Verdict::ErrorRateExceeded);
    check = plan.check_advance({4, 0.0, RolloutState::Completed}, 0.0, 0.0);
    CHECK(check.verdict == Verdict::FinalStage);
    CHECK(check.reason == "Already at final stage");
    CHECK_FALSE(check.ready());
    // An aborted rollout is judged by nothing else: only a manual advance resumes it.
    check = plan.check_advance({0, 0.0, RolloutState::Aborted}, 0.0, 48 * kHour);
    CHECK(check.verdict == Verdict::Aborted);
    CHECK(check.reason == "Rollout aborted at 0%: a manual advance resumes it");
    CHECK_FALSE(check.ready());
    CHECK(plan.check_advance({0, 0.0, RolloutState::Aborted}, 0.5, 0.0).verdict ==
          Verdict::Aborted);
}

TEST_CASE("check_advance skips the duration while the start is unknown",
          "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    const auto check = plan.check_advance({0, std::nullopt, RolloutState::Active}, 0.0, 0.0);
    CHECK(check.verdict == Verdict::NeedsApproval);
}

TEST_CASE("check_advance refuses an error rate outside [0, 1]", "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    const RolloutPosition canary{0, 0.0, RolloutState::Active};
    CHECK_THROWS_WITH(plan.check_advance(canary, 1.5, 0.0), Catch::Contains("error_rate=1.5"));
    CHECK_THROWS_WITH(plan.check_advance(canary, std::nan(""), 0.0),
                      Catch::Contains("error_rate=nan"));
}

TEST_CASE("advancing enters the next stage and completes at the final one",
          "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    auto next = plan.advanced({0, 1.0, RolloutState::Active}, 5.0);
    CHECK(next.stage_index == 1);
    CHECK(next.started_at == 5.0);
    CHECK(next.state == RolloutState::Active);
    next = plan.advanced({3, 1.0, RolloutState::Active}, 7.0);
    CHECK(next.stage_index == 4);
    CHECK(next.started_at == 7.0);
    CHECK(next.state == RolloutState::Completed);
}

TEST_CASE("advancing at the final stage changes nothing", "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    const auto same = plan.advanced({4, 1.0, RolloutState::Completed}, 9.0);
    CHECK(same.stage_index == 4);
    CHECK(same.started_at == 1.0);
    CHECK(same.state == RolloutState::Completed);
}

TEST_CASE("advancing an aborted rollout resumes it at the first stage",
          "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    const auto resumed = plan.advanced({0, 1.0, RolloutState::Aborted}, 8.0);
    CHECK(resumed.stage_index == 0);
    CHECK(resumed.started_at == 8.0);
    CHECK(resumed.state == RolloutState::Active);
}

TEST_CASE("rolling back steps to the previous stage, and from the first aborts",
          "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    auto back = plan.rolled_back({4, 1.0, RolloutState::Completed}, 3.0);
    CHECK(back.stage_index == 3);
    CHECK(back.started_at == 3.0);
    CHECK(back.state == RolloutState::Active);
    back = plan.rolled_back({0, 1.0, RolloutState::Active}, 4.0);
    CHECK(back.stage_index == 0);
    CHECK(back.started_at == 4.0);
    CHECK(back.state == RolloutState::Aborted);
}

TEST_CASE("reachable allows completed only at the final stage, aborted only at the first",
          "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    CHECK(plan.reachable(0, RolloutState::Active));
    CHECK(plan.reachable(0, RolloutState::Aborted));
    CHECK_FALSE(plan.reachable(0, RolloutState::Completed));
    CHECK(plan.reachable(2, RolloutState::Active));
    CHECK_FALSE(plan.reachable(2, RolloutState::Aborted));
    CHECK_FALSE(plan.reachable(2, RolloutState::Completed));
    CHECK_FALSE(plan.reachable(4, RolloutState::Active));
    CHECK_FALSE(plan.reachable(4, RolloutState::Aborted));
    CHECK(plan.reachable(4, RolloutState::Completed));
    CHECK_FALSE(plan.reachable(5, RolloutState::Active));
}

TEST_CASE("an aborted position enforces 0% and is named aborted", "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    CHECK(plan.percentage({0, 1.0, RolloutState::Active}) == 10);
    CHECK(plan.position_name({0, 1.0, RolloutState::Active}) == "canary");
    CHECK(plan.percentage({0, 1.0, RolloutState::Aborted}) == 0);
    CHECK(plan.position_name({0, 1.0, RolloutState::Aborted}) == "aborted");
    CHECK(plan.percentage({4, 1.0, RolloutState::Completed}) == 100);
}

TEST_CASE("a stage duration over ten years is refused", "[rollout_config][stage_plan]") {
    CHECK_NOTHROW(StagePlan({{"a", 10, driftgate::kMaxStageSeconds, 0.1, false}}));
    CHECK_THROWS_AS(StagePlan({{"a", 10, driftgate::kMaxStageSeconds + 1, 0.1, false}}),
                    std::invalid_argument);
    CHECK_THROWS_WITH(StagePlan({{"a", 10, driftgate::kMaxStageSeconds + 1, 0.1, false}}),
                      Catch::Contains("'a'") && Catch::Contains("ten years"));
    CHECK_THROWS_WITH(StagePlan({{"a", 10, std::numeric_limits<double>::infinity(), 0.1, false}}),
                      Catch::Contains("duration=inf"));
    CHECK_THROWS_WITH(StagePlan({{"a", 10, std::nan(""), 0.1, false}}),
                      Catch::Contains("duration=nan"));
}

TEST_CASE("a stage named aborted is refused", "[rollout_config][stage_plan]") {
    CHECK_THROWS_AS(StagePlan({{"canary", 10, 0, 0.1, false}, {"aborted", 20, 0, 0.1, false}}),
                    std::invalid_argument);
    CHECK_THROWS_WITH(StagePlan({{"canary", 10, 0, 0.1, false}, {"aborted", 20, 0, 0.1, false}}),
                      Catch::Contains("stage 1 'aborted'"));
}

TEST_CASE("the plan's fingerprint is the stage list's", "[rollout_config][stage_plan]") {
    const StagePlan plan = default_plan();
    CHECK(plan.fingerprint() == driftgate::stages_fingerprint(StagePlan::default_stages()));
    CHECK(StagePlan(StagePlan::default_stages(), false).rollback_on_error() == false);
}

// -- RolloutConfig handed to a RolloutManager ----------------------------------------------

TEST_CASE("a config handed to a manager reads the manager's position live", "[rollout_config]") {
    ManagerFixture f;
    auto config = RolloutConfig::default_config();
    RolloutManager manager(config, f.options());
    CHECK(config.owned());
    CHECK(config.current_stage_started_at() == f.clock->wall());
    f.clock->advance(60);
    manager.manual_advance("ops");
    CHECK(config.current_stage_index() == 1);
    CHECK(config.current_stage().name == "quarter");
    CHECK(config.current_stage_started_at() == f.clock->wall());
    manager.manual_rollback("ops");
    manager.manual_rollback("ops");
    CHECK(config.position().state == RolloutState::Aborted);
    CHECK(manager.config().position().state == RolloutState::Aborted);
}

TEST_CASE("an owned config judges on the manager's clock", "[rollout_config]") {
    ManagerFixture f;
    auto own_clock = std::make_shared<ManualClock>(0.0);
    auto config = RolloutConfig::default_config(own_clock);
    RolloutManager manager(config, f.options());
    f.clock->advance(23 * kHour);
    CHECK(config.can_advance(0.0).second == "Stage duration not met (remaining: 1:00:00)");
}

TEST_CASE("a config built without rollback on error keeps it under a manager", "[rollout_config]") {
    ManagerFixture f;
    RolloutConfig config(StagePlan::default_stages(), 0, std::nullopt, false);
    RolloutManager manager(config, f.options());
    CHECK_FALSE(config.rollback_on_error());
    CHECK_FALSE(manager.config().rollback_on_error());
    const auto decision = manager.evaluate(0.5);
    CHECK(decision.action == driftgate::DecisionAction::Held);
    CHECK(decision.message == "Error rate 50.000% exceeds threshold 0.500%");
    CHECK(config.current_stage().name == "canary");
    CHECK(config.position().state == RolloutState::Active);
}

TEST_CASE("moving an owned config throws ConfigOwnedError naming the manager method",
          "[rollout_config]") {
    ManagerFixture f;
    auto config = RolloutConfig::default_config();
    RolloutManager manager(config, f.options());
    const RolloutPosition before = config.position();
    CHECK_THROWS_AS(config.set_current_stage_index(2), ConfigOwnedError);
    CHECK_THROWS_WITH(config.set_current_stage_index(2), Catch::Contains("manual_advance"));
    CHECK_THROWS_AS(config.set_current_stage_started_at(5.0), ConfigOwnedError);
    CHECK_THROWS_AS(config.advance(), ConfigOwnedError);
    CHECK_THROWS_AS(config.advance(5.0), ConfigOwnedError);
    CHECK_THROWS_WITH(config.advance(5.0), Catch::Contains("manager.manual_advance()"));
    CHECK_THROWS_AS(config.rollback(), ConfigOwnedError);
    CHECK_THROWS_WITH(config.rollback(5.0), Catch::Contains("manager.manual_rollback()"));
    // The view of the manager is read-only too.
    CHECK_THROWS_AS(manager.config().advance(), ConfigOwnedError);
    const RolloutPosition after = config.position();
    CHECK(after.stage_index == before.stage_index);
    CHECK(after.started_at == before.started_at);
    CHECK(manager.snapshot().version == 1);
}

TEST_CASE("a config stands alone again at the last position when its manager is gone",
          "[rollout_config]") {
    ManagerFixture f;
    auto own_clock = std::make_shared<ManualClock>(100.0);
    auto config = RolloutConfig::default_config(own_clock);
    {
        RolloutManager manager(config, f.options());
        manager.manual_advance("ops");
        manager.manual_advance("ops");
    }
    CHECK_FALSE(config.owned());
    CHECK(config.current_stage().name == "half");
    CHECK(config.current_stage_started_at() == f.clock->wall());
    // It moves again, on its own clock.
    config.advance();
    CHECK(config.current_stage().name == "most");
    CHECK(config.current_stage_started_at() == 100.0);
}

TEST_CASE("a second manager on an owned config is refused", "[rollout_config]") {
    ManagerFixture f;
    auto config = RolloutConfig::default_config();
    auto first_enforcer = f.make_enforcer();
    auto second_enforcer = f.make_enforcer();
    RolloutManager first(config, f.options(first_enforcer));
    CHECK_THROWS_AS(RolloutManager(config, f.options(second_enforcer)), std::invalid_argument);
    CHECK_THROWS_WITH(RolloutManager(config, f.options(second_enforcer)),
                      Catch::Contains("already belongs to a running RolloutManager"));
    // The refused manager claimed nothing and left the first in charge.
    CHECK_FALSE(second_enforcer->rollout_percent_claimed());
    CHECK(config.owned());
    first.manual_advance("ops");
    CHECK(config.current_stage().name == "quarter");
    CHECK(first_enforcer->options().rollout_percent == 25);
}

TEST_CASE("a second manager on the same enforcer is refused until the first is gone",
          "[rollout_config]") {
    ManagerFixture f;
    auto enforcer = f.make_enforcer();
    auto first_config = RolloutConfig::default_config();
    auto second_config = RolloutConfig::default_config();
    {
        RolloutManager first(first_config, f.options(enforcer));
        CHECK(enforcer->rollout_percent_claimed());
        CHECK_THROWS_AS(RolloutManager(second_config, f.options(enforcer)), std::invalid_argument);
        CHECK_THROWS_WITH(RolloutManager(second_config, f.options(enforcer)),
                          Catch::Contains("another RolloutManager"));
        // The refused manager did not take the config it was given.
        CHECK_FALSE(second_config.owned());
        CHECK(enforcer->rollout_percent_claimed());
    }
    CHECK_FALSE(enforcer->rollout_percent_claimed());
    second_config.set_current_stage_index(2);
    RolloutManager second(second_config, f.options(enforcer));
    CHECK(enforcer->rollout_percent_claimed());
    CHECK(enforcer->options().rollout_percent == 50);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

namespace {

/// Whether validate_stages takes the list.
bool valid_stages(std::vector<RolloutStage> stages) {
    try {
        driftgate::validate_stages(stages);
        return true;
    } catch (const std::invalid_argument&) {
        return false;
    }
}

RolloutStage stage(double percentage, double duration = 0, double max_error_rate = 0.1,
                   bool requires_approval = true, std::uint32_t approvals = 1) {
    return {"s" + std::to_string(static_cast<int>(percentage * 100)),
            percentage,
            duration,
            max_error_rate,
            requires_approval,
            approvals};
}

}  // namespace

TEST_CASE("boundary: a stage's percentage runs from 0 to 100 and rises strictly",
          "[rollout_config][boundary]") {
    CHECK(valid_stages({stage(0), stage(100)}));
    CHECK_FALSE(valid_stages({stage(std::nextafter(0.0, -1.0))}));
    CHECK_FALSE(valid_stages({stage(100.01)}));
    CHECK(valid_stages({stage(10), stage(10.01)}));  // one step above the previous
    CHECK_FALSE(valid_stages({stage(10), {"again", 10, 0, 0.1, false}}));  // equal is not above
}

TEST_CASE("boundary: a stage lasts at least 0 s", "[rollout_config][boundary]") {
    // the upper end, ten years: "a stage duration over ten years is refused"
    CHECK(valid_stages({stage(10, 0.0)}));
    CHECK_FALSE(valid_stages({stage(10, std::nextafter(0.0, -1.0))}));
}

TEST_CASE("boundary: a stage's max_error_rate runs from 0 to 1", "[rollout_config][boundary]") {
    CHECK(valid_stages({stage(10, 0, 0.0)}));
    CHECK(valid_stages({stage(10, 0, 1.0)}));
    CHECK_FALSE(valid_stages({stage(10, 0, std::nextafter(0.0, -1.0))}));
    CHECK_FALSE(valid_stages({stage(10, 0, std::nextafter(1.0, 2.0))}));
}

TEST_CASE("boundary: an error rate to judge runs from 0 to 1", "[rollout_config][boundary]") {
    const StagePlan plan = default_plan();
    const RolloutPosition canary{0, 0.0, RolloutState::Active};
    CHECK_NOTHROW(plan.check_advance(canary, 0.0, 0));
    CHECK_NOTHROW(plan.check_advance(canary, 1.0, 0));
    CHECK_THROWS_AS(plan.check_advance(canary, std::nextafter(0.0, -1.0), 0),
                    std::invalid_argument);
    CHECK_THROWS_AS(plan.check_advance(canary, std::nextafter(1.0, 2.0), 0), std::invalid_argument);
}

TEST_CASE("boundary: a stage asks for 1 to 10 approvals, more than 1 only with approval",
          "[rollout_config][boundary]") {
    CHECK(valid_stages({stage(10, 0, 0.1, true, 1)}));
    CHECK(valid_stages({stage(10, 0, 0.1, true, driftgate::kMaxApprovals)}));
    CHECK(driftgate::kMaxApprovals == 10);
    CHECK_FALSE(valid_stages({stage(10, 0, 0.1, true, 0)}));
    CHECK_FALSE(valid_stages({stage(10, 0, 0.1, true, driftgate::kMaxApprovals + 1)}));
    CHECK(valid_stages({stage(10, 0, 0.1, false, 1)}));
    CHECK_FALSE(valid_stages({stage(10, 0, 0.1, false, 2)}));
}

TEST_CASE("boundary: a stage index past the last reaches no state",
          "[rollout_config][stage_plan][boundary]") {
    const StagePlan plan = default_plan();  // stages 0 to 4
    CHECK(plan.reachable(4, RolloutState::Completed));
    for (const auto state :
         {RolloutState::Active, RolloutState::Aborted, RolloutState::Completed}) {
        CHECK_FALSE(plan.reachable(5, state));
    }
}

TEST_CASE("boundary: a one-stage rollout is complete, and stays so when resumed",
          "[rollout_config][stage_plan][boundary]") {
    // The first stage is also the final one: nothing to advance to, and a resumed rollout
    // enters it completed.
    const StagePlan plan({{"only", 100, 0, 0.1, false}});
    CHECK(plan.is_final(0));
    CHECK_FALSE(plan.advance_target({0, 1.0, RolloutState::Completed}).has_value());
    CHECK(plan.advance_target({0, 1.0, RolloutState::Aborted}) == std::optional<std::size_t>(0));
    const RolloutPosition resumed = plan.advanced({0, 1.0, RolloutState::Aborted}, 5.0);
    CHECK(resumed.state == RolloutState::Completed);
    CHECK(resumed.started_at == 5.0);
    CHECK(plan.check_advance({0, 1.0, RolloutState::Completed}, 0.0, 5.0).verdict ==
          Verdict::FinalStage);
    // two stages: the first is not final
    const StagePlan two({{"a", 10, 0, 0.1, false}, {"b", 100, 0, 0.1, false}});
    CHECK_FALSE(two.is_final(0));
    CHECK(two.is_final(1));
    CHECK(two.advanced({0, 1.0, RolloutState::Aborted}, 5.0).state == RolloutState::Active);
}
