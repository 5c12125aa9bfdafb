#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
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
    CHECK_THAT(text, Catch::Contains("adapt_enforce_rollout_percent 100"));
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
