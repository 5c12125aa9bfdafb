#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "driftgate/rollout_manager.hpp"

using driftgate::DriftTracker;
using driftgate::EnforceOptions;
using driftgate::Enforcer;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::RolloutConfig;
using driftgate::RolloutManager;
using driftgate::RolloutState;
using driftgate::StateError;

namespace {

constexpr double kHour = 3600;

struct Fixture {
    Fixture() {
        char pattern[] = "/tmp/driftgate-test-XXXXXX";
        dir = mkdtemp(pattern);
    }
    ~Fixture() { std::filesystem::remove_all(dir); }

    RolloutManager make(RolloutManager::Options options = {}) {
        options.enforcer = enforcer;
        options.registry = registry;
        options.clock = clock;
        options.state_path = dir + "/state.json";
        return RolloutManager(RolloutConfig::default_config(), options);
    }

    std::string dir;
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(1'700'000'000.0);
    std::shared_ptr<MetricsRegistry> registry = std::make_shared<MetricsRegistry>();
    std::shared_ptr<DriftTracker> tracker =
        std::make_shared<DriftTracker>(driftgate::default_windows(), clock, registry);
    std::shared_ptr<Enforcer> enforcer =
        std::make_shared<Enforcer>(EnforceOptions{true, 0, 0.005}, tracker);
};

}  // namespace

TEST_CASE("a fresh manager starts the first stage now and sets the enforcer", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    const auto snapshot = manager.snapshot();
    CHECK(snapshot.stage_index == 0);
    CHECK(snapshot.started_at == f.clock->wall());
    CHECK(f.enforcer->options().rollout_percent == 10);
    CHECK(snapshot.version == 1);
    CHECK(std::filesystem::exists(f.dir + "/state.json"));
}

TEST_CASE("every reachable transition counter exists at 0 from the start", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    const auto text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("guardian_rollout_advancement_total{to_stage=\"canary\"} 0"));
    CHECK_THAT(text, Catch::Contains("guardian_rollout_advancement_total{to_stage=\"full\"} 0"));
    CHECK_THAT(text, Catch::Contains("guardian_rollout_rollback_total{from_stage=\"canary\","
                                     "to_stage=\"aborted\"} 0"));
    CHECK_THAT(text, Catch::Contains("guardian_rollout_rollback_total{from_stage=\"full\","
                                     "to_stage=\"most\"} 0"));
    CHECK_THAT(text, !Catch::Contains("from_stage=\"quarter\",to_stage=\"half\""));
}

TEST_CASE("auto-advance waits for the duration and stops before approval", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    CHECK(manager.evaluate(0.001).second.find("duration not met") != std::string::npos);
    f.clock->advance(25 * kHour);
    const auto [advanced, message] = manager.evaluate(0.001);
    CHECK_FALSE(advanced);
    CHECK(message ==
          "Ready but requires approval: Ready to advance to quarter (requires approval)");
    CHECK(manager.snapshot().stage_index == 0);
}

TEST_CASE("a high error rate rolls back, and from the first stage aborts", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    manager.manual_advance("ops");
    CHECK(f.enforcer->options().rollout_percent == 25);
    auto [advanced, message] = manager.evaluate(0.01);
    CHECK_FALSE(advanced);
    CHECK(message ==
          "Rolled back due to high error rate: 1.000% (Rolled back from quarter to canary)");
    CHECK(f.enforcer->options().rollout_percent == 10);
    std::tie(advanced, message) = manager.evaluate(0.01);
    CHECK(manager.snapshot().state == RolloutState::Aborted);
    CHECK(f.enforcer->options().rollout_percent == 0);
    CHECK(manager.evaluate(0.0).second.find("aborted") != std::string::npos);
    const auto text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("guardian_rollout_stage{stage_name=\"aborted\"} -1"));
    CHECK_THAT(
        text, Catch::Contains(
                  "guardian_rollout_rollback_total{from_stage=\"canary\",to_stage=\"aborted\"} 1"));
}

TEST_CASE("a manual advance resumes an aborted rollout at the first stage", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    manager.manual_rollback("ops", "bad canary");
    CHECK(manager.snapshot().state == RolloutState::Aborted);
    const auto [ok, message] = manager.manual_advance("ops");
    CHECK(ok);
    CHECK(message == "Resumed rollout at stage canary (10%)");
    CHECK(manager.snapshot().state == RolloutState::Active);
    CHECK(f.enforcer->options().rollout_percent == 10);
}

TEST_CASE("a whole cycle from canary to full", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    std::vector<std::string> visited{"canary"};
    while (manager.snapshot().state != RolloutState::Completed) {
        const auto stage = manager.snapshot();
        f.clock->advance(stage.stages[stage.stage_index].duration_seconds + 1);
        auto [advanced, message] = manager.evaluate(0.0001);
        if (!advanced) {
            REQUIRE(message.find("requires approval") != std::string::npos);
            REQUIRE(manager.manual_advance("ops").first);
        }
        visited.push_back(manager.snapshot().stages[manager.snapshot().stage_index].name);
    }
    CHECK(visited == std::vector<std::string>{"canary", "quarter", "half", "most", "full"});
    CHECK(f.enforcer->options().rollout_percent == 100);
    CHECK(manager.manual_advance("ops").second == "Already at final stage");
}

TEST_CASE("a restart resumes the same stage with the same start", "[rollout]") {
    Fixture f;
    double started;
    {
        auto manager = f.make();
        manager.manual_advance("ops");
        started = manager.snapshot().started_at;
    }
    f.clock->advance(5 * kHour);
    auto again = f.make();
    CHECK(again.snapshot().stage_index == 1);
    CHECK(again.snapshot().started_at == started);
    CHECK(again.snapshot().now - again.snapshot().started_at == 5 * kHour);
    CHECK(again.snapshot().transitions.size() == 2);
}

TEST_CASE("a corrupt state file stops the manager and is kept", "[rollout]") {
    Fixture f;
    std::ofstream(f.dir + "/state.json") << "{\"schema_version\": 1, \"garbage";
    CHECK_THROWS_AS(f.make(), StateError);
    std::ifstream in(f.dir + "/state.json");
    CHECK(std::string(std::istreambuf_iterator<char>(in), {}) ==
          "{\"schema_version\": 1, \"garbage");
}

TEST_CASE("min_requests holds, but never blocks a rollback", "[rollout]") {
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 100;
    auto manager = f.make(options);
    f.clock->advance(25 * kHour);
    CHECK(manager.evaluate(0.0, 50).second == "Holding: insufficient data (50 of 100 requests)");
    CHECK(manager.evaluate(0.0).second == "Holding: insufficient data (unknown of 100 requests)");
    manager.manual_advance("ops");
    CHECK(manager.evaluate(0.5, 3).second.find("Rolled back") == 0);
}

TEST_CASE("with confidence a few failures cannot roll back", "[rollout]") {
    Fixture f;
    RolloutManager::Options options;
    options.confidence = 0.95;
    auto manager = f.make(options);
    manager.manual_advance("ops");  // quarter, max 0.4 %
    // 0.5 % is above 0.4 %, but one failure in 200 is no evidence of it.
    auto [advanced, message] = manager.evaluate_counts(1, 200);
    CHECK(message.find("Holding: error rate upper bound") == 0);
    CHECK(manager.snapshot().stage_index == 1);
    std::tie(advanced, message) = manager.evaluate_counts(60, 1000);  // lower bound well above
    CHECK(message.find("Rolled back") == 0);
}

TEST_CASE("concurrent advances and rollbacks leave a consistent history", "[rollout][threads]") {
    Fixture f;
    auto manager = f.make();
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 20; ++i) {
                if ((t + i) % 2 == 0) {
                    manager.manual_advance("ops");
                } else {
                    manager.manual_rollback("ops", "test");
                }
            }
        });
    }
    for (auto& thread : threads) thread.join();
    const auto snapshot = manager.snapshot();
    // Each transition's "from" is the previous one's "to".
    for (std::size_t i = 1; i < snapshot.transitions.size(); ++i) {
        REQUIRE(snapshot.transitions[i].from == snapshot.transitions[i - 1].to);
    }
    const std::string last = snapshot.transitions.back().to;
    const std::string expected = snapshot.state == RolloutState::Aborted
                                     ? "aborted"
                                     : snapshot.stages[snapshot.stage_index].name;
    CHECK(last == expected);
    CHECK(f.enforcer->options().rollout_percent == snapshot.enforced_percentage);
}
