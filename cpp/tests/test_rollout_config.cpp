#include <catch2/catch.hpp>

#include "driftgate/rollout_config.hpp"

using driftgate::RolloutConfig;
using driftgate::RolloutStage;

namespace {
constexpr double kHour = 3600;
}

TEST_CASE("the default rollout has five stages starting at canary", "[rollout_config]") {
    const auto config = RolloutConfig::default_config();
    REQUIRE(config.stages().size() == 5);
    CHECK(config.current_stage().name == "canary");
    CHECK(config.current_stage().percentage == 10);
    CHECK(config.stages()[1].requires_approval);
    CHECK(config.stages()[2].duration_seconds == 48 * kHour);
    CHECK(config.stages()[4].percentage == 100);
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
