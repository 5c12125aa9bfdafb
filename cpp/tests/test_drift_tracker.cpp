#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "driftgate/drift_tracker.hpp"

using driftgate::DriftTracker;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::Verdict;

namespace {

struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(0.0);
    std::shared_ptr<MetricsRegistry> registry = std::make_shared<MetricsRegistry>();
    DriftTracker tracker{driftgate::default_windows(), clock, registry, 3};
};

}  // namespace

TEST_CASE("record reports drift and counts per policy", "[drift_tracker]") {
    Fixture f;
    CHECK(f.tracker.record("p1", Verdict::Ok, Verdict::Fail));
    CHECK_FALSE(f.tracker.record("p1", Verdict::Ok, Verdict::Ok));
    CHECK_FALSE(f.tracker.record("p2", Verdict::Warn, Verdict::Warn));
    CHECK(f.tracker.counts("5m").events == 1);
    CHECK(f.tracker.counts("5m").total == 3);
    CHECK(f.tracker.counts("5m", "p1").total == 2);
    CHECK(f.tracker.ratio("5m", "p1") == 0.5);
    CHECK(f.tracker.ratio("60m", "p2") == 0.0);
    CHECK(f.tracker.counts("5m", "never").total == 0);
}

TEST_CASE("record_slot counts under the id that holds the slot", "[drift_tracker]") {
    Fixture f;
    const std::uint32_t slot = f.tracker.index()->slot_for("p2");
    CHECK(f.tracker.record_slot(slot, Verdict::Ok, Verdict::Fail));
    CHECK_FALSE(f.tracker.record_slot(slot, Verdict::Ok, Verdict::Ok));
    CHECK(f.tracker.counts("5m", "p2").events == 1);
    CHECK(f.tracker.counts("5m", "p2").total == 2);
    CHECK(f.tracker.counts("5m").total == 2);
    // Slot 1 is free until an id takes it, and 3 (the overflow slot) until an id overflows.
    for (const std::uint32_t free_slot : {1u, 3u, 1000u}) {
        CHECK_THROWS_AS(f.tracker.record_slot(free_slot, Verdict::Ok, Verdict::Ok),
                        std::out_of_range);
    }
    CHECK(f.tracker.counts("5m").total == 2);
    for (const char* id : {"p3", "p4", "p5"}) f.tracker.record(id, Verdict::Ok, Verdict::Ok);
    CHECK(f.tracker.record_slot(3, Verdict::Ok, Verdict::Warn));  // p5 overflowed
    CHECK(f.tracker.counts("5m", "__overflow__").events == 1);
}

TEST_CASE("the 5m window forgets after 300 s, the 60m one keeps", "[drift_tracker]") {
    Fixture f;
    f.tracker.record("p", Verdict::Ok, Verdict::Fail);
    f.clock->advance(300.0);
    CHECK(f.tracker.counts("5m").total == 0);
    CHECK(f.tracker.counts("15m").total == 1);
    CHECK(f.tracker.counts("60m").events == 1);
}

TEST_CASE("drift_leaves_in names when the newest drift leaves a window", "[drift_tracker]") {
    Fixture f;
    CHECK_FALSE(f.tracker.drift_leaves_in("5m").has_value());
    f.clock->set(7.0);
    f.tracker.record("a", Verdict::Ok, Verdict::Fail);  // bucket 1: counted until t = 305
    f.clock->set(20.0);
    f.tracker.record("b", Verdict::Ok, Verdict::Ok);  // no drift: not evidence
    f.clock->set(30.0);
    CHECK(f.tracker.drift_leaves_in("5m") == Approx(275.0));
    CHECK(f.tracker.drift_leaves_in("60m") == Approx(3570.0));  // bucket 0 of 60 s
    std::thread([&] { f.tracker.record("c", Verdict::Ok, Verdict::Warn); }).join();
    CHECK(f.tracker.drift_leaves_in("5m") == Approx(300.0));  // the other shard's is newer
    f.clock->set(329.999);
    CHECK(f.tracker.drift_leaves_in("5m") == Approx(0.001).margin(1e-6));
    f.clock->set(330.0);
    CHECK_FALSE(f.tracker.drift_leaves_in("5m").has_value());
    CHECK(f.tracker.drift_leaves_in("15m").has_value());
    f.tracker.reset();
    CHECK_FALSE(f.tracker.drift_leaves_in("15m").has_value());
    CHECK_THROWS_AS(f.tracker.drift_leaves_in("7m"), std::invalid_argument);
}

TEST_CASE("a bad policy id records nothing", "[drift_tracker]") {
    Fixture f;
    f.tracker.record("p", Verdict::Ok, Verdict::Ok);
    CHECK_THROWS_WITH(f.tracker.record("has space", Verdict::Ok, Verdict::Ok),
                      Catch::Contains("'has space'"));
    CHECK(f.tracker.counts("5m").total == 1);
    CHECK(f.tracker.policies() == std::vector<std::string>{"p"});
}

TEST_CASE("ids past max_policies count under __overflow__", "[drift_tracker]") {
    Fixture f;  // max_policies = 3
    for (const char* id : {"a", "b", "c", "d", "e"})
        f.tracker.record(id, Verdict::Ok, Verdict::Warn);
    CHECK(f.tracker.policies() == std::vector<std::string>{"a", "b", "c", "__overflow__"});
    CHECK(f.tracker.counts("5m", "__overflow__").total == 2);
    CHECK(f.tracker.counts("5m", "e").total == 0);  // counted only under __overflow__
    CHECK(f.tracker.counts("5m").total == 5);
    CHECK_THROWS_WITH(f.tracker.record("__overflow__", Verdict::Ok, Verdict::Ok),
                      Catch::Contains("reserved"));
    CHECK(f.tracker.counts("5m").total == 5);
}

TEST_CASE("record_batch counts drift and rejects bad codes whole", "[drift_tracker]") {
    Fixture f;
    const std::vector<std::uint8_t> shadow{0, 1, 2, 0};
    const std::vector<std::uint8_t> enforced{0, 2, 2, 1};
    CHECK(f.tracker.record_batch("p", shadow, enforced) == 2);
    CHECK(f.tracker.counts("5m").total == 4);

    const std::vector<std::uint8_t> bad{0, 0, 3, 0};
    CHECK_THROWS_WITH(f.tracker.record_batch("p", shadow, bad),
                      Catch::Contains("code 3") && Catch::Contains("enforced[2]"));
    const std::vector<std::uint8_t> short_one{0};
    CHECK_THROWS_WITH(f.tracker.record_batch("p", shadow, short_one),
                      Catch::Contains("equal length"));
    CHECK(f.tracker.counts("5m").total == 4);
    CHECK(f.tracker.counts("5m").events == 2);
}

TEST_CASE("record_batch with a bad code at any position names it and records nothing",
          "[drift_tracker]") {
    Fixture f;
    for (const std::size_t n : {1, 15, 16, 17, 31, 32, 33, 64, 100, 255}) {
        std::vector<std::uint8_t> shadow(n, 1);
        std::vector<std::uint8_t> enforced(n, 2);
        for (std::size_t at = 0; at < n; ++at) {
            for (auto* side : {&shadow, &enforced}) {
                const std::uint8_t kept = (*side)[at];
                (*side)[at] = 3;
                const std::string where =
                    (side == &shadow ? "shadow[" : "enforced[") + std::to_string(at) + "]";
                CHECK_THROWS_WITH(f.tracker.record_batch("p", shadow, enforced),
                                  Catch::Contains("code 3 in " + where));
                (*side)[at] = kept;
            }
        }
        CHECK(f.tracker.record_batch("p", shadow, enforced) == n);
    }
    CHECK(f.tracker.counts("5m").total == 1 + 15 + 16 + 17 + 31 + 32 + 33 + 64 + 100 + 255);
}

TEST_CASE("unknown windows are rejected", "[drift_tracker]") {
    Fixture f;
    CHECK_THROWS_AS(f.tracker.counts("1h"), std::invalid_argument);
}

TEST_CASE("drift events and window gauges are exported", "[drift_tracker][metrics]") {
    Fixture f;
    f.tracker.record("p1", Verdict::Ok, Verdict::Fail);
    f.tracker.record("p1", Verdict::Ok, Verdict::Ok);
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("adapt_drift_events_total{policy_id=\"p1\"} 1"));
    CHECK_THAT(text, Catch::Contains("adapt_drift_ratio{window=\"5m\"} 0.5"));
    CHECK_THAT(text, Catch::Contains("adapt_drift_window_requests{window=\"60m\"} 2"));
    CHECK_THAT(text, Catch::Contains("adapt_drift_window_events{window=\"15m\"} 1"));
}

TEST_CASE("a policy's drift counter exists at 0 from its first record",
          "[drift_tracker][metrics]") {
    Fixture f;
    CHECK_FALSE(f.tracker.record("p1", Verdict::Ok, Verdict::Ok));
    const std::uint8_t none[] = {0};
    f.tracker.record_batch("p2", std::span(none, 0), std::span(none, 0));  // records nothing
    const std::string text = f.registry->exposition();
    CHECK_THAT(text, Catch::Contains("adapt_drift_events_total{policy_id=\"p1\"} 0\n"));
    CHECK_THAT(text, !Catch::Contains("policy_id=\"p2\""));
    f.tracker.record("p1", Verdict::Warn, Verdict::Fail);
    CHECK_THAT(f.registry->exposition(),
               Catch::Contains("adapt_drift_events_total{policy_id=\"p1\"} 1\n"));
}

TEST_CASE("record is exact under many threads", "[drift_tracker][threads]") {
    Fixture f;
    constexpr int kThreads = 8;
    constexpr int kPerThread = 40000;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const std::string policy = "p" + std::to_string(t % 5);  // 5 ids, cap 3
            for (int i = 0; i < kPerThread; ++i) {
                f.tracker.record(policy, Verdict::Ok, i % 4 == 0 ? Verdict::Fail : Verdict::Ok);
            }
        });
    }
    for (auto& thread : threads) thread.join();
    CHECK(f.tracker.counts("5m").total == kThreads * kPerThread);
    CHECK(f.tracker.counts("5m").events == kThreads * kPerThread / 4);
    std::uint64_t sum = 0;
    for (const auto& id : f.tracker.policies()) sum += f.tracker.counts("5m", id).total;
    CHECK(sum == kThreads * kPerThread);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

TEST_CASE("boundary: a batch counts every drift across its blocks of 255 codes",
          "[drift_tracker][boundary]") {
    // Drift is counted per block of 255 codes in a byte: a block that drifts throughout is
    // the most it holds, and the codes on either side of a block's edge count once each.
    for (std::size_t size :
         {std::size_t{255}, std::size_t{256}, std::size_t{510}, std::size_t{511}}) {
        Fixture f;
        const std::vector<std::uint8_t> shadow(size, 0);
        const std::vector<std::uint8_t> enforced(size, 2);
        CHECK(f.tracker.record_batch("p", shadow, enforced) == size);
        CHECK(f.tracker.counts("5m").events == size);
        CHECK(f.tracker.counts("5m").total == size);
    }
    Fixture f;
    std::vector<std::uint8_t> shadow(600, 1);
    std::vector<std::uint8_t> enforced(600, 1);
    for (std::size_t i : {0, 254, 255, 509, 510, 599}) enforced[i] = 0;
    CHECK(f.tracker.record_batch("p", shadow, enforced) == 6);
}

TEST_CASE("boundary: verdict code 2 is the last valid one, wherever a bad one sits",
          "[drift_tracker][boundary]") {
    Fixture f;
    const std::vector<std::uint8_t> fails(300, 2);
    CHECK(f.tracker.record_batch("p", fails, fails) == 0);
    for (std::size_t at : {std::size_t{0}, std::size_t{299}}) {
        std::vector<std::uint8_t> bad = fails;
        bad[at] = 3;
        CHECK_THROWS_WITH(f.tracker.record_batch("p", bad, fails),
                          Catch::Contains("code 3 in shadow[" + std::to_string(at) + "]"));
        CHECK_THROWS_WITH(f.tracker.record_batch("p", fails, bad),
                          Catch::Contains("code 3 in enforced[" + std::to_string(at) + "]"));
    }
    CHECK(f.tracker.counts("5m").total == 300);  // nothing of a refused batch
    // an empty batch records nothing, not even its policy id
    CHECK(f.tracker.record_batch("fresh", {}, {}) == 0);
    CHECK(f.tracker.policies() == std::vector<std::string>{"p"});
}
