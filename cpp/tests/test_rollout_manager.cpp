#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "driftgate/rollout_manager.hpp"
#include "driftgate/statistics.hpp"

using driftgate::Decision;
using driftgate::DecisionAction;
using driftgate::DriftTracker;
using driftgate::EnforceOptions;
using driftgate::Enforcer;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::RolloutConfig;
using driftgate::RolloutManager;
using driftgate::RolloutStage;
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

    RolloutManager make(RolloutManager::Options options = {},
                        const RolloutConfig& config = RolloutConfig::default_config()) {
        options.enforcer = enforcer;
        options.registry = registry;
        options.clock = clock;
        if (!options.state_path) options.state_path = dir + "/state.json";
        return RolloutManager(config, options);
    }

    std::string dir;
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(1'700'000'000.0);
    std::shared_ptr<MetricsRegistry> registry = std::make_shared<MetricsRegistry>();
    std::shared_ptr<DriftTracker> tracker =
        std::make_shared<DriftTracker>(driftgate::default_windows(), clock, registry);
    std::shared_ptr<Enforcer> enforcer =
        std::make_shared<Enforcer>(EnforceOptions{true, 0, 0.005}, tracker);
};

/// a (10%, 1h) -> b (20%, 1h) -> c (30%, needs approval); each stage tolerates 10% errors.
RolloutConfig three_stages() {
    return RolloutConfig(std::vector<RolloutStage>{
        {"a", 10, kHour, 0.1, false}, {"b", 20, kHour, 0.1, false}, {"c", 30, 0, 0.1, true}});
}

std::string stage_name(const RolloutManager::Snapshot& snapshot) {
    return snapshot.plan->position_name(snapshot.position);
}

}  // namespace

// -- Starting, walking, persisting -----------------------------------------------------------

TEST_CASE("a fresh manager starts the first stage now and sets the enforcer", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    const auto snapshot = manager.snapshot();
    CHECK(snapshot.position.stage_index == 0);
    CHECK(snapshot.position.started_at == f.clock->wall());
    CHECK(snapshot.position.state == RolloutState::Active);
    CHECK(f.enforcer->options().rollout_percent == 10);
    CHECK(manager.enforced_percentage() == 10);
    CHECK(snapshot.version == 1);
    REQUIRE(snapshot.transitions.size() == 1);
    CHECK(snapshot.transitions[0].actor == "system");
    CHECK(snapshot.transitions[0].from.empty());
    CHECK(snapshot.transitions[0].to == "canary");
    CHECK(std::filesystem::exists(f.dir + "/state.json"));
}

TEST_CASE("every reachable transition counter exists at 0 from the start", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    const auto text = f.registry->exposition();
    CHECK_THAT(
        text, Catch::Contains(
                  "guardian_rollout_advancement_total{rollout=\"default\",to_stage=\"canary\"} 0"));
    CHECK_THAT(text,
               Catch::Contains(
                   "guardian_rollout_advancement_total{rollout=\"default\",to_stage=\"full\"} 0"));
    CHECK_THAT(
        text,
        Catch::Contains("guardian_rollout_rollback_total{from_stage=\"canary\",rollout=\"default\","
                        "to_stage=\"aborted\"} 0"));
    CHECK_THAT(text, Catch::Contains(
                         "guardian_rollout_rollback_total{from_stage=\"full\",rollout=\"default\","
                         "to_stage=\"most\"} 0"));
    CHECK_THAT(text,
               !Catch::Contains("from_stage=\"quarter\",rollout=\"default\",to_stage=\"half\""));
}

TEST_CASE("auto-advance waits for the duration and stops before approval", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    CHECK(manager.evaluate(0.001).message.find("duration not met") != std::string::npos);
    f.clock->advance(25 * kHour);
    const Decision decision = manager.evaluate(0.001);
    CHECK_FALSE(decision.success);
    CHECK(decision.message ==
          "Ready but requires approval: Ready to advance to quarter (requires approval)");
    CHECK(manager.snapshot().position.stage_index == 0);
}

TEST_CASE("a moment is the published snapshot's at the time read, with its publication",
          "[rollout]") {
    Fixture f;
    auto manager = f.make();
    const auto first = manager.moment();
    const auto snapshot = manager.snapshot();
    CHECK(first.publication == snapshot.publication);
    CHECK(first.now == snapshot.now);
    CHECK(first.started_at == *snapshot.position.started_at);
    CHECK(first.judgement.reason == snapshot.judgement().reason);
    CHECK(first.judgement.waiting_for == snapshot.judgement().waiting_for);

    // The clock alone: the same publication, judged at the new time.
    f.clock->advance(kHour);
    const auto later = manager.moment();
    CHECK(later.publication == first.publication);
    CHECK(later.now == first.now + kHour);
    CHECK(later.judgement.reason != first.judgement.reason);
    CHECK(later.judgement.reason == manager.snapshot().judgement().reason);

    // Every change is a new publication: a reading, a minimum, a move.
    manager.evaluate(0.001);
    const auto read = manager.moment().publication;
    CHECK(read > later.publication);
    manager.set_min_requests(40);
    const auto reloaded = manager.moment().publication;
    CHECK(reloaded > read);
    manager.manual_advance("ops");
    CHECK(manager.moment().publication > reloaded);
    CHECK(manager.snapshot().publication == manager.moment().publication);
}

TEST_CASE("a high error rate rolls back, and from the first stage aborts", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    manager.manual_advance("ops");
    CHECK(f.enforcer->options().rollout_percent == 25);
    Decision decision = manager.evaluate(0.01);
    CHECK_FALSE(decision.success);
    CHECK(decision.message ==
          "Rolled back due to high error rate: 1.000% (Rolled back from quarter to canary)");
    CHECK(f.enforcer->options().rollout_percent == 10);
    decision = manager.evaluate(0.01);
    CHECK(decision.message ==
          "Rolled back due to high error rate: 1.000% (Rolled back from canary: rollout aborted "
          "at 0%)");
    CHECK(manager.snapshot().position.state == RolloutState::Aborted);
    CHECK(f.enforcer->options().rollout_percent == 0);
    CHECK(manager.evaluate(0.0).message.find("aborted") != std::string::npos);
    const auto text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains(
                         "guardian_rollout_stage{rollout=\"default\",stage_name=\"aborted\"} -1"));
    CHECK_THAT(text, Catch::Contains("guardian_rollout_rollback_total{from_stage=\"canary\","
                                     "rollout=\"default\",to_stage=\"aborted\"} 1"));
}

TEST_CASE("a manual advance resumes an aborted rollout at the first stage", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    const Decision rollback = manager.manual_rollback("ops", "bad canary");
    CHECK(rollback.message == "Rolled back from canary: rollout aborted at 0%");
    CHECK(manager.snapshot().position.state == RolloutState::Aborted);
    const Decision decision = manager.manual_advance("ops");
    CHECK(decision.success);
    CHECK(decision.message == "Resumed rollout at stage canary (10%)");
    CHECK(manager.snapshot().position.state == RolloutState::Active);
    CHECK(f.enforcer->options().rollout_percent == 10);
}

TEST_CASE("a whole cycle from canary to full", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    std::vector<std::string> visited{"canary"};
    while (manager.snapshot().position.state != RolloutState::Completed) {
        const auto snapshot = manager.snapshot();
        f.clock->advance(snapshot.plan->stage(snapshot.position.stage_index).duration_seconds + 1);
        const Decision decision = manager.evaluate(0.0001);
        if (!decision.success) {
            REQUIRE(decision.message.find("requires approval") != std::string::npos);
            REQUIRE(manager.manual_advance("ops").success);
        }
        visited.push_back(stage_name(manager.snapshot()));
    }
    CHECK(visited == std::vector<std::string>{"canary", "quarter", "half", "most", "full"});
    CHECK(f.enforcer->options().rollout_percent == 100);
    CHECK(manager.manual_advance("ops").message == "Already at final stage");
}

TEST_CASE("a restart resumes the same stage with the same start", "[rollout]") {
    Fixture f;
    std::optional<double> started;
    {
        auto manager = f.make();
        manager.manual_advance("ops");
        started = manager.snapshot().position.started_at;
    }
    REQUIRE(started.has_value());
    f.clock->advance(5 * kHour);
    auto again = f.make();
    const auto snapshot = again.snapshot();
    CHECK(snapshot.position.stage_index == 1);
    CHECK(snapshot.position.started_at == started);
    CHECK(snapshot.now - *snapshot.position.started_at == 5 * kHour);
    CHECK(snapshot.transitions.size() == 2);
    CHECK(snapshot.version == 2);
    CHECK(f.enforcer->options().rollout_percent == 25);
}

TEST_CASE("a corrupt state file stops the manager and is kept", "[rollout]") {
    Fixture f;
    std::ofstream(f.dir + "/state.json") << "{\"schema_version\": 1, \"garbage";
    CHECK_THROWS_AS(f.make(), StateError);
    std::ifstream in(f.dir + "/state.json");
    CHECK(std::string(std::istreambuf_iterator<char>(in), {}) ==
          "{\"schema_version\": 1, \"garbage");
    // The refused manager gave the enforcer back.
    CHECK_FALSE(f.enforcer->rollout_percent_claimed());
}

TEST_CASE("min_requests holds, and too few counted requests never roll back", "[rollout]") {
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 100;
    auto manager = f.make(options);
    f.clock->advance(25 * kHour);
    CHECK(manager.evaluate(0.0, 50).message == "Holding: insufficient data (50 of 100 requests)");
    CHECK(manager.evaluate(0.0).message == "Holding: insufficient data (unknown of 100 requests)");
    manager.manual_advance("ops");
    // 3 requests of this stage cannot judge it, however many of them failed.
    const Decision few = manager.evaluate(0.5, 3);
    CHECK(few.action == DecisionAction::InsufficientData);
    CHECK(few.to_stage == "quarter");
    CHECK(manager.evaluate(0.5, 99).action == DecisionAction::InsufficientData);
    CHECK(manager.evaluate_counts(99, 99).action == DecisionAction::InsufficientData);
    CHECK(manager.evaluate(0.5, 100).action == DecisionAction::RolledBack);
    manager.manual_advance("ops");
    // A source that counts nothing (a bare rate) still rolls back: its window is its own.
    CHECK(manager.evaluate(0.5).action == DecisionAction::RolledBack);
}

TEST_CASE("boundary: counted evidence is judged at failed / total against the threshold",
          "[rollout][boundary]") {
    Fixture f;
    auto manager = f.make();
    manager.manual_advance("ops");  // quarter, max 0.4 %
    // 4 of 1,000 is 0.4 %: at the threshold, not above it.
    const Decision at = manager.evaluate_counts(4, 1000);
    CHECK(at.action != DecisionAction::RolledBack);
    CHECK(at.error_rate == 0.004);
    CHECK(manager.snapshot().position.stage_index == 1);
    const Decision above = manager.evaluate_counts(5, 1000);  // 0.5 %
    CHECK(above.action == DecisionAction::RolledBack);
    CHECK(above.error_rate == 0.005);
}

TEST_CASE("a changed min_requests applies from the next decision", "[rollout]") {
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 100;
    auto manager = f.make(options);
    f.clock->advance(25 * kHour);
    CHECK(manager.evaluate(0.0, 50).action == DecisionAction::InsufficientData);
    manager.set_min_requests(40);
    CHECK(manager.min_requests() == 40);
    CHECK(manager.evaluate(0.0, 50).message.find("Ready but requires approval") == 0);
}

TEST_CASE("with confidence a few failures cannot roll back", "[rollout]") {
    Fixture f;
    RolloutManager::Options options;
    options.confidence = 0.95;
    auto manager = f.make(options);
    manager.manual_advance("ops");  // quarter, max 0.4 %
    // 0.5 % is above 0.4 %, but one failure in 200 is no evidence of it.
    Decision decision = manager.evaluate_counts(1, 200);
    CHECK(decision.message.find("Holding: error rate upper bound") == 0);
    CHECK(manager.snapshot().position.stage_index == 1);
    decision = manager.evaluate_counts(60, 1000);  // lower bound well above
    CHECK(decision.message.find("Rolled back") == 0);
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
    CHECK(snapshot.transitions.back().to == stage_name(snapshot));
    CHECK(f.enforcer->options().rollout_percent == snapshot.enforced_percentage);
}

// -- Decisions -------------------------------------------------------------------------------

TEST_CASE("an automatic advance is a decision by auto one version up", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    f.clock->advance(kHour);
    const Decision d = manager.evaluate(0.05);
    CHECK(d.success);
    CHECK(d.action == DecisionAction::Advanced);
    CHECK(d.message == "Advanced to stage b (20%)");
    CHECK(d.from_stage == "a");
    CHECK(d.to_stage == "b");
    CHECK(d.from_percentage == 10);
    CHECK(d.to_percentage == 20);
    CHECK(d.version == 2);
    CHECK(d.state == RolloutState::Active);
    CHECK(d.error_rate == 0.05);
    CHECK(d.actor == "auto");
    CHECK(d.moved());
    CHECK(manager.snapshot().transitions.back().actor == "auto");
}

TEST_CASE("a hold for the stage duration moves nothing and keeps the version",
          "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    f.clock->advance(kHour - 1);
    const Decision d = manager.evaluate(0.05);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::Held);
    CHECK(d.message == "Stage duration not met (remaining: 0:00:01)");
    CHECK(d.from_stage == "a");
    CHECK(d.to_stage == "a");
    CHECK(d.from_percentage == 10);
    CHECK(d.to_percentage == 10);
    CHECK(d.version == 1);
    CHECK(d.actor.empty());
    CHECK_FALSE(d.moved());
    CHECK(manager.snapshot().version == 1);
}

TEST_CASE("a ready rollout whose next stage needs approval waits for it", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    f.clock->advance(kHour);
    REQUIRE(manager.evaluate(0.0).action == DecisionAction::Advanced);
    f.clock->advance(kHour);
    const Decision d = manager.evaluate(0.0);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::WaitingForApproval);
    CHECK(d.message == "Ready but requires approval: Ready to advance to c (requires approval)");
    CHECK(d.from_stage == "b");
    CHECK(d.to_stage == "b");
    CHECK(d.version == 2);
    CHECK(d.actor.empty());
}

TEST_CASE("too few requests is insufficient data, at the same version", "[rollout][decision]") {
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 10;
    auto manager = f.make(options, three_stages());
    f.clock->advance(kHour);
    const Decision d = manager.evaluate(0.0, 9);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::InsufficientData);
    CHECK(d.message == "Holding: insufficient data (9 of 10 requests)");
    CHECK(d.to_stage == "a");
    CHECK(d.version == 1);
    CHECK(d.actor.empty());
    CHECK(manager.evaluate(0.0, 10).action == DecisionAction::Advanced);
}

TEST_CASE("a manual advance is the caller's, into a stage that needs approval",
          "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    REQUIRE(manager.manual_advance("alice").action == DecisionAction::Advanced);
    const Decision d = manager.manual_advance("bob");
    CHECK(d.success);
    CHECK(d.action == DecisionAction::Advanced);
    CHECK(d.message == "Manually advanced to stage c");
    CHECK(d.from_stage == "b");
    CHECK(d.to_stage == "c");
    CHECK(d.from_percentage == 20);
    CHECK(d.to_percentage == 30);
    CHECK(d.version == 3);
    CHECK(d.state == RolloutState::Completed);
    CHECK(d.actor == "bob");
    const auto transitions = manager.snapshot().transitions;
    CHECK(transitions[1].actor == "alice");
    CHECK(transitions[2].actor == "bob");
    CHECK(transitions[2].reason == "manual advance");
}

TEST_CASE("at the final stage nothing is left to advance to", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    manager.manual_advance("ops");
    manager.manual_advance("ops");
    Decision d = manager.manual_advance("ops");
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::AtFinalStage);
    CHECK(d.message == "Already at final stage");
    CHECK(d.from_stage == "c");
    CHECK(d.to_stage == "c");
    CHECK(d.version == 3);
    CHECK(d.actor.empty());
    d = manager.evaluate(0.0);
    CHECK(d.action == DecisionAction::AtFinalStage);
    CHECK(d.version == 3);
}

TEST_CASE("a rollback on a high error rate is auto's, a manual one the caller's",
          "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    manager.manual_advance("ops");
    manager.manual_advance("ops");
    Decision d = manager.evaluate(0.2);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::RolledBack);
    CHECK(d.message == "Rolled back due to high error rate: 20.000% (Rolled back from c to b)");
    CHECK(d.from_stage == "c");
    CHECK(d.to_stage == "b");
    CHECK(d.from_percentage == 30);
    CHECK(d.to_percentage == 20);
    CHECK(d.version == 4);
    CHECK(d.state == RolloutState::Active);
    CHECK(d.actor == "auto");
    d = manager.manual_rollback("carol", "latency");
    CHECK(d.success);
    CHECK(d.action == DecisionAction::RolledBack);
    CHECK(d.message == "Rolled back from b to a");
    CHECK(d.from_stage == "b");
    CHECK(d.to_stage == "a");
    CHECK(d.version == 5);
    CHECK(d.actor == "carol");
    CHECK(manager.snapshot().transitions.back().reason == "latency");
}

TEST_CASE("a rollback from the first stage aborts to 0%", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    Decision d = manager.manual_rollback("ops");
    CHECK(d.success);
    CHECK(d.action == DecisionAction::Aborted);
    CHECK(d.message == "Rolled back from a: rollout aborted at 0%");
    CHECK(d.from_stage == "a");
    CHECK(d.to_stage == "aborted");
    CHECK(d.from_percentage == 10);
    CHECK(d.to_percentage == 0);
    CHECK(d.version == 2);
    CHECK(d.state == RolloutState::Aborted);
    CHECK(d.actor == "ops");
    CHECK(f.enforcer->options().rollout_percent == 0);
}

TEST_CASE("a high error rate at the first stage aborts, by auto", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    const Decision d = manager.evaluate(0.5);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::Aborted);
    CHECK(d.to_stage == "aborted");
    CHECK(d.to_percentage == 0);
    CHECK(d.version == 2);
    CHECK(d.actor == "auto");
}

TEST_CASE("an aborted rollout holds, refuses another rollback, and resumes by hand",
          "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    manager.manual_rollback("ops");
    f.clock->advance(10 * kHour);
    Decision d = manager.evaluate(0.0);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::Held);
    CHECK(d.message == "Rollout aborted at 0%: a manual advance resumes it");
    CHECK(d.from_stage == "aborted");
    CHECK(d.to_stage == "aborted");
    CHECK(d.version == 2);
    d = manager.manual_rollback("ops");
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::AlreadyAborted);
    CHECK(d.message == "Rollout already aborted");
    CHECK(d.version == 2);
    CHECK(d.actor.empty());
    d = manager.manual_advance("dave");
    CHECK(d.success);
    CHECK(d.action == DecisionAction::Resumed);
    CHECK(d.message == "Resumed rollout at stage a (10%)");
    CHECK(d.from_stage == "aborted");
    CHECK(d.to_stage == "a");
    CHECK(d.from_percentage == 0);
    CHECK(d.to_percentage == 10);
    CHECK(d.version == 3);
    CHECK(d.state == RolloutState::Active);
    CHECK(d.actor == "dave");
    CHECK(manager.snapshot().position.started_at == f.clock->wall());
}

TEST_CASE("hold() reports the position without moving it", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    manager.manual_advance("ops");
    const Decision d = manager.hold("error-rate source timed out", DecisionAction::AnalysisFailed);
    CHECK_FALSE(d.success);
    CHECK(d.action == DecisionAction::AnalysisFailed);
    CHECK(d.message == "error-rate source timed out");
    CHECK(d.from_stage == "b");
    CHECK(d.to_stage == "b");
    CHECK(d.version == 2);
    CHECK(d.actor.empty());
    CHECK(driftgate::to_string(d.action) == "analysis_failed");
}

TEST_CASE("a bad actor is refused before anything moves", "[rollout][decision]") {
    Fixture f;
    auto manager = f.make({}, three_stages());
    CHECK_THROWS_WITH(manager.manual_advance("ops team"), Catch::Contains("'ops team'"));
    CHECK_THROWS_AS(manager.manual_rollback(""), std::invalid_argument);
    CHECK(manager.snapshot().version == 1);
    CHECK(manager.snapshot().position.stage_index == 0);
}

// -- The enforcer's options ------------------------------------------------------------------

TEST_CASE("update_options changes only the fields it is given", "[rollout][enforcer]") {
    Fixture f;
    Enforcer enforcer(EnforceOptions{true, 30, 0.005}, f.tracker);
    enforcer.update_options(std::nullopt, std::nullopt, 0.01);
    EnforceOptions options = enforcer.options();
    CHECK(options.enforce);
    CHECK(options.rollout_percent == 30);
    CHECK(options.drift_max_ratio == 0.01);
    enforcer.update_options(false, std::nullopt, std::nullopt);
    options = enforcer.options();
    CHECK_FALSE(options.enforce);
    CHECK(options.rollout_percent == 30);
    CHECK(options.drift_max_ratio == 0.01);
    enforcer.update_options(std::nullopt, 40, std::nullopt);
    CHECK(enforcer.options().rollout_percent == 40);
    CHECK(enforcer.options().drift_max_ratio == 0.01);
    // A bad value changes nothing, not even the good fields beside it.
    CHECK_THROWS_WITH(enforcer.update_options(true, 50, 2.0), Catch::Contains("drift_max_ratio"));
    options = enforcer.options();
    CHECK_FALSE(options.enforce);
    CHECK(options.rollout_percent == 40);
    CHECK(options.drift_max_ratio == 0.01);
}

TEST_CASE("a managed enforcer refuses a new rollout percent but takes other fields",
          "[rollout][enforcer]") {
    Fixture f;
    auto manager = f.make();
    CHECK(f.enforcer->rollout_percent_claimed());
    CHECK_THROWS_AS(f.enforcer->update_options(std::nullopt, 50, std::nullopt),
                    std::invalid_argument);
    CHECK_THROWS_WITH(f.enforcer->update_options(std::nullopt, 50, std::nullopt),
                      Catch::Contains("rollout_percent=50") && Catch::Contains("manual_advance"));
    CHECK_THROWS_AS(f.enforcer->set_options(EnforceOptions{true, 50, 0.005}),
                    std::invalid_argument);
    CHECK(f.enforcer->options().rollout_percent == 10);
    f.enforcer->update_options(std::nullopt, std::nullopt, 0.02);
    CHECK(f.enforcer->options().drift_max_ratio == 0.02);
    // Restating the current percent is not a change.
    f.enforcer->set_options(EnforceOptions{true, 10, 0.03});
    CHECK(f.enforcer->options().drift_max_ratio == 0.03);
    CHECK(f.enforcer->options().rollout_percent == 10);
    manager.manual_advance("ops");
    CHECK(f.enforcer->options().rollout_percent == 25);
    CHECK(f.enforcer->options().drift_max_ratio == 0.03);
}

TEST_CASE("drift ratio updates racing transitions never undo the manager's percent",
          "[rollout][enforcer][threads]") {
    Fixture f;
    RolloutManager::Options options;
    options.enforcer = f.enforcer;
    options.registry = f.registry;
    options.clock = f.clock;
    RolloutManager manager(RolloutConfig::default_config(), options);  // no state file: fast
    std::atomic<bool> stop{false};
    std::atomic<long> updates{0};
    std::thread updater([&] {
        for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) {
            f.enforcer->update_options(std::nullopt, std::nullopt, i % 2 == 0 ? 0.01 : 0.02);
            updates.fetch_add(1, std::memory_order_relaxed);
        }
    });
    constexpr int kTransitions = 20'000;
    int mismatches = 0;
    for (int i = 0; i < kTransitions; ++i) {
        const Decision d =
            i % 2 == 0 ? manager.manual_advance("ops") : manager.manual_rollback("ops");
        if (!d.moved() || f.enforcer->options().rollout_percent != manager.enforced_percentage()) {
            ++mismatches;
        }
    }
    stop = true;
    updater.join();
    CHECK(mismatches == 0);
    CHECK(updates.load() > 0);
    CHECK(manager.snapshot().version == kTransitions + 1);
    CHECK(f.enforcer->options().rollout_percent == 10);
    const double ratio = f.enforcer->options().drift_max_ratio;
    CHECK((ratio == 0.01 || ratio == 0.02));
}

// -- Writes that fail ------------------------------------------------------------------------

TEST_CASE("an advance whose write fails is not applied", "[rollout][state_file]") {
    Fixture f;
    RolloutManager::Options options;
    options.state_path = f.dir + "/state/rollout.json";
    std::filesystem::create_directory(f.dir + "/state");
    auto manager = f.make(options);
    manager.manual_advance("ops");
    const auto before = manager.snapshot();
    std::filesystem::remove_all(f.dir + "/state");
    f.clock->advance(60);
    CHECK_THROWS_AS(manager.manual_advance("ops"), StateError);
    CHECK_THROWS_WITH(manager.manual_advance("ops"), Catch::Contains("create temp file"));
    const auto after = manager.snapshot();
    CHECK(after.position.stage_index == 1);
    CHECK(after.position.started_at == before.position.started_at);
    CHECK(after.version == before.version);
    CHECK(after.transitions.size() == before.transitions.size());
    CHECK(f.enforcer->options().rollout_percent == 25);
    CHECK(manager.config().current_stage().name == "quarter");
    CHECK_THAT(f.registry->exposition(),
               Catch::Contains(
                   "guardian_rollout_advancement_total{rollout=\"default\",to_stage=\"half\"} 0"));
}

TEST_CASE("a rollback whose write fails is applied and still reported", "[rollout][state_file]") {
    Fixture f;
    RolloutManager::Options options;
    options.state_path = f.dir + "/state/rollout.json";
    std::filesystem::create_directory(f.dir + "/state");
    auto manager = f.make(options);
    manager.manual_advance("ops");
    std::filesystem::remove_all(f.dir + "/state");
    // Enforcing less is safe even when the disk refuses: it happens, and the error is raised.
    CHECK_THROWS_AS(manager.manual_rollback("ops"), StateError);
    CHECK(manager.snapshot().position.stage_index == 0);
    CHECK(manager.snapshot().version == 3);
    CHECK(f.enforcer->options().rollout_percent == 10);
    CHECK(manager.config().current_stage().name == "canary");
    CHECK_THROWS_AS(manager.evaluate(0.5), StateError);
    CHECK(manager.snapshot().position.state == RolloutState::Aborted);
    CHECK(f.enforcer->options().rollout_percent == 0);
    CHECK_THAT(
        f.registry->exposition(),
        Catch::Contains("guardian_rollout_stage{rollout=\"default\",stage_name=\"aborted\"} -1"));
}

namespace {

/// The file a fresh manager writes, with every time in it replaced by `time` (ISO 8601).
std::string state_file_timed(const std::string& path, const std::string& time) {
    std::ifstream in(path);
    std::string text(std::istreambuf_iterator<char>(in), {});
    const std::string now = "2023-11-14T22:13:20.000000Z";  // the fixture clock's start
    for (auto at = text.find(now); at != std::string::npos; at = text.find(now, at)) {
        text.replace(at, now.size(), time);
        at += time.size();
    }
    return text;
}

std::string contents(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST_CASE("a move past the last version a state holds is refused and nothing changes",
          "[rollout][state_file]") {
    Fixture f;
    const std::string path = f.dir + "/state.json";
    {
        driftgate::PersistedRollout last;
        last.stage_index = 1;
        last.started_at = f.clock->wall();
        last.version = driftgate::StateFile::kMaxVersion;
        last.transitions = {{f.clock->wall(), "ops", "canary", "quarter", "manual advance", ""}};
        const auto plan =
            std::make_shared<const driftgate::StagePlan>(driftgate::StagePlan::default_stages());
        driftgate::StateFile(path, plan).save(last);
    }
    const std::string before = contents(path);
    auto manager = f.make();
    CHECK(manager.version() == driftgate::StateFile::kMaxVersion);
    f.clock->advance(48 * kHour);
    CHECK_THROWS_WITH(manager.manual_advance("ops"), Catch::Contains("version 9007199254740992") &&
                                                         Catch::Contains("nothing was written"));
    // Not even a move that lowers enforcement is applied: the next start would refuse it.
    CHECK_THROWS_AS(manager.manual_rollback("ops"), StateError);
    CHECK_THROWS_AS(manager.evaluate(0.5), StateError);
    CHECK(contents(path) == before);
    const auto snapshot = manager.snapshot();
    CHECK(snapshot.version == driftgate::StateFile::kMaxVersion);
    CHECK(stage_name(snapshot) == "quarter");
    CHECK(snapshot.transitions.size() == 1);
    CHECK(f.enforcer->options().rollout_percent == 25);
    CHECK_THAT(f.registry->exposition(),
               Catch::Contains(
                   "guardian_rollout_rollback_total{from_stage=\"quarter\",rollout=\"default\","
                   "to_stage=\"canary\"} 0"));
}

TEST_CASE("a move that would write a time past the year 9999 is refused and nothing changes",
          "[rollout][state_file]") {
    Fixture f;
    const std::string path = f.dir + "/state.json";
    { f.make(); }  // a fresh rollout at canary, version 1
    // Read to the tenth of a microsecond this is still 9999; as a double it is 10000-01-01.
    const std::string timed = state_file_timed(path, "9999-12-31T23:59:59.9999999Z");
    std::ofstream(path) << timed;
    const std::string before = contents(path);
    auto manager = f.make();
    CHECK(*manager.snapshot().position.started_at == driftgate::StateFile::kEndOfTime);
    CHECK_THROWS_WITH(manager.manual_advance("ops"),
                      Catch::Contains("253402300800") && Catch::Contains("nothing was written"));
    CHECK_THROWS_AS(manager.manual_rollback("ops"), StateError);
    CHECK(contents(path) == before);
    CHECK(manager.version() == 1);
    CHECK(stage_name(manager.snapshot()) == "canary");
    CHECK(f.enforcer->options().rollout_percent == 10);
}

TEST_CASE("a manager whose first write fails does not start and frees the enforcer",
          "[rollout][state_file]") {
    Fixture f;
    RolloutManager::Options options;
    options.state_path = f.dir + "/missing/rollout.json";
    auto config = RolloutConfig::default_config();
    CHECK_THROWS_AS(f.make(options, config), StateError);
    CHECK_FALSE(f.enforcer->rollout_percent_claimed());
    CHECK_FALSE(config.owned());
    CHECK_NOTHROW(f.make({}, config));
}

TEST_CASE("a rollback applied despite a failed write is counted", "[rollout][state_file]") {
    Fixture f;
    RolloutManager::Options options;
    options.state_path = f.dir + "/state/rollout.json";
    std::filesystem::create_directory(f.dir + "/state");
    auto manager = f.make(options);
    manager.manual_advance("ops");
    std::filesystem::remove_all(f.dir + "/state");
    CHECK_THROWS_AS(manager.manual_rollback("ops"), StateError);
    CHECK_THROWS_AS(manager.manual_rollback("ops"), StateError);
    const auto text = f.registry->exposition();
    CHECK_THAT(text,
               Catch::Contains(
                   "guardian_rollout_rollback_total{from_stage=\"quarter\",rollout=\"default\","
                   "to_stage=\"canary\"} 1"));
    CHECK_THAT(
        text,
        Catch::Contains("guardian_rollout_rollback_total{from_stage=\"canary\",rollout=\"default\","
                        "to_stage=\"aborted\"} 1"));
}

// -- Four eyes -------------------------------------------------------------------------------

namespace {

/// a (10%) -> b (50%, two people must approve) -> c (100%, one approval).
RolloutConfig four_eyes() {
    return RolloutConfig(std::vector<RolloutStage>{
        {"a", 10, 0, 0.1, false}, {"b", 50, 0, 0.1, true, 2}, {"c", 100, 0, 0.1, true}});
}

}  // namespace

TEST_CASE("a stage for four eyes is entered by the second distinct approver", "[rollout]") {
    Fixture f;
    auto manager = f.make({}, four_eyes());
    const auto first = manager.manual_advance("alice");
    CHECK(first.success);
    CHECK(first.action == DecisionAction::ApprovalRecorded);
    CHECK_FALSE(first.moved());
    CHECK(first.version == 2);
    CHECK(f.enforcer->options().rollout_percent == 10);
    const auto again = manager.manual_advance("alice");
    CHECK_FALSE(again.success);
    CHECK(again.action == DecisionAction::AlreadyApproved);
    CHECK(again.version == 2);
    const auto second = manager.manual_advance("bob");
    CHECK(second.action == DecisionAction::Advanced);
    CHECK(second.to_stage == "b");
    CHECK(f.enforcer->options().rollout_percent == 50);
    const auto history = manager.snapshot().transitions;
    REQUIRE(history.size() == 3);
    CHECK(history[1].actor == "alice");
    CHECK(history[1].from == "a");
    CHECK(history[1].to == "a");
    CHECK(history[1].reason == "approval 1 of 2 to enter b");
    CHECK(history[2].actor == "bob");
    CHECK(manager.snapshot().approvals.empty());
    // One approval is enough for c.
    CHECK(manager.manual_advance("carol").to_stage == "c");
}

TEST_CASE("four eyes compares people, not the names they sign in with", "[rollout]") {
    Fixture f;
    auto manager = f.make({}, four_eyes());
    const auto first = manager.manual_advance("alice-laptop", "", std::nullopt, std::nullopt, "",
                                              std::string("alice"));
    REQUIRE(first.action == DecisionAction::ApprovalRecorded);
    CHECK(manager.snapshot().approvals == std::vector<std::string>{"alice"});
    // The history shows the name used; the approval is the person's.
    CHECK(manager.snapshot().transitions.back().actor == "alice-laptop");
    const auto same = manager.manual_advance("alice-sso", "", std::nullopt, std::nullopt, "",
                                             std::string("alice"));
    CHECK(same.action == DecisionAction::AlreadyApproved);
    CHECK_FALSE(same.success);
    CHECK(same.version == first.version);
    CHECK_THAT(same.message, Catch::Contains("alice-sso already approved entering b"));
    // Without a person, the actor is the person: "alice" is the one who approved.
    CHECK(manager.manual_advance("alice").action == DecisionAction::AlreadyApproved);
    CHECK_THROWS_AS(manager.manual_advance("bob", "", std::nullopt, std::nullopt, "",
                                           std::string("not a person id")),
                    std::invalid_argument);
    const auto second =
        manager.manual_advance("bob", "", std::nullopt, std::nullopt, "", std::string("bob"));
    CHECK(second.action == DecisionAction::Advanced);
    CHECK(second.to_stage == "b");
}

TEST_CASE("a credential that is nobody never counts as one of several approvals", "[rollout]") {
    Fixture f;
    auto manager = f.make({}, four_eyes());
    const auto alone =
        manager.manual_advance("admin-token", "", std::nullopt, std::nullopt, "", std::string());
    CHECK(alone.action == DecisionAction::AlreadyApproved);
    CHECK_THAT(alone.message, Catch::Contains("admin-token is not a person"));
    CHECK(alone.version == 1);
    CHECK(manager.snapshot().approvals.empty());
    REQUIRE(manager.manual_advance("alice").action == DecisionAction::ApprovalRecorded);
    // After one person's approval, the shared credential still does not make the second.
    CHECK(manager.manual_advance("admin-token", "", std::nullopt, std::nullopt, "", std::string())
              .action == DecisionAction::AlreadyApproved);
    CHECK(f.enforcer->options().rollout_percent == 10);
    REQUIRE(manager.manual_advance("bob").to_stage == "b");
    // A stage that needs one approval is entered by it: a first rollout needs nothing more.
    const auto single =
        manager.manual_advance("admin-token", "", std::nullopt, std::nullopt, "", std::string());
    CHECK(single.action == DecisionAction::Advanced);
    CHECK(single.to_stage == "c");
}

TEST_CASE("approvals survive a restart and a rollback forgets them", "[rollout]") {
    Fixture f;
    {
        auto manager = f.make({}, four_eyes());
        REQUIRE(manager.manual_advance("alice").action == DecisionAction::ApprovalRecorded);
    }
    {
        auto manager = f.make({}, four_eyes());
        CHECK(manager.snapshot().approvals == std::vector<std::string>{"alice"});
        CHECK(manager.manual_advance("alice").action == DecisionAction::AlreadyApproved);
        REQUIRE(manager.manual_rollback("bob").action == DecisionAction::Aborted);
        CHECK(manager.snapshot().approvals.empty());
        REQUIRE(manager.manual_advance("bob").action == DecisionAction::Resumed);
        // The approval given before the rollback no longer counts.
        CHECK(manager.manual_advance("bob").action == DecisionAction::ApprovalRecorded);
        CHECK(manager.manual_advance("alice").to_stage == "b");
    }
}

TEST_CASE("a stage asking for one approval keeps the old fingerprint", "[rollout]") {
    std::vector<RolloutStage> stages = {{"a", 10, 0, 0.1, false}, {"b", 50, 0, 0.1, true}};
    const auto before = driftgate::stages_fingerprint(stages);
    stages[1].approvals_required = 2;
    CHECK(driftgate::stages_fingerprint(stages) != before);
    stages[1].approvals_required = 1;
    CHECK(driftgate::stages_fingerprint(stages) == before);
    stages[0].approvals_required = 2;  // without requires_approval
    CHECK_THROWS_WITH(driftgate::validate_stages(stages),
                      Catch::Contains("needs requires_approval"));
    stages[0].approvals_required = 0;
    CHECK_THROWS_WITH(driftgate::validate_stages(stages), Catch::Contains("expected 1 to 10"));
}

TEST_CASE("a state file with impossible approvals is refused", "[rollout]") {
    Fixture f;
    { auto manager = f.make({}, four_eyes()); }
    const std::string path = f.dir + "/state.json";
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    const auto end = text.rfind('}');
    for (const std::string approvals : {"[\"alice\", \"alice\"]", "[\"alice\", \"bob\"]",
                                        "[\"not valid!\"]", "\"alice\"", "[1]"}) {
        std::ofstream(path) << text.substr(0, end) << ", \"approvals\": " << approvals << "}\n";
        CHECK_THROWS_AS(f.make({}, four_eyes()), StateError);
    }
    std::ofstream(path) << text.substr(0, end) << ", \"approvals\": [\"alice\"]}\n";
    CHECK(f.make({}, four_eyes()).snapshot().approvals == std::vector<std::string>{"alice"});
}

// -- What the rollout waits for ----------------------------------------------------------------

namespace {

using driftgate::Judgement;
using driftgate::WaitingFor;

Judgement judged(const RolloutManager& manager) { return manager.snapshot().judgement(); }

}  // namespace

TEST_CASE("held by confidence, the status waits for the error rate, not a person",
          "[rollout][status]") {
    Fixture f;
    RolloutManager::Options options;
    options.confidence = 0.95;
    auto manager = f.make(options);
    f.clock->advance(25 * kHour);
    CHECK(judged(manager).waiting_for == WaitingFor::Data);  // no reading: no bounds to judge
    // canary allows 0.5 %: 1 of 200 is within it, but its upper bound is not
    const Decision held = manager.evaluate_counts(1, 200);
    CHECK(held.action == DecisionAction::Held);
    const Judgement judgement = judged(manager);
    CHECK(judgement.action == DecisionAction::Held);
    CHECK(judgement.waiting_for == WaitingFor::ErrorRate);
    CHECK(judgement.reason == held.message);
    // enough evidence: now a person is needed to enter quarter
    CHECK(manager.evaluate_counts(1, 5000).action == DecisionAction::WaitingForApproval);
    CHECK(judged(manager).waiting_for == WaitingFor::Approval);
}

TEST_CASE("below min_requests the status waits for data, not a person", "[rollout][status]") {
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 100;
    auto manager = f.make(options);
    f.clock->advance(25 * kHour);
    CHECK(judged(manager).waiting_for == WaitingFor::Data);  // no reading yet
    CHECK(manager.evaluate(0.0, 99).action == DecisionAction::InsufficientData);
    CHECK(judged(manager).waiting_for == WaitingFor::Data);
    CHECK(manager.evaluate(0.0, 100).action == DecisionAction::WaitingForApproval);
    CHECK(judged(manager).action == DecisionAction::WaitingForApproval);
    manager.set_min_requests(101);  // a reload: the same reading no longer suffices
    CHECK(judged(manager).waiting_for == WaitingFor::Data);
}

TEST_CASE("the status names every wait the decision knows", "[rollout][status]") {
    Fixture f;
    auto manager = f.make(RolloutManager::Options{}, three_stages());
    CHECK(judged(manager).waiting_for == WaitingFor::Duration);
    f.clock->advance(kHour);
    CHECK(judged(manager).waiting_for == WaitingFor::Check);  // the next check advances
    CHECK(judged(manager).action == DecisionAction::Advanced);
    CHECK(manager.evaluate(0.0).action == DecisionAction::Advanced);
    f.clock->advance(kHour);
    CHECK(judged(manager).waiting_for == WaitingFor::Approval);  // c needs approval
    manager.manual_advance("ops");
    CHECK(judged(manager).waiting_for == WaitingFor::Nothing);
    manager.manual_rollback("ops");
    manager.manual_rollback("ops");
    manager.manual_rollback("ops");
    CHECK(judged(manager).waiting_for == WaitingFor::Resume);
}

TEST_CASE("a stage's readings are forgotten when the stage changes", "[rollout][status]") {
    Fixture f;
    auto manager = f.make(RolloutManager::Options{}, three_stages());
    f.clock->advance(kHour);
    manager.manual_advance("ops");  // b
    f.clock->advance(kHour);
    const Decision rolled = manager.evaluate(0.5, 1000);
    CHECK(rolled.action == DecisionAction::RolledBack);
    CHECK(rolled.error_rate == 0.5);  // the decision still says what it was judged on
    // a has a fresh start and no reading of its own: nothing says it would roll back
    const auto snapshot = manager.snapshot();
    CHECK_FALSE(snapshot.evidence.has_value());
    CHECK(snapshot.last_error_rate == 0.5);
    CHECK(snapshot.judgement().waiting_for == WaitingFor::Duration);
    // a reading in the same stage is kept
    CHECK(manager.evaluate(0.01, 10).action == DecisionAction::Held);
    CHECK(manager.snapshot().evidence->requests == 10u);
}

TEST_CASE("an advance keeps the person's reason", "[rollout]") {
    Fixture f;
    auto manager = f.make();
    CHECK(manager.manual_advance("ops", "fix deployed\tin 1.4.2").success);
    CHECK(manager.snapshot().transitions.back().reason == "fix deployed?in 1.4.2");
    CHECK(manager.manual_advance("ops").success);
    CHECK(manager.snapshot().transitions.back().reason == "manual advance");
    manager.manual_rollback("ops");
    manager.manual_rollback("ops");
    manager.manual_rollback("ops");  // aborted
    CHECK(manager.manual_advance("ops", "").message.find("Resumed") == 0);
    CHECK(manager.snapshot().transitions.back().reason == "manual resume");
}

TEST_CASE("an approval's reason is kept within what a state file accepts", "[rollout]") {
    Fixture f;
    const std::vector<RolloutStage> stages{{"a", 10, 0, 0.1, false}, {"b", 50, 0, 0.1, true, 2}};
    {
        auto manager = f.make(RolloutManager::Options{}, RolloutConfig(stages));
        const Decision first = manager.manual_advance("alice", std::string(500, 'x'));
        CHECK(first.action == DecisionAction::ApprovalRecorded);
        const std::string reason = manager.snapshot().transitions.back().reason;
        CHECK(reason.size() == driftgate::StateFile::kMaxReasonLength);
        CHECK(reason.find("approval 1 of 2 to enter b: xxx") == 0);
    }
    // the state file written with it loads again
    auto reopened = f.make(RolloutManager::Options{}, RolloutConfig(stages));
    CHECK(reopened.snapshot().approvals == std::vector<std::string>{"alice"});
}

// -- Several rollouts on one enforcer and one registry -----------------------------------------

namespace {

using driftgate::Cohort;
using driftgate::cohort_seed;
using driftgate::sampling_bucket;

RolloutManager::Options rollout_of(std::string name, std::vector<std::string> policies,
                                   const std::string& dir) {
    RolloutManager::Options options;
    options.state_path = dir + "/" + name + ".json";
    options.rollout = std::move(name);
    options.policies = std::move(policies);
    return options;
}

/// The sample lines of `metric` (the name exactly, then its labels) carrying `rollout`.
std::vector<std::string> samples(const std::string& text, const std::string& metric,
                                 const std::string& rollout) {
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at < text.size()) {
        std::size_t end = text.find('\n', at);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(at, end - at);
        at = end + 1;
        if (line.rfind(metric + "{", 0) == 0 &&
            line.find("rollout=\"" + rollout + "\"") != std::string::npos) {
            out.push_back(line);
        }
    }
    return out;
}

/// The value of the one sample of `metric` whose labels contain every one of `labels`.
double value_of(const std::string& text, const std::string& metric, const std::string& rollout,
                const std::vector<std::string>& labels = {}) {
    std::optional<double> found;
    for (const std::string& line : samples(text, metric, rollout)) {
        bool all = true;
        for (const std::string& label : labels) all = all && line.find(label) != std::string::npos;
        if (!all) continue;
        REQUIRE_FALSE(found.has_value());
        found = std::stod(line.substr(line.rfind(' ') + 1));
    }
    REQUIRE(found.has_value());
    return *found;
}

}  // namespace

TEST_CASE("two rollouts on one enforcer move their own policies only", "[rollout][shares]") {
    Fixture f;
    auto orders = f.make(rollout_of("orders", {"orders.v2", "orders.v3"}, f.dir));
    auto checkout = f.make(rollout_of("checkout", {"checkout"}, f.dir));
    CHECK(f.enforcer->rollout_percent_of("orders.v2") == 10);
    CHECK(f.enforcer->rollout_percent_of("checkout") == 10);
    CHECK(f.enforcer->rollout_percent_of("search") == 0);  // the global percent, unclaimed
    CHECK_FALSE(f.enforcer->rollout_percent_claimed());

    orders.manual_advance("ops");
    orders.manual_advance("ops");
    CHECK(f.enforcer->rollout_percent_of("orders.v3") == 50);
    CHECK(f.enforcer->rollout_percent_of("checkout") == 10);
    checkout.manual_rollback("ops");  // aborts checkout alone
    CHECK(checkout.snapshot().position.state == RolloutState::Aborted);
    CHECK(f.enforcer->rollout_percent_of("checkout") == 0);
    CHECK(f.enforcer->rollout_percent_of("orders.v2") == 50);
    orders.manual_rollback("ops");
    CHECK(f.enforcer->rollout_percent_of("orders.v2") == 25);
    CHECK(checkout.snapshot().position.state == RolloutState::Aborted);

    // Each cohort is its own: orders' keys at 25 % of its own hash.
    const std::uint32_t seed = cohort_seed("orders", 0);
    for (int i = 0; i < 2000; ++i) {
        const std::string key = "u" + std::to_string(i);
        REQUIRE(f.enforcer->in_rollout(key, "orders.v2") == (sampling_bucket(key, seed) < 2500));
        REQUIRE_FALSE(f.enforcer->in_rollout(key, "checkout"));
    }
    const std::string text = f.registry->exposition();
    CHECK(value_of(text, "guardian_rollout_stage", "orders", {"stage_name=\"quarter\""}) == 1);
    CHECK(value_of(text, "guardian_rollout_stage", "checkout", {"stage_name=\"aborted\""}) == -1);
    CHECK(samples(text, "guardian_rollout_stage", "orders").size() == 1);
    CHECK(samples(text, "guardian_rollout_stage", "checkout").size() == 1);
    CHECK(value_of(text, "adapt_enforce_rollout_percent", "orders") == 25);
    CHECK(value_of(text, "adapt_enforce_rollout_percent", "checkout") == 0);
    CHECK(value_of(text, "adapt_enforce_rollout_percent", "") == 0);
    CHECK(samples(text, "guardian_rollout_stage", "default").empty());
}

TEST_CASE("three rollouts advance, roll back and abort independently", "[rollout][shares]") {
    Fixture f;
    auto a = f.make(rollout_of("a", {"pa"}, f.dir), three_stages());
    auto b = f.make(rollout_of("b", {"pb"}, f.dir), three_stages());
    auto c = f.make(rollout_of("c", {"pc"}, f.dir), three_stages());
    f.clock->advance(2 * kHour);
    // Each judged on its own error rate: a advances, b rolls back (aborts), c holds.
    CHECK(a.evaluate(0.0).action == DecisionAction::Advanced);
    CHECK(b.evaluate(0.5).action == DecisionAction::Aborted);
    CHECK(c.evaluate_counts(0, 10).action == DecisionAction::Advanced);
    CHECK(c.manual_rollback("ops").action == DecisionAction::RolledBack);
    CHECK(f.enforcer->rollout_percent_of("pa") == 20);
    CHECK(f.enforcer->rollout_percent_of("pb") == 0);
    CHECK(f.enforcer->rollout_percent_of("pc") == 10);
    CHECK(b.manual_advance("ops").action == DecisionAction::Resumed);
    CHECK(f.enforcer->rollout_percent_of("pb") == 10);
    CHECK(f.enforcer->rollout_percent_of("pa") == 20);
    const std::string text = f.registry->exposition();
    CHECK(value_of(text, "guardian_rollout_error_rate", "a") == 0.0);
    CHECK(value_of(text, "guardian_rollout_error_rate", "b") == 0.5);
    CHECK(value_of(text, "guardian_rollout_rollback_total", "b",
                   {"from_stage=\"a\"", "to_stage=\"aborted\""}) == 1);
    CHECK(value_of(text, "guardian_rollout_rollback_total", "a",
                   {"from_stage=\"a\"", "to_stage=\"aborted\""}) == 0);
    CHECK(value_of(text, "guardian_rollout_rollback_total", "c",
                   {"from_stage=\"b\"", "to_stage=\"a\""}) == 1);
    CHECK(value_of(text, "guardian_rollout_advancement_total", "c", {"to_stage=\"b\""}) == 1);
    CHECK(value_of(text, "driftgate_state_version", "b") == 3);
}

TEST_CASE("two rollouts on one registry keep their series right through 100 moves each",
          "[rollout][shares][metrics]") {
    Fixture f;
    auto orders = f.make(rollout_of("orders", {"orders"}, f.dir));
    auto checkout = f.make(rollout_of("checkout", {"checkout"}, f.dir));
    struct Tally {
        int advances = 0;
        int rollbacks = 0;
    };
    Tally orders_moves;
    Tally checkout_moves;
    auto move = [](RolloutManager& manager, Tally& tally, int i) {
        const Decision decision =
            (i % 3 == 2) ? manager.manual_rollback("ops") : manager.manual_advance("ops");
        if (!decision.moved()) return;
        if (decision.action == DecisionAction::RolledBack ||
            decision.action == DecisionAction::Aborted) {
            ++tally.rollbacks;
        } else {
            ++tally.advances;
        }
    };
    for (int i = 0; i < 100; ++i) {
        move(orders, orders_moves, i);
        move(checkout, checkout_moves, i * 7 + 1);
    }
    const std::string text = f.registry->exposition();
    for (auto* pair : {&orders, &checkout}) {
        RolloutManager& manager = *pair;
        const Tally& tally = &manager == &orders ? orders_moves : checkout_moves;
        const std::string& name = manager.rollout();
        const auto snapshot = manager.snapshot();
        const std::string stage = stage_name(snapshot);
        INFO(name << " at " << stage);
        REQUIRE(samples(text, "guardian_rollout_stage", name).size() == 1);
        REQUIRE(samples(text, "guardian_rollout_stage_started_at", name).size() == 1);
        CHECK(value_of(text, "guardian_rollout_stage", name, {"stage_name=\"" + stage + "\""}) ==
              (snapshot.position.state == RolloutState::Aborted
                   ? -1.0
                   : static_cast<double>(snapshot.position.stage_index)));
        CHECK(value_of(text, "driftgate_state_version", name) ==
              static_cast<double>(snapshot.version));
        CHECK(value_of(text, "adapt_enforce_rollout_percent", name) ==
              snapshot.plan->percentage(snapshot.position));
        double advances = 0;
        for (const std::string& line : samples(text, "guardian_rollout_advancement_total", name)) {
            advances += std::stod(line.substr(line.rfind(' ') + 1));
        }
        double rollbacks = 0;
        for (const std::string& line : samples(text, "guardian_rollout_rollback_total", name)) {
            rollbacks += std::stod(line.substr(line.rfind(' ') + 1));
        }
        CHECK(advances == tally.advances);
        CHECK(rollbacks == tally.rollbacks);
        CHECK(f.enforcer->rollout_percent_of(manager.policies()->front()) ==
              snapshot.plan->percentage(snapshot.position));
    }
    CHECK(orders_moves.advances + orders_moves.rollbacks > 50);
}

TEST_CASE("a rollout gone takes its series and gives its policies back", "[rollout][shares]") {
    Fixture f;
    f.enforcer->set_rollout_percent(30);
    auto checkout = f.make(rollout_of("checkout", {"checkout"}, f.dir));
    {
        auto orders = f.make(rollout_of("orders", {"orders"}, f.dir));
        orders.manual_advance("ops");
        orders.count_notification("slack", "advanced", "sent");
        CHECK(f.enforcer->rollout_percent_of("orders") == 25);
        CHECK_THAT(f.registry->exposition(), Catch::Contains("rollout=\"orders\""));
    }
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, !Catch::Contains("rollout=\"orders\""));
    CHECK(samples(text, "guardian_rollout_stage", "checkout").size() == 1);
    CHECK(f.enforcer->rollout_percent_of("orders") == 30);
    // Its name and its policies are free again.
    auto again = f.make(rollout_of("orders", {"orders"}, f.dir));
    CHECK(again.snapshot().position.stage_index == 1);  // resumed from its state file
    CHECK(f.enforcer->rollout_percent_of("orders") == 25);
}

TEST_CASE("two managers of one rollout name on one registry never remove each other's series",
          "[rollout][shares][metrics]") {
    Fixture f;
    auto first = f.make(rollout_of("orders", {"orders"}, f.dir));
    auto other_tracker =
        std::make_shared<DriftTracker>(driftgate::default_windows(), f.clock, f.registry);
    auto other_enforcer = std::make_shared<Enforcer>(EnforceOptions{true, 0, 0.005}, other_tracker);
    RolloutManager::Options options = rollout_of("orders", {"orders"}, f.dir);
    options.state_path = f.dir + "/second.json";
    options.enforcer = other_enforcer;
    options.registry = f.registry;
    options.clock = f.clock;
    {
        RolloutManager second(RolloutConfig::default_config(), options);
        // Both at canary: one series, held by both.
        CHECK(samples(f.registry->exposition(), "guardian_rollout_stage", "orders").size() == 1);
        first.manual_advance("ops");
        // The first left canary; the second still stands there, so its series stays.
        const std::string text = f.registry->exposition();
        CHECK(value_of(text, "guardian_rollout_stage", "orders", {"stage_name=\"canary\""}) == 0);
        CHECK(value_of(text, "guardian_rollout_stage", "orders", {"stage_name=\"quarter\""}) == 1);
        second.manual_rollback("ops");
        second.manual_advance("ops");
    }
    // The second is gone: what only it held went with it; what the first holds stays.
    const std::string text = f.registry->exposition();
    CHECK(samples(text, "guardian_rollout_stage", "orders").size() == 1);
    CHECK(value_of(text, "guardian_rollout_stage", "orders", {"stage_name=\"quarter\""}) == 1);
    CHECK(value_of(text, "guardian_rollout_advancement_total", "orders",
                   {"to_stage=\"quarter\""}) == 1);
    first.manual_advance("ops");
    CHECK(value_of(f.registry->exposition(), "guardian_rollout_stage", "orders",
                   {"stage_name=\"half\""}) == 2);
}

TEST_CASE("claims that conflict are refused naming both rollouts", "[rollout][shares]") {
    Fixture f;
    auto orders = f.make(rollout_of("orders", {"orders.v2", "orders.v3"}, f.dir));
    CHECK_THROWS_WITH(f.make(rollout_of("checkout", {"orders.v3"}, f.dir)),
                      Catch::Contains("policy 'orders.v3' already belongs to rollout 'orders', "
                                      "so rollout 'checkout' cannot claim it"));
    RolloutManager::Options every;
    every.state_path = f.dir + "/every.json";
    CHECK_THROWS_WITH(f.make(every), Catch::Contains("rollout 'default' has no policies"));
    auto no_policies = rollout_of("empty", {}, f.dir);
    CHECK_THROWS_WITH(f.make(no_policies), Catch::Contains("names no policies"));
    auto bad_name = rollout_of("bad name", {"p"}, f.dir);
    CHECK_THROWS_WITH(f.make(bad_name), Catch::Contains("invalid rollout name 'bad name'"));
    // None of the refused managers kept anything.
    CHECK_FALSE(f.enforcer->share_policies("checkout").has_value());
    CHECK_THAT(f.registry->exposition(), !Catch::Contains("rollout=\"checkout\""));
    CHECK_THAT(f.registry->exposition(), !Catch::Contains("rollout=\"default\""));
}

TEST_CASE("the global percent's manager names its series, default in one rollout's service",
          "[rollout][metrics]") {
    Fixture f;
    {
        auto manager = f.make();
        CHECK(manager.rollout() == "default");
        const std::string text = f.registry->exposition();
        CHECK(value_of(text, "adapt_enforce_rollout_percent", "default") == 10);
        CHECK(samples(text, "adapt_enforce_rollout_percent", "").empty());
    }
    CHECK(samples(f.registry->exposition(), "adapt_enforce_rollout_percent", "").size() == 1);
    RolloutManager::Options named;
    named.rollout = "main";
    auto manager = f.make(named);
    CHECK(value_of(f.registry->exposition(), "adapt_enforce_rollout_percent", "main") == 10);
    // The global percent always samples the enforcer's own cohort, whatever its rollout's name.
    for (int i = 0; i < 2000; ++i) {
        const std::string key = "u" + std::to_string(i);
        REQUIRE(f.enforcer->in_rollout(key, "any") == (sampling_bucket(key, 0) < 1000));
    }
}

TEST_CASE("decisions racing rollouts that come, move and go", "[rollout][shares][threads]") {
    Fixture f;
    std::atomic<bool> stop{false};
    std::vector<std::thread> deciders;
    for (int t = 0; t < 2; ++t) {
        deciders.emplace_back([&, t] {
            for (int i = 0; !stop.load(); ++i) {
                const std::string key = "k" + std::to_string(t * 1000000 + i);
                f.enforcer->decide(i % 2 == 0 ? "orders" : "checkout", key, driftgate::Verdict::Ok,
                                   driftgate::Verdict::Fail);
            }
        });
    }
    auto checkout = f.make(rollout_of("checkout", {"checkout"}, f.dir), three_stages());
    for (int round = 0; round < 20; ++round) {
        auto orders = f.make(rollout_of("orders", {"orders"}, f.dir), three_stages());
        orders.manual_advance("ops");
        checkout.manual_advance("ops");
        orders.manual_rollback("ops");
        checkout.manual_rollback("ops");
        (void)f.registry->exposition();
    }
    stop = true;
    for (auto& thread : deciders) thread.join();
    const auto counts = f.tracker->counts("5m", "orders");
    CHECK(f.enforcer->error_counts("5m", "orders").total == counts.events);
    CHECK(counts.events > 0);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

namespace {

/// One stage of a day at `max_error_rate`, then the final stage.
RolloutConfig day_then_final(double max_error_rate) {
    return RolloutConfig(std::vector<RolloutStage>{{"first", 10, 24 * kHour, max_error_rate, false},
                                                   {"final", 100, 0, max_error_rate, false}});
}

}  // namespace

TEST_CASE("boundary: an error rate at the stage maximum advances, one above it rolls back",
          "[rollout][boundary]") {
    for (const auto& [rate, action] :
         {std::pair{0.1, DecisionAction::Advanced},
          std::pair{std::nextafter(0.1, 1.0), DecisionAction::Aborted}}) {
        Fixture f;
        auto manager = f.make({}, day_then_final(0.1));
        f.clock->advance(24 * kHour);
        CHECK(manager.evaluate(rate).action == action);
    }
}

TEST_CASE("boundary: with confidence a lower bound at the maximum holds, above it rolls back",
          "[rollout][boundary]") {
    const double lower = driftgate::wilson_bounds(30, 1000, 0.95).lower;
    for (const auto& [max_error_rate, action] :
         {std::pair{lower, DecisionAction::Held},
          std::pair{std::nextafter(lower, 0.0), DecisionAction::Aborted}}) {
        Fixture f;
        RolloutManager::Options options;
        options.confidence = 0.95;
        auto manager = f.make(options, day_then_final(max_error_rate));
        f.clock->advance(24 * kHour);
        CHECK(manager.evaluate_counts(30, 1000).action == action);
    }
}

TEST_CASE("boundary: with confidence an upper bound at the maximum advances, above it holds",
          "[rollout][boundary]") {
    const double upper = driftgate::wilson_bounds(0, 1000, 0.95).upper;
    for (const auto& [max_error_rate, action] :
         {std::pair{upper, DecisionAction::Advanced},
          std::pair{std::nextafter(upper, 0.0), DecisionAction::Held}}) {
        Fixture f;
        RolloutManager::Options options;
        options.confidence = 0.95;
        auto manager = f.make(options, day_then_final(max_error_rate));
        f.clock->advance(24 * kHour);
        CHECK(manager.evaluate_counts(0, 1000).action == action);
    }
}

TEST_CASE("boundary: with confidence the final stage is done before any reading",
          "[rollout][boundary]") {
    Fixture f;
    RolloutManager::Options options;
    options.confidence = 0.95;
    auto config = day_then_final(0.1);
    config.set_current_stage_index(1);
    auto manager = f.make(options, config);
    CHECK(manager.snapshot().judgement().action == DecisionAction::AtFinalStage);
    // at the first stage, no reading is no evidence either way
    Fixture g;
    auto first = g.make(options, day_then_final(0.1));
    CHECK(first.snapshot().judgement().action == DecisionAction::InsufficientData);
}

TEST_CASE("boundary: a min_requests of 1 needs a count, one of 0 does not", "[rollout][boundary]") {
    for (const std::uint64_t min_requests : {0, 1}) {
        Fixture f;
        RolloutManager::Options options;
        options.min_requests = min_requests;
        auto manager = f.make(options, day_then_final(0.1));
        f.clock->advance(24 * kHour);
        const Decision bare = manager.evaluate(0.0);  // a rate without a count
        CHECK(bare.action ==
              (min_requests == 0 ? DecisionAction::Advanced : DecisionAction::InsufficientData));
    }
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 1;
    auto manager = f.make(options, day_then_final(0.1));
    f.clock->advance(24 * kHour);
    CHECK(manager.evaluate(0.0, 1).action == DecisionAction::Advanced);
}

TEST_CASE("boundary: no request counted is no error, one failed of one is all",
          "[rollout][boundary]") {
    Fixture f;
    auto manager = f.make({}, day_then_final(0.1));
    f.clock->advance(24 * kHour);
    CHECK(manager.evaluate_counts(0, 0).action == DecisionAction::Advanced);
    Fixture g;
    auto failing = g.make({}, day_then_final(0.1));
    CHECK(failing.evaluate_counts(1, 1).action == DecisionAction::Aborted);
    CHECK_THROWS_WITH(failing.evaluate_counts(2, 1), Catch::Contains("failed=2 exceeds total=1"));
}

TEST_CASE("boundary: a fresh manager keeps the stage start its config gives",
          "[rollout][boundary]") {
    Fixture f;
    auto config = day_then_final(0.1);
    config.set_current_stage_started_at(f.clock->wall() - kHour);
    auto manager = f.make({}, config);
    CHECK(manager.snapshot().position.started_at == f.clock->wall() - kHour);
    f.clock->advance(23 * kHour);  // a day since the given start
    CHECK(manager.evaluate(0.0).action == DecisionAction::Advanced);
}

TEST_CASE("boundary: adopted evidence may have every request failed, not more",
          "[rollout][boundary]") {
    Fixture f;
    auto manager = f.make({}, day_then_final(0.1));
    const auto at = manager.snapshot().position;
    CHECK_THROWS_AS(manager.adopt_evidence(at, {1.0, 3, 4}), std::invalid_argument);
    CHECK_THROWS_AS(manager.adopt_evidence(at, {1.0, std::nullopt, 1}), std::invalid_argument);
    CHECK(manager.adopt_evidence(at, {1.0, 3, 3}));
    CHECK(manager.snapshot().evidence->failed == 3u);
}

TEST_CASE("boundary: a manager's wall time runs from 1970 to the end of 9999",
          "[rollout][boundary]") {
    Fixture f;
    f.clock->set(0.0);
    auto manager = f.make({}, day_then_final(0.1));
    CHECK(manager.snapshot().position.started_at == 0.0);
    f.clock->set(driftgate::StateFile::kEndOfTime);
    CHECK_THROWS_WITH(manager.manual_advance("ops"), Catch::Contains("outside the years 1970"));
    CHECK(manager.version() == 1);
    f.clock->set(std::nextafter(driftgate::StateFile::kEndOfTime, 0.0));
    CHECK(manager.manual_advance("ops").action == DecisionAction::Advanced);
}

TEST_CASE("boundary: an approval whose write fails is not recorded", "[rollout][boundary]") {
    Fixture f;
    RolloutManager::Options options;
    options.state_path = f.dir + "/state/rollout.json";
    std::filesystem::create_directory(f.dir + "/state");
    auto manager = f.make(options, four_eyes());
    std::filesystem::remove_all(f.dir + "/state");
    CHECK_THROWS_AS(manager.manual_advance("alice"), StateError);
    CHECK(manager.snapshot().approvals.empty());
    CHECK(manager.version() == 1);
}

TEST_CASE("boundary: a stage for one approval takes a credential that is nobody",
          "[rollout][boundary]") {
    // Only a stage asking for several approvals counts people.
    Fixture f;
    auto manager = f.make({}, three_stages());
    const Decision moved =
        manager.manual_advance("admin-token", "", std::nullopt, std::nullopt, "", std::string());
    CHECK(moved.action == DecisionAction::Advanced);
    CHECK(moved.to_stage == "b");
}

TEST_CASE("boundary: an aborted rollout holds whatever it is shown, until a person resumes it",
          "[rollout][boundary]") {
    Fixture f;
    RolloutManager::Options options;
    options.min_requests = 100;
    auto manager = f.make(options, day_then_final(0.1));
    REQUIRE(manager.manual_rollback("ops").action == DecisionAction::Aborted);
    const auto version = manager.version();
    f.clock->advance(24 * kHour);
    // a high error rate cannot abort it again, too few requests are not what it waits for
    for (const auto& [rate, requests] :
         {std::pair{1.0, std::uint64_t{1000}}, std::pair{0.0, std::uint64_t{1000}},
          std::pair{0.0, std::uint64_t{3}}}) {
        const Decision held = manager.evaluate(rate, requests);
        CHECK(held.action == DecisionAction::Held);
        CHECK(held.message == "Rollout aborted at 0%: a manual advance resumes it");
    }
    CHECK(manager.version() == version);
    CHECK(manager.snapshot().judgement().waiting_for == driftgate::WaitingFor::Resume);
}

TEST_CASE("boundary: a high error rate is judged an abort at the first stage, a rollback later",
          "[rollout][boundary]") {
    // What the status says the next check does, before it runs.
    Fixture f;
    auto manager = f.make({}, three_stages());
    REQUIRE(manager.adopt_evidence(manager.snapshot().position, {0.5, 100, 50}));
    CHECK(manager.snapshot().judgement().action == DecisionAction::Aborted);
    REQUIRE(manager.manual_advance("ops").to_stage == "b");  // stage 1
    REQUIRE(manager.adopt_evidence(manager.snapshot().position, {0.5, 100, 50}));
    CHECK(manager.snapshot().judgement().action == DecisionAction::RolledBack);
}

TEST_CASE("boundary: a new manager on a config another one left aborted starts aborted",
          "[rollout][boundary]") {
    Fixture f;
    const RolloutConfig config = three_stages();
    {
        RolloutManager::Options options;
        options.state_path = f.dir + "/first.json";
        auto first = f.make(options, config);
        REQUIRE(first.manual_rollback("ops").action == DecisionAction::Aborted);
    }
    REQUIRE(config.position().state == RolloutState::Aborted);
    RolloutManager::Options options;
    options.state_path = f.dir + "/second.json";  // nothing saved: a fresh rollout
    auto second = f.make(options, config);
    CHECK(second.snapshot().position.state == RolloutState::Aborted);
    CHECK(second.enforced_percentage() == 0);
}
