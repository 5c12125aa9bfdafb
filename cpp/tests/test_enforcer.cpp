#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <cmath>
#include <map>
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
    auto count_call = [&]() -> std::optional<Verdict> {
        ++enforced_calls;
        return Verdict::Fail;
    };
    const auto pair = enforcer.decide("p", "key", Verdict::Ok, Evaluator(count_call));
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
    CHECK_THAT(text, Catch::Contains("adapt_enforce_rollout_percent{rollout=\"\"} 100"));
}

TEST_CASE("a failed evaluation is FAIL and counted as an error", "[enforcer]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    const auto fail = []() -> std::optional<Verdict> { return std::nullopt; };
    const Evaluator failing(fail);
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
    const auto fail = []() -> std::optional<Verdict> { return std::nullopt; };
    const Evaluator fails(fail);
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
    auto record_call = [&]() -> std::optional<Verdict> {
        called = true;
        return Verdict::Ok;
    };
    const Evaluator spy(record_call);
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
    const auto fail = []() -> std::optional<Verdict> { return std::nullopt; };
    const Evaluator failing(fail);
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

// -- Rollout shares ----------------------------------------------------------------------------

namespace {

using driftgate::Cohort;
using driftgate::cohort_seed;
using driftgate::sampling_bucket;

/// The first key "key-N" whose bucket with `seed` is `bucket`.
std::string key_in_bucket(std::uint32_t bucket, std::uint32_t seed) {
    for (int i = 0;; ++i) {
        std::string key = "key-" + std::to_string(i);
        if (sampling_bucket(key, seed) == bucket) return key;
    }
}

constexpr int kKeys = 100000;

std::string request_key(int i) { return "request-" + std::to_string(i); }

}  // namespace

TEST_CASE("a share's policies are enforced at its percent, the others at the global one",
          "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 50.0, 3);
    enforcer.claim_share("orders", {"orders.v2", "orders.v3"});
    enforcer.claim_share("checkout", {"checkout"});
    enforcer.set_share_percent("orders", 10.0);
    enforcer.set_share_percent("checkout", 25.0);
    CHECK(enforcer.rollout_percent_of("orders.v2") == 10.0);
    CHECK(enforcer.rollout_percent_of("orders.v3") == 10.0);
    CHECK(enforcer.rollout_percent_of("checkout") == 25.0);
    CHECK(enforcer.rollout_percent_of("search") == 50.0);
    CHECK(enforcer.rollout_percent_of("never-seen") == 50.0);
    CHECK(enforcer.options().rollout_percent == 50.0);  // the global one is untouched

    const std::uint32_t orders_seed = cohort_seed("orders", 3);
    const std::uint32_t checkout_seed = cohort_seed("checkout", 3);
    int in_orders = 0;
    int in_checkout = 0;
    int in_search = 0;
    for (int i = 0; i < kKeys; ++i) {
        const std::string key = request_key(i);
        // Exact: in the cohort iff the bucket of the share's seed is below its basis points.
        const bool orders = enforcer.decide("orders.v2", key, Verdict::Ok, Verdict::Ok).in_rollout;
        REQUIRE(orders == (sampling_bucket(key, orders_seed) < 1000));
        REQUIRE(enforcer.in_rollout(key, "orders.v3") == orders);
        const bool checkout = enforcer.in_rollout(key, "checkout");
        REQUIRE(checkout == (sampling_bucket(key, checkout_seed) < 2500));
        const bool search = enforcer.in_rollout(key, "search");
        REQUIRE(search == (sampling_bucket(key, 3) < 5000));
        REQUIRE(search == enforcer.in_rollout(key));
        in_orders += orders;
        in_checkout += checkout;
        in_search += search;
    }
    // Binomial bounds, about 4.5 standard deviations: sqrt(n p (1-p)) is 95, 137 and 158.
    CHECK(in_orders > 9570);
    CHECK(in_orders < 10430);
    CHECK(in_checkout > 24380);
    CHECK(in_checkout < 25620);
    CHECK(in_search > 49290);
    CHECK(in_search < 50710);
}

TEST_CASE("boundary: a key whose salted bucket equals the share's basis points is out",
          "[enforcer][shares][boundary]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    enforcer.claim_share("orders", {"orders"});
    enforcer.set_share_percent("orders", 25.0);
    const std::uint32_t seed = cohort_seed("orders", 0);
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(2500, seed), "orders"));
    CHECK(enforcer.in_rollout(key_in_bucket(2499, seed), "orders"));
    CHECK_FALSE(
        enforcer.decide("orders", key_in_bucket(2500, seed), Verdict::Ok, Verdict::Ok).in_rollout);
    CHECK(
        enforcer.decide("orders", key_in_bucket(2499, seed), Verdict::Ok, Verdict::Ok).in_rollout);
    enforcer.set_share_percent("orders", 25.01);
    CHECK(enforcer.in_rollout(key_in_bucket(2500, seed), "orders"));
    CHECK_FALSE(enforcer.in_rollout(key_in_bucket(2501, seed), "orders"));
}

TEST_CASE("independent cohorts overlap by chance, shared ones nest", "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 25.0);
    enforcer.claim_share("a", {"a"});
    enforcer.claim_share("b", {"b"});
    enforcer.claim_share("c", {"c"}, Cohort::Shared);
    enforcer.set_share_percent("a", 50.0);
    enforcer.set_share_percent("b", 50.0);
    enforcer.set_share_percent("c", 10.0);
    int both = 0;
    int a_only = 0;
    for (int i = 0; i < kKeys; ++i) {
        const std::string key = request_key(i);
        const bool a = enforcer.in_rollout(key, "a");
        const bool b = enforcer.in_rollout(key, "b");
        both += a && b;
        a_only += a && !b;
        // Shared: the enforcer's own hash, so 10 % lies within the global 25 %.
        const bool c = enforcer.in_rollout(key, "c");
        REQUIRE(c == (sampling_bucket(key, 0) < 1000));
        if (c) REQUIRE(enforcer.in_rollout(key, "elsewhere"));
    }
    // p1 * p2 = 25 %: the same keys would give 50 % (sd 137).
    CHECK(both > 24380);
    CHECK(both < 25620);
    CHECK(a_only > 24380);
    CHECK(a_only < 25620);
}

TEST_CASE("the share of the rollout named default keeps the enforcer's cohort",
          "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0, 7);
    enforcer.claim_share("default", {"p"});
    enforcer.set_share_percent("default", 37.5);
    for (int i = 0; i < 5000; ++i) {
        const std::string key = request_key(i);
        REQUIRE(enforcer.in_rollout(key, "p") == (sampling_bucket(key, 7) < 3750));
    }
}

TEST_CASE("the kill switch turns every share off and back on", "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    enforcer.claim_share("orders", {"orders"});
    enforcer.set_share_percent("orders", 100.0);
    CHECK(enforcer.in_rollout("k", "orders"));
    CHECK_THAT(f.registry->exposition(),
               Catch::Contains("adapt_enforce_rollout_percent{rollout=\"orders\"} 100"));
    enforcer.update_options(false, std::nullopt, std::nullopt);
    CHECK_FALSE(enforcer.in_rollout("k", "orders"));
    CHECK_FALSE(enforcer.decide("orders", "k", Verdict::Ok, Verdict::Fail).in_rollout);
    CHECK(enforcer.rollout_percent_of("orders") == 0.0);
    CHECK(enforcer.rollout_percent_of("other") == 0.0);
    const std::string off = f.registry->exposition();
    CHECK_THAT(off, Catch::Contains("adapt_enforce_rollout_percent{rollout=\"orders\"} 0"));
    CHECK_THAT(off, Catch::Contains("adapt_enforce_rollout_percent{rollout=\"\"} 0"));
    enforcer.update_options(true, std::nullopt, std::nullopt);
    CHECK(enforcer.rollout_percent_of("orders") == 100.0);
    CHECK(enforcer.in_rollout("k", "orders"));
}

TEST_CASE("a released share gives its policies back to the global percent", "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 30.0);
    enforcer.claim_share("orders", {"orders"});
    enforcer.set_share_percent("orders", 80.0);
    CHECK(enforcer.share_policies("orders") == std::vector<std::string>{"orders"});
    enforcer.release_share("orders");
    CHECK_FALSE(enforcer.share_policies("orders").has_value());
    CHECK(enforcer.rollout_percent_of("orders") == 30.0);
    for (int i = 0; i < 2000; ++i) {
        const std::string key = request_key(i);
        REQUIRE(enforcer.in_rollout(key, "orders") == (sampling_bucket(key, 0) < 3000));
    }
    CHECK_THAT(f.registry->exposition(), !Catch::Contains("rollout=\"orders\""));
    // Claimable again, by another rollout.
    CHECK_NOTHROW(enforcer.claim_share("orders-2", {"orders"}));
}

TEST_CASE("a new share enforces nothing until its manager sets its percent", "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    enforcer.claim_share("orders", {"orders"});
    CHECK(enforcer.rollout_percent_of("orders") == 0.0);
    CHECK_FALSE(enforcer.in_rollout("k", "orders"));
    CHECK_THAT(f.registry->exposition(),
               Catch::Contains("adapt_enforce_rollout_percent{rollout=\"orders\"} 0"));
}

TEST_CASE("a policy belongs to one share: a second claim is refused naming both rollouts",
          "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    enforcer.claim_share("orders", {"orders.v2", "orders.v3"});
    CHECK_THROWS_WITH(
        enforcer.claim_share("checkout", {"checkout", "orders.v3"}),
        Catch::Equals("policy 'orders.v3' already belongs to rollout 'orders', so rollout "
                      "'checkout' cannot claim it: a policy belongs to at most one rollout"));
    // Nothing of the refused claim was taken.
    CHECK_FALSE(enforcer.share_policies("checkout").has_value());
    CHECK_NOTHROW(enforcer.claim_share("checkout", {"checkout"}));
    CHECK_THROWS_WITH(enforcer.claim_share("orders", {"other"}),
                      Catch::Contains("rollout 'orders' already holds a share"));
}

TEST_CASE("a rollout of every policy and rollouts of some cannot share an enforcer",
          "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    enforcer.claim_share("orders", {"orders"});
    CHECK_THROWS_WITH(enforcer.claim_rollout_percent("default"),
                      Catch::Contains("rollout 'default' has no policies, so it would govern "
                                      "every policy of this Enforcer, but rollouts 'orders'"));
    CHECK_FALSE(enforcer.rollout_percent_claimed());
    enforcer.release_share("orders");
    enforcer.claim_rollout_percent("default");
    CHECK_THROWS_WITH(enforcer.claim_share("orders", {"orders"}),
                      Catch::Contains("rollout 'orders' claims policies of an Enforcer whose "
                                      "every policy rollout 'default' governs"));
    CHECK_THROWS_WITH(enforcer.claim_rollout_percent("other"),
                      Catch::Contains("already set by another RolloutManager (rollout "
                                      "'default'), so rollout 'other' cannot claim it"));
}

TEST_CASE("a claim's bad names and lists are refused before anything is claimed",
          "[enforcer][shares]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    CHECK_THROWS_WITH(enforcer.claim_share("bad name", {"p"}),
                      Catch::Contains("invalid rollout name 'bad name'"));
    CHECK_THROWS_WITH(enforcer.claim_share("r", {}), Catch::Contains("names no policies"));
    CHECK_THROWS_WITH(enforcer.claim_share("r", {"p", "bad id"}),
                      Catch::Contains("invalid policy_id 'bad id'"));
    CHECK_THROWS_WITH(enforcer.claim_share("r", {"p", "q", "p"}),
                      Catch::Contains("names policy 'p' twice"));
    CHECK_THROWS_WITH(enforcer.claim_share("r", {"__overflow__"}), Catch::Contains("reserved"));
    CHECK_THROWS_WITH(enforcer.set_share_percent("r", 10.0),
                      Catch::Contains("rollout 'r' holds no share"));
    enforcer.claim_share("r", {"p"});
    CHECK_THROWS_WITH(enforcer.set_share_percent("r", 10.005),
                      Catch::Contains("rollout_percent=10.005"));
    CHECK(f.tracker->policies() == std::vector<std::string>{"p"});
}

TEST_CASE("a claim past max_policies is refused, naming it, and admits nothing",
          "[enforcer][shares][boundary]") {
    Fixture f;  // the tracker admits 16 policies
    Enforcer enforcer = f.make(true, 0.0);
    for (int i = 0; i < 14; ++i) {
        enforcer.decide("seen-" + std::to_string(i), "k", Verdict::Ok, Verdict::Ok);
    }
    CHECK_THROWS_WITH(enforcer.claim_share("orders", {"a", "b", "c"}),
                      Catch::Contains("do not fit in the tracker's max_policies=16 (14 policies "
                                      "are known already)"));
    CHECK(f.tracker->policies().size() == 14);
    // Exactly filling it is fine; a policy seen before needs no room.
    enforcer.claim_share("orders", {"a", "b", "seen-0"});
    CHECK(f.tracker->policies().size() == 16);
    // Claimed policies were admitted, so their decisions are never counted as overflow.
    enforcer.set_share_percent("orders", 100.0);
    CHECK(enforcer.decide("b", "k", Verdict::Ok, Verdict::Fail).in_rollout);
    CHECK(f.tracker->counts("5m", "b").total == 1);
    CHECK(f.tracker->counts("5m", "__overflow__").total == 0);
}

TEST_CASE("the global percent's series names the rollout that claims it",
          "[enforcer][shares][metrics]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 20.0);
    Enforcer other = f.make(true, 40.0);  // the same registry: its series is shared
    CHECK_THAT(f.registry->exposition(),
               Catch::Contains("adapt_enforce_rollout_percent{rollout=\"\"}"));
    enforcer.claim_rollout_percent("default");
    enforcer.set_rollout_percent(10.0);
    std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("adapt_enforce_rollout_percent{rollout=\"default\"} 10"));
    // The other enforcer still holds rollout="": it stays, and takes its writes.
    other.set_rollout_percent(45.0);
    text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("adapt_enforce_rollout_percent{rollout=\"\"} 45"));
    enforcer.release_rollout_percent();
    text = f.registry->exposition();
    CHECK_THAT(text, !Catch::Contains("rollout=\"default\""));
    CHECK_THAT(text, Catch::Contains("adapt_enforce_rollout_percent{rollout=\"\"} 10"));
}

TEST_CASE("decisions racing claims and percent changes see whole shares",
          "[enforcer][shares][threads]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    const std::uint32_t seed = cohort_seed("orders", 0);
    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0};
    std::vector<std::thread> deciders;
    for (int t = 0; t < 3; ++t) {
        deciders.emplace_back([&, t] {
            for (int i = 0; !stop.load(); ++i) {
                const std::string key = "k" + std::to_string(t * 1000000 + i);
                const bool in =
                    enforcer.decide("orders", key, Verdict::Ok, Verdict::Fail).in_rollout;
                // The global percent is 0 and the share's 30 or 60 %: a key is in only by the
                // share, with its seed, below 60 %.
                if (in && !(sampling_bucket(key, seed) < 6000)) wrong.fetch_add(1);
                enforcer.in_rollout(key, "checkout");
                enforcer.rollout_percent_of("orders");
            }
        });
    }
    for (int round = 0; round < 300; ++round) {
        enforcer.claim_share("orders", {"orders"});
        enforcer.claim_share("checkout", {"checkout", "c" + std::to_string(round % 3)});
        enforcer.set_share_percent("orders", round % 2 == 0 ? 60.0 : 30.0);
        enforcer.set_share_percent("checkout", 50.0);
        enforcer.update_options(round % 5 != 0, std::nullopt, std::nullopt);
        enforcer.release_share("checkout");
        enforcer.release_share("orders");
    }
    stop = true;
    for (auto& thread : deciders) thread.join();
    CHECK(wrong.load() == 0);
    const auto counts = f.tracker->counts("5m", "orders");
    CHECK(enforcer.error_counts("5m", "orders").total == counts.events);
}

namespace {

/// The value of a sample of `family` whose labels include all of `labels`, summed over the
/// matching series (histograms: their count), in one scrape; -1 when no series matches.
double sample(const std::vector<prometheus::MetricFamily>& scrape, const std::string& family,
              const std::map<std::string, std::string>& labels = {}) {
    double total = -1;
    for (const auto& f : scrape) {
        if (f.name != family) continue;
        for (const auto& metric : f.metric) {
            std::size_t matched = 0;
            for (const auto& label : metric.label) {
                const auto wanted = labels.find(label.name);
                if (wanted != labels.end() && wanted->second == label.value) ++matched;
            }
            if (matched != labels.size()) continue;
            const double value = f.type == prometheus::MetricType::Histogram
                                     ? static_cast<double>(metric.histogram.sample_count)
                                     : metric.counter.value;
            total = (total < 0 ? 0 : total) + value;
        }
    }
    return total;
}

double sample(const MetricsRegistry& registry, const std::string& family,
              const std::map<std::string, std::string>& labels = {}) {
    return sample(registry.collect(), family, labels);
}

}  // namespace

TEST_CASE("every counter equals what the tracker and the error windows counted, under threads",
          "[enforcer][metrics][threads]") {
    Fixture f;
    Enforcer enforcer = f.make(true, 50.0);
    constexpr int kThreads = 6;
    constexpr int kPerThread = 3000;
    const std::vector<std::string> policies{"p0", "p1", "p2"};
    std::atomic<bool> done{false};
    std::atomic<int> scrapes{0};
    std::atomic<int> inconsistent{0};
    // A scrape while decisions run never sees a counter go down, nor more enforced decisions
    // than shadow ones. (Counted here, checked after: Catch2 asserts on one thread only.)
    std::thread scraper([&] {
        std::map<std::string, double> last;
        for (const auto& p : policies) last[p] = -1;  // no series yet
        while (!done.load()) {
            const auto scrape = f.registry->collect();
            for (const auto& p : policies) {
                const double shadow =
                    sample(scrape, "adapt_requests_total", {{"mode", "shadow"}, {"policy_id", p}});
                const double enforced = sample(scrape, "adapt_requests_total",
                                               {{"mode", "enforced"}, {"policy_id", p}});
                if (enforced > shadow || shadow < last[p]) inconsistent.fetch_add(1);
                last[p] = shadow;
            }
            scrapes.fetch_add(1);
        }
    });
    struct Tally {
        std::map<std::string, std::array<std::uint64_t, 4>> by_policy;  // decided, shadow
                                                                        // failed, enforced,
                                                                        // enforced failed
    };
    std::vector<Tally> tallies(kThreads);
    std::vector<std::thread> deciders;
    for (int t = 0; t < kThreads; ++t) {
        deciders.emplace_back([&, t] {
            int call = 0;
            auto shadow = [&]() -> std::optional<Verdict> {
                if (++call % 7 == 0) return std::nullopt;  // raised
                return Verdict::Ok;
            };
            auto enforced = [&]() -> std::optional<Verdict> {
                if (call % 5 == 0) return std::nullopt;
                return call % 3 == 0 ? Verdict::Warn : Verdict::Ok;
            };
            while (scrapes.load() == 0) std::this_thread::yield();  // scraped while deciding
            for (int i = 0; i < kPerThread; ++i) {
                const std::string& policy = policies[(t + i) % policies.size()];
                const int before = call;
                const auto pair = enforcer.decide(policy, "k" + std::to_string(t * kPerThread + i),
                                                  Evaluator(shadow), Evaluator(enforced));
                auto& tally = tallies[t].by_policy[policy];
                tally[0] += 1;
                tally[1] += (before + 1) % 7 == 0;
                tally[2] += pair.in_rollout;
                tally[3] += pair.in_rollout && call % 5 == 0;
            }
        });
    }
    for (auto& thread : deciders) thread.join();
    done = true;
    scraper.join();
    CHECK(scrapes.load() > 0);
    CHECK(inconsistent.load() == 0);

    std::uint64_t cohort = 0;
    for (const auto& p : policies) {
        std::array<std::uint64_t, 4> want{};
        for (const auto& tally : tallies) {
            for (std::size_t k = 0; k < 4; ++k) want[k] += tally.by_policy.at(p)[k];
        }
        cohort += want[2];
        const auto windows = f.tracker->counts("60m", p);
        const auto errors = enforcer.lifetime_error_counts(p);
        CHECK(windows.total == want[0]);
        CHECK(errors.total == want[2]);
        CHECK(errors.events == want[3]);
        const auto& r = *f.registry;
        CHECK(sample(r, "adapt_requests_total", {{"mode", "shadow"}, {"policy_id", p}}) ==
              static_cast<double>(windows.total));
        CHECK(sample(r, "adapt_evaluation_errors_total", {{"mode", "shadow"}, {"policy_id", p}}) ==
              static_cast<double>(want[1]));
        CHECK(sample(r, "adapt_requests_total", {{"mode", "enforced"}, {"policy_id", p}}) ==
              static_cast<double>(errors.total));
        CHECK(sample(r, "guardian_enforcement_total", {{"policy_id", p}}) ==
              static_cast<double>(errors.total));
        CHECK(
            sample(r, "adapt_evaluation_errors_total", {{"mode", "enforced"}, {"policy_id", p}}) ==
            static_cast<double>(errors.events));
        CHECK(sample(r, "guardian_enforcement_failed_total", {{"policy_id", p}}) ==
              static_cast<double>(errors.events));
        CHECK(sample(r, "adapt_drift_events_total", {{"policy_id", p}}) ==
              static_cast<double>(windows.events));
    }
    REQUIRE(cohort > 0);
    REQUIRE(cohort < kThreads * kPerThread);
}

TEST_CASE("the latency histogram times every 64th decision and any a second after the last",
          "[enforcer][metrics]") {
    static_assert(Enforcer::kTimedEvery == 64 && Enforcer::kTimedAfterSeconds == 1.0);
    Fixture f;
    Enforcer enforcer = f.make(true, 100.0);
    const auto timed = [&] { return sample(*f.registry, "adapt_selection_latency_seconds"); };
    for (int i = 0; i < 130; ++i) enforcer.decide("p", "k", Verdict::Ok, Verdict::Ok);
    CHECK(timed() == 3);  // the 1st, the 65th and the 129th
    f.clock->advance(0.999);
    enforcer.decide("p", "k", Verdict::Ok, Verdict::Ok);
    CHECK(timed() == 3);
    f.clock->advance(0.001);  // a second after the 129th
    enforcer.decide("p", "k", Verdict::Ok, Verdict::Ok);
    CHECK(timed() == 4);
    enforcer.decide("p", "k", Verdict::Ok, Verdict::Ok);
    CHECK(timed() == 4);
    // a thread of its own starts timed
    std::thread([&] { enforcer.decide("p", "k", Verdict::Ok, Verdict::Ok); }).join();
    CHECK(timed() == 5);
    CHECK(sample(*f.registry, "adapt_requests_total", {{"mode", "shadow"}}) == 134);
}

TEST_CASE("decisions not yet scraped reach the registry when the enforcer goes",
          "[enforcer][metrics]") {
    Fixture f;
    auto enforcer = std::make_unique<Enforcer>(EnforceOptions{true, 100.0, 0.005}, f.tracker);
    for (int i = 0; i < 3; ++i) enforcer->decide("p", "k", Verdict::Ok, Verdict::Fail);
    std::thread([&] { enforcer->decide("p", "k", Verdict::Ok, Verdict::Ok); }).join();
    enforcer.reset();
    CHECK(sample(*f.registry, "adapt_requests_total", {{"mode", "shadow"}, {"policy_id", "p"}}) ==
          4);
    CHECK(sample(*f.registry, "guardian_enforcement_total", {{"policy_id", "p"}}) == 4);
    CHECK(sample(*f.registry, "adapt_selection_latency_seconds") == 2);  // one per thread
}

TEST_CASE("the counts of policies in every chunk of slots are published", "[enforcer][metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    auto tracker = std::make_shared<DriftTracker>(
        driftgate::default_windows(), std::make_shared<ManualClock>(0.0), registry, 200);
    Enforcer enforcer(EnforceOptions{true, 100.0, 0.005}, tracker);
    // Slots 0..149: three of the chunks (of 64 slots) that each thread keeps its counts in.
    for (int i = 0; i < 150; ++i) {
        for (int j = 0; j <= i % 3; ++j) {
            enforcer.decide("p" + std::to_string(i), "k", Verdict::Ok, Verdict::Ok);
        }
    }
    const auto scrape = registry->collect();
    for (int i = 0; i < 150; ++i) {
        const std::string policy = "p" + std::to_string(i);
        INFO(policy);
        CHECK(sample(scrape, "adapt_requests_total", {{"mode", "shadow"}, {"policy_id", policy}}) ==
              1 + i % 3);
        CHECK(sample(scrape, "guardian_enforcement_total", {{"policy_id", policy}}) == 1 + i % 3);
    }
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

TEST_CASE("boundary: a share's policy ids are checked first, the first of them too",
          "[enforcer][shares][boundary]") {
    // Each id is named when it is bad, before the enforcer's own state is looked at: even the
    // first one, on an enforcer where the rollout's name is taken.
    Fixture f;
    Enforcer enforcer = f.make(true, 0.0);
    enforcer.claim_share("orders", {"orders"});
    CHECK_THROWS_WITH(enforcer.claim_share("orders", {"bad id"}),
                      Catch::Contains("invalid policy_id 'bad id'"));
    CHECK_THROWS_WITH(enforcer.claim_share("orders", {"search", "bad id"}),
                      Catch::Contains("invalid policy_id 'bad id'"));
    CHECK_THROWS_WITH(enforcer.claim_share("orders", {"search"}),
                      Catch::Contains("already holds a share"));
    CHECK_THROWS_WITH(enforcer.claim_share("search", {"search", "search"}),
                      Catch::Contains("names policy 'search' twice"));
}
