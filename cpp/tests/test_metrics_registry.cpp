#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "driftgate/drift_tracker.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/policy_index.hpp"

using driftgate::DriftTracker;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::PolicyIndex;
using driftgate::SlotCounters;
using driftgate::Verdict;

TEST_CASE("an empty registry exposes nothing", "[metrics]") {
    MetricsRegistry registry;
    CHECK(registry.exposition().empty());
}

TEST_CASE("two trackers in one registry export summed windows", "[metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    auto clock = std::make_shared<ManualClock>(0.0);
    DriftTracker a(driftgate::default_windows(), clock, registry);
    auto b = std::make_unique<DriftTracker>(driftgate::default_windows(), clock, registry);
    a.record("p", Verdict::Ok, Verdict::Fail);
    b->record("p", Verdict::Ok, Verdict::Ok);
    b->record("p", Verdict::Ok, Verdict::Ok);
    b->record("p", Verdict::Ok, Verdict::Ok);
    CHECK_THAT(registry->exposition(), Catch::Contains("adapt_drift_ratio{window=\"5m\"} 0.25"));
    b.reset();  // a tracker that is gone stops being exported
    CHECK_THAT(registry->exposition(), Catch::Contains("adapt_drift_ratio{window=\"5m\"} 1"));
}

TEST_CASE("window gauges are fresh at every scrape", "[metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    auto clock = std::make_shared<ManualClock>(0.0);
    DriftTracker tracker(driftgate::default_windows(), clock, registry);
    tracker.record("p", Verdict::Ok, Verdict::Fail);
    CHECK_THAT(registry->exposition(),
               Catch::Contains("adapt_drift_window_events{window=\"5m\"} 1"));
    clock->advance(301.0);
    CHECK_THAT(registry->exposition(),
               Catch::Contains("adapt_drift_window_events{window=\"5m\"} 0"));
    CHECK_THAT(registry->exposition(),
               Catch::Contains("adapt_drift_window_events{window=\"15m\"} 1"));
}

TEST_CASE("the default registry is one instance", "[metrics]") {
    CHECK(MetricsRegistry::default_registry() == MetricsRegistry::default_registry());
}

TEST_CASE("a slot's counters are created together, at 0, on its first use", "[metrics]") {
    MetricsRegistry registry;
    auto index = std::make_shared<PolicyIndex>(4);
    auto& requests = registry.counter(driftgate::metrics::kRequests);
    SlotCounters counters({{&requests, {{"mode", "shadow"}}},
                           {&requests, {{"mode", "enforced"}}},
                           {&registry.counter(driftgate::metrics::kEnforcement), {}}},
                          index);
    index->slot_for("a");
    const std::uint32_t b = index->slot_for("b");
    CHECK(registry.exposition().find("policy_id") == std::string::npos);
    const auto row = counters.at(b);
    REQUIRE(row.size() == 3);
    row[0]->Increment();
    CHECK(counters.at(b).data() == row.data());  // found again, not created again
    const std::string text = registry.exposition();
    CHECK_THAT(text, Catch::Contains("adapt_requests_total{mode=\"shadow\",policy_id=\"b\"} 1\n"));
    CHECK_THAT(text,
               Catch::Contains("adapt_requests_total{mode=\"enforced\",policy_id=\"b\"} 0\n"));
    CHECK_THAT(text, Catch::Contains("guardian_enforcement_total{policy_id=\"b\"} 0\n"));
    CHECK_THAT(text, !Catch::Contains("policy_id=\"a\""));
}
