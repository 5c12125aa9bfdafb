#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

namespace {

prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType type,
                                double value) {
    prometheus::ClientMetric metric;
    metric.label = {{"policy_id", "p"}};
    metric.counter.value = value;
    metric.gauge.value = value;
    metric.untyped.value = value;
    return {std::move(name), std::move(help), type, {metric}};
}

}  // namespace

TEST_CASE("OpenMetrics names counter families without _total and ends with EOF", "[metrics]") {
    const std::string text = driftgate::to_openmetrics({
        family("adapt_requests_total", "Decisions.", prometheus::MetricType::Counter, 3),
        family("driftgate_reloads", "Reloads, \"quoted\".", prometheus::MetricType::Counter, 1),
        family("adapt_drift_ratio", "Ratio.", prometheus::MetricType::Gauge, std::nan("")),
        family("legacy", "Untyped.", prometheus::MetricType::Untyped, 2),
    });
    CHECK(text ==
          "# HELP adapt_requests Decisions.\n"
          "# TYPE adapt_requests counter\n"
          "adapt_requests_total{policy_id=\"p\"} 3\n"
          "# HELP driftgate_reloads Reloads, \\\"quoted\\\".\n"
          "# TYPE driftgate_reloads counter\n"
          "driftgate_reloads_total{policy_id=\"p\"} 1\n"
          "# HELP adapt_drift_ratio Ratio.\n"
          "# TYPE adapt_drift_ratio gauge\n"
          "adapt_drift_ratio{policy_id=\"p\"} NaN\n"
          "# HELP legacy Untyped.\n"
          "# TYPE legacy unknown\n"
          "legacy{policy_id=\"p\"} 2\n"
          "# EOF\n");
}

TEST_CASE("OpenMetrics keeps every family and sample of the text exposition", "[metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    auto clock = std::make_shared<ManualClock>(0.0);
    DriftTracker tracker(driftgate::default_windows(), clock, registry);
    registry->histogram(driftgate::metrics::kSelectionLatency)
        .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 1.0})
        .Observe(0.5);
    tracker.record("p", Verdict::Ok, Verdict::Fail);
    const std::string text = registry->exposition();
    const std::string open = registry->exposition(driftgate::ExpositionFormat::kOpenMetrics);
    auto sample_lines = [](const std::string& exposition) {
        std::vector<std::string> lines;
        std::size_t at = 0;
        while (at < exposition.size()) {
            const std::size_t end = exposition.find('\n', at);
            if (exposition[at] != '#') lines.push_back(exposition.substr(at, end - at));
            at = end + 1;
        }
        return lines;
    };
    CHECK(sample_lines(open) == sample_lines(text));
    CHECK_THAT(open, Catch::Contains("# TYPE adapt_drift_events counter\n"));
    CHECK_THAT(open, Catch::Contains("# TYPE adapt_selection_latency_seconds histogram\n"));
    CHECK_THAT(open, Catch::EndsWith("\n# EOF\n"));
}

TEST_CASE("family names cover registered and scrape-time families", "[metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    CHECK(registry->family_names().empty());
    {
        DriftTracker tracker(driftgate::default_windows(), nullptr, registry);
        const auto names = registry->family_names();
        CHECK(std::find(names.begin(), names.end(), "adapt_drift_events_total") != names.end());
        CHECK(std::find(names.begin(), names.end(), "adapt_drift_ratio") != names.end());
    }
    const auto names = registry->family_names();  // the tracker's window gauges went with it
    CHECK(std::find(names.begin(), names.end(), "adapt_drift_ratio") == names.end());
}

namespace {

constexpr driftgate::MetricName kHeldMetric{"held_gauge", "A gauge several owners hold."};

}  // namespace

TEST_CASE("a held gauge stays while anyone holds it and goes with the last", "[metrics]") {
    MetricsRegistry registry;
    auto first = registry.hold_gauge(kHeldMetric, {{"rollout", ""}});
    auto second = registry.hold_gauge(kHeldMetric, {{"rollout", ""}});
    CHECK(first.get() == second.get());
    first->Set(3);
    first.reset();
    // Still held: the series is there and the remaining holder writes to it safely.
    second->Set(4);
    CHECK_THAT(registry.exposition(), Catch::Contains("held_gauge{rollout=\"\"} 4"));
    second.reset();
    CHECK_THAT(registry.exposition(), !Catch::Contains("held_gauge{rollout=\"\"}"));
    // Held anew after it went: a fresh series at 0.
    auto again = registry.hold_gauge(kHeldMetric, {{"rollout", ""}});
    CHECK_THAT(registry.exposition(), Catch::Contains("held_gauge{rollout=\"\"} 0"));
}

TEST_CASE("gauges held and let go from many threads never lose a holder's series",
          "[metrics][threads]") {
    MetricsRegistry registry;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&registry] {
            for (int i = 0; i < 2000; ++i) {
                auto held = registry.hold_gauge(kHeldMetric, {{"rollout", "r"}});
                held->Set(i);  // would touch freed memory if another thread removed it
            }
        });
    }
    auto kept = registry.hold_gauge(kHeldMetric, {{"rollout", "kept"}});
    for (auto& thread : threads) thread.join();
    kept->Set(1);
    const std::string text = registry.exposition();
    CHECK_THAT(text, Catch::Contains("held_gauge{rollout=\"kept\"} 1"));
    CHECK_THAT(text, !Catch::Contains("rollout=\"r\""));
}

TEST_CASE("a held counter counts on while anyone holds it", "[metrics]") {
    MetricsRegistry registry;
    const driftgate::MetricName counted{"held_total", "Counted by several owners."};
    auto first = registry.hold_counter(counted, {{"rollout", "r"}});
    first->Increment();
    auto second = registry.hold_counter(counted, {{"rollout", "r"}});
    second->Increment();
    first.reset();
    CHECK_THAT(registry.exposition(), Catch::Contains("held_total{rollout=\"r\"} 2"));
    second.reset();
    CHECK_THAT(registry.exposition(), !Catch::Contains("held_total{rollout=\"r\"}"));
}

TEST_CASE("a holder's series leave with it, and only those no other holder has", "[metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    auto& gauges = registry->gauge(kHeldMetric);
    gauges.Add({{"rollout", "other"}}).Set(7);  // not held: nobody lets it go
    driftgate::SeriesHolder shared(registry);
    shared.gauge(kHeldMetric, {{"rollout", "both"}}).Set(2);
    {
        driftgate::SeriesHolder mine(registry);
        mine.gauge(kHeldMetric, {{"rollout", "mine"}}).Set(1);
        mine.counter({"owned_total", "Counted by one owner."}, {{"rollout", "mine"}}).Increment();
        mine.gauge(kHeldMetric, {{"rollout", "both"}}).Set(3);
        mine.gauge(kHeldMetric, {{"rollout", "mine"}, {"stage", "a"}});
        mine.release_gauge(kHeldMetric, {{"rollout", "mine"}, {"stage", "a"}});
        CHECK_THAT(registry->exposition(), !Catch::Contains("stage=\"a\""));
        CHECK_THAT(registry->exposition(), Catch::Contains("owned_total{rollout=\"mine\"} 1"));
    }
    const std::string text = registry->exposition();
    CHECK_THAT(text, !Catch::Contains("rollout=\"mine\""));
    CHECK_THAT(text, Catch::Contains("held_gauge{rollout=\"both\"} 3"));
    CHECK_THAT(text, Catch::Contains("held_gauge{rollout=\"other\"} 7"));
}
