#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "driftgate/enforcer.hpp"
#include "driftgate/sampling.hpp"

using driftgate::DriftTracker;
using driftgate::EnforceOptions;
using driftgate::Enforcer;
using driftgate::Evaluator;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::Verdict;

namespace {

struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(0.0);
    std::shared_ptr<MetricsRegistry> registry = std::make_shared<MetricsRegistry>();
    std::shared_ptr<DriftTracker> tracker =
        std::make_shared<DriftTracker>(driftgate::default_windows(), clock, registry, 16);

    Enforcer make(bool enforce, double percent, std::uint32_t seed = 0) {
        return Enforcer(EnforceOptions{enforce, percent, 0.005}, tracker, nullptr, seed);
    }
};

}  // namespace

TEST_CASE("options are validated with the bad value named", "[enforcer]") {
    CHECK_NOTHROW(EnforceOptions{true, 12.34, 0.0}.validate());
    CHECK_THROWS_WITH((EnforceOptions{true, 100.5, 0.1}.validate()),
                      Catch::Contains("rollout_percent=100.5"));
    CHECK_THROWS_WITH((EnforceOptions{true, NAN, 0.1}.validate()), Catch::Contains("nan"));
    CHECK_THROWS_WITH((EnforceOptions{true, 12.345, 0.1}.validate()),
                      Catch::Contains("multiple of 0.01"));
    CHECK_THROWS_WITH((EnforceOptions{true, 10, 1.5}.validate()),
                      Catch::Contains("drift_max_ratio=1.5"));
    CHECK((EnforceOptions{true, 12.34, 0.0}.rollout_basis_points()) == 1234);
}

TEST_CASE("the cohort is the keys whose bucket is below the percent", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 25.0, 7);
    for (int i = 0; i < 2000; ++i) {
        const std::string key = "user-" + std::to_string(i);
        REQUIRE(enforcer.in_rollout(key) == (driftgate::sampling_bucket(key, 7) < 2500));
    }
}

TEST_CASE("raising the percent never removes a key", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    std::vector<bool> before(5000, false);
    for (double percent : {0.01, 1.0, 10.0, 25.0, 50.0, 75.0, 99.99, 100.0}) {
        enforcer.set_rollout_percent(percent);
        for (int i = 0; i < 5000; ++i) {
            const bool now = enforcer.in_rollout("k" + std::to_string(i));
            REQUIRE((!before[i] || now));
            before[i] = now;
        }
    }
    for (bool in : before) CHECK(in);
}

TEST_CASE("not enforcing means no cohort at any percent", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(false, 100.0);
    CHECK_FALSE(enforcer.in_rollout("anything"));
}

TEST_CASE("outside the cohort only shadow is evaluated", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    int enforced_calls = 0;
    const auto pair =
        enforcer.decide("p", "key", Verdict::Ok, Evaluator([&]() -> std::optional<Verdict> {
                            ++enforced_calls;
                            return Verdict::Fail;
                        }));
    CHECK_FALSE(pair.in_rollout);
    CHECK(pair.enforced == Verdict::Ok);
    CHECK_FALSE(pair.drift);
    CHECK(enforced_calls == 0);
    CHECK(f.tracker->counts("5m").total == 1);
    CHECK(f.tracker->counts("5m").events == 0);
}

TEST_CASE("inside the cohort both are evaluated and drift recorded", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    const auto pair = enforcer.decide("p", "key", Verdict::Ok, Verdict::Warn);
    CHECK(pair.in_rollout);
    CHECK(pair.enforced == Verdict::Warn);
    CHECK(pair.drift);
    CHECK(f.tracker->counts("5m", "p").events == 1);
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("adapt_requests_total{mode=\"enforced\",policy_id=\"p\"} 1"));
    CHECK_THAT(text, Catch::Contains("guardian_enforcement_total{policy_id=\"p\"} 1"));
    CHECK_THAT(text, Catch::Contains("adapt_selection_latency_seconds_count 1"));
    CHECK_THAT(text, Catch::Contains("adapt_enforce_rollout_percent 100"));
}

TEST_CASE("a failed evaluation is FAIL and counted as an error", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    const Evaluator failing([]() -> std::optional<Verdict> { return std::nullopt; });
    const auto pair = enforcer.decide("p", "key", Verdict::Ok, failing);
    CHECK(pair.enforced == Verdict::Fail);
    CHECK(pair.drift);
    CHECK(enforcer.error_counts("60m").events == 1);
    CHECK(enforcer.error_counts("60m").total == 1);
    enforcer.decide("p", "key2", Verdict::Ok, Verdict::Ok);
    CHECK(enforcer.error_counts("60m", "p").total == 2);
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains(
                         "adapt_evaluation_errors_total{mode=\"enforced\",policy_id=\"p\"} 1"));
    CHECK_THAT(text, Catch::Contains("guardian_enforcement_failed_total{policy_id=\"p\"} 1"));
}

TEST_CASE("lifetime error counts never forget, per policy and in all", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    const Evaluator fails([]() -> std::optional<Verdict> { return std::nullopt; });
    enforcer.decide("p", "k1", Verdict::Ok, fails);
    enforcer.decide("p", "k2", Verdict::Ok, Verdict::Ok);
    std::thread([&] { enforcer.decide("q", "k3", Verdict::Ok, fails); }).join();
    f.clock->advance(7200);  // past every window
    CHECK(enforcer.error_counts("60m").total == 0);
    const auto all = enforcer.lifetime_error_counts();
    CHECK((all.events == 2 && all.total == 3));
    const auto p = enforcer.lifetime_error_counts("p");
    CHECK((p.events == 1 && p.total == 2));
    CHECK(enforcer.lifetime_error_counts("never-seen").total == 0);
    CHECK_THROWS_AS(enforcer.lifetime_error_counts("bad id"), std::invalid_argument);
}

TEST_CASE("a bad policy id evaluates and records nothing", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    bool called = false;
    const Evaluator spy([&]() -> std::optional<Verdict> {
        called = true;
        return Verdict::Ok;
    });
    CHECK_THROWS_AS(enforcer.decide("bad id", "k", spy, spy), std::invalid_argument);
    CHECK_FALSE(called);
    CHECK(f.tracker->counts("5m").total == 0);
}

TEST_CASE("shadow counts every decision and enforced the cohort's", "[enforcer][metrics]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 30.0);
    int cohort = 0;
    for (int i = 0; i < 400; ++i) {
        cohort +=
            enforcer.decide("p", "k" + std::to_string(i), Verdict::Ok, Verdict::Ok).in_rollout;
    }
    REQUIRE(cohort > 0);
    REQUIRE(cohort < 400);
    const std::string text = f.registry->exposition();
    CHECK_THAT(text,
               Catch::Contains("adapt_requests_total{mode=\"shadow\",policy_id=\"p\"} 400\n"));
    CHECK_THAT(text, Catch::Contains("adapt_requests_total{mode=\"enforced\",policy_id=\"p\"} " +
                                     std::to_string(cohort) + "\n"));
    CHECK_THAT(text, Catch::Contains("guardian_enforcement_total{policy_id=\"p\"} " +
                                     std::to_string(cohort) + "\n"));
}

TEST_CASE("a shadow evaluation that fails counts under shadow", "[enforcer][metrics]") {
    Fixture f;
    Enforcer enforcer = f.make(false, 0.0);
    const Evaluator failing([]() -> std::optional<Verdict> { return std::nullopt; });
    CHECK(enforcer.decide("p", "key", failing, Verdict::Ok).shadow == Verdict::Fail);
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains(
                         "adapt_evaluation_errors_total{mode=\"shadow\",policy_id=\"p\"} 1\n"));
    CHECK_THAT(text, Catch::Contains(
                         "adapt_evaluation_errors_total{mode=\"enforced\",policy_id=\"p\"} 0\n"));
}

TEST_CASE("a policy's counters exist at 0 from its first decision", "[enforcer][metrics]") {
    Fixture f;
    Enforcer enforcer = f.make(false, 0.0);
    CHECK_THAT(f.registry->exposition(), !Catch::Contains("policy_id="));
    enforcer.decide("p", "key", Verdict::Ok, Verdict::Ok);
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("adapt_requests_total{mode=\"shadow\",policy_id=\"p\"} 1\n"));
    for (const char* zero : {"adapt_requests_total{mode=\"enforced\",policy_id=\"p\"} 0\n",
                             "adapt_drift_events_total{policy_id=\"p\"} 0\n",
                             "adapt_evaluation_errors_total{mode=\"shadow\",policy_id=\"p\"} 0\n",
                             "adapt_evaluation_errors_total{mode=\"enforced\",policy_id=\"p\"} 0\n",
                             "guardian_enforcement_total{policy_id=\"p\"} 0\n",
                             "guardian_enforcement_failed_total{policy_id=\"p\"} 0\n"}) {
        CHECK_THAT(text, Catch::Contains(zero));
    }
}

TEST_CASE("bad options leave the old ones in force", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 10.0);
    CHECK_THROWS_AS(enforcer.set_rollout_percent(101.0), std::invalid_argument);
    CHECK_THROWS_AS(enforcer.set_options(EnforceOptions{true, 20.0, -1.0}), std::invalid_argument);
    CHECK(enforcer.options().rollout_percent == 10.0);
    CHECK(enforcer.options().drift_max_ratio == 0.005);
}

TEST_CASE("the drift limit is exported and follows set_options", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 10.0);
    CHECK_THAT(f.registry->exposition(), Catch::Contains("adapt_drift_max_ratio 0.005"));
    enforcer.set_options(EnforceOptions{true, 10.0, 0.02});
    CHECK_THAT(f.registry->exposition(), Catch::Contains("adapt_drift_max_ratio 0.02"));
}

TEST_CASE("options change atomically while decisions run", "[enforcer][threads]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    std::atomic<bool> stop{false};
    std::atomic<int> decisions{0};
    std::vector<std::thread> deciders;
    for (int t = 0; t < 4; ++t) {
        deciders.emplace_back([&, t] {
            int i = 0;
            while (!stop.load()) {
                enforcer.decide("p", "k" + std::to_string(t * 1000000 + i++), Verdict::Ok,
                                Verdict::Fail);
                decisions.fetch_add(1);
            }
        });
    }
    for (int flip = 0; flip < 2000; ++flip) {
        enforcer.set_options(EnforceOptions{flip % 2 == 0, flip % 2 == 0 ? 100.0 : 0.0, 0.005});
    }
    stop = true;
    for (auto& thread : deciders) thread.join();
    // Every decision was either fully in or fully out: drift happens exactly in the cohort.
    const auto counts = f.tracker->counts("5m");
    CHECK(counts.total == static_cast<std::uint64_t>(decisions.load()));
    CHECK(enforcer.error_counts("5m").total == counts.events);
}

namespace {

/// The first key "key-N" whose bucket (seed 0) is `bucket`.
std::string key_in_bucket(std::uint32_t bucket) {
    for (int i = 0;; ++i) {
        std::string key = "key-" + std::to_string(i);
        if (driftgate::sampling_bucket(key, 0) == bucket) return key;
    }
}

}  // namespace

TEST_CASE("boundary: a key whose bucket equals the basis points is outside the cohort",
          "[enforcer][boundary]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 25.0);
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(2500)));
    CHECK(enforcer.in_rollout(key_in_bucket(2499)));
    // the 0.01 % step: one basis point more takes the key in
    enforcer.set_rollout_percent(25.01);
    CHECK(enforcer.in_rollout(key_in_bucket(2500)));
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(2501)));
}

TEST_CASE("boundary: 0 % holds no key and 100 % every bucket", "[enforcer][boundary]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(0)));
    enforcer.set_rollout_percent(0.01);
    CHECK(enforcer.in_rollout(key_in_bucket(0)));
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(1)));
    enforcer.set_rollout_percent(100.0);
    CHECK(enforcer.in_rollout(key_in_bucket(9999)));
    enforcer.set_rollout_percent(99.99);
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(9999)));
    CHECK(enforcer.in_rollout(key_in_bucket(9998)));
}

TEST_CASE("boundary: rollout_percent runs from 0 to 100 and drift_max_ratio from 0 to 1",
          "[enforcer][boundary]") {
    auto valid = [](double percent, double ratio) {
        try {
            EnforceOptions{true, percent, ratio}.validate();
            return true;
        } catch (const std::invalid_argument&) {
            return false;
        }
    };
    CHECK(valid(0.0, 0.0));
    CHECK(valid(100.0, 1.0));
    CHECK_FALSE(valid(std::nextafter(0.0, -1.0), 0.5));
    CHECK_FALSE(valid(-0.01, 0.5));
    CHECK_FALSE(valid(100.01, 0.5));
    CHECK_FALSE(valid(std::nextafter(100.0, 200.0), 0.5));
    CHECK_FALSE(valid(50.0, std::nextafter(0.0, -1.0)));
    CHECK_FALSE(valid(50.0, std::nextafter(1.0, 2.0)));
    CHECK_FALSE(valid(INFINITY, 0.5));
    CHECK_FALSE(valid(50.0, NAN));
    CHECK_FALSE(valid(50.0, INFINITY));
}

TEST_CASE("boundary: a percent is a whole number of hundredths, up to rounding in its sum",
          "[enforcer][boundary]") {
    auto valid = [](double percent) {
        try {
            EnforceOptions{true, percent, 0.005}.validate();
            return true;
        } catch (const std::invalid_argument&) {
            return false;
        }
    };
    CHECK(valid(0.01));
    CHECK(valid(0.1 + 0.2));  // 0.30000000000000004: 30 hundredths as a double holds them
    CHECK(valid(99.99));
    CHECK_FALSE(valid(0.005));
    CHECK_FALSE(valid(12.345));
    // the tolerance is 1e-6 of a hundredth: within it a percent reads as its hundredths
    CHECK(valid(12.34 + 0.5e-8));
    CHECK(valid(1e-8));  // 1e-6 of a hundredth exactly, as a double too: still 0 hundredths
    CHECK((EnforceOptions{true, 1e-8, 0.0}.rollout_basis_points()) == 0);
    CHECK_FALSE(valid(12.34 + 1.5e-8));
    CHECK((EnforceOptions{true, 0.1 + 0.2, 0.0}.rollout_basis_points()) == 30);
    CHECK((EnforceOptions{true, 100.0, 0.0}.rollout_basis_points()) == 10000);
    CHECK((EnforceOptions{true, 0.01, 0.0}.rollout_basis_points()) == 1);
}
