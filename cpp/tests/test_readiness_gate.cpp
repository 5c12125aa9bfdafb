#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "driftgate/readiness_gate.hpp"
#include "driftgate/statistics.hpp"

using driftgate::DriftTracker;
using driftgate::GateConfig;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::ReadinessGate;
using driftgate::Verdict;

namespace {

struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(0.0);
    std::shared_ptr<MetricsRegistry> registry = std::make_shared<MetricsRegistry>();
    std::shared_ptr<DriftTracker> tracker =
        std::make_shared<DriftTracker>(driftgate::default_windows(), clock, registry);

    void record(int requests, int drifts) {
        for (int i = 0; i < requests; ++i) {
            tracker->record("p", Verdict::Ok, i < drifts ? Verdict::Fail : Verdict::Ok);
        }
    }
};

GateConfig enabled(double max_ratio = 0.005) {
    GateConfig config;
    config.enabled = true;
    config.max_ratio = max_ratio;
    return config;
}

}  // namespace

TEST_CASE("a disabled gate is always open", "[gate]") {
    Fixture f;
    f.record(200, 200);
    ReadinessGate gate(GateConfig{}, f.tracker);
    CHECK(gate.check() == std::pair<bool, std::string_view>{true, "OK"});
}

TEST_CASE("the gate closes above the limit once there is enough traffic", "[gate]") {
    Fixture f;
    ReadinessGate gate(enabled(), f.tracker);
    f.record(99, 99);
    CHECK(gate.check().first);  // 99 requests: below min_requests
    f.record(1, 1);
    CHECK(gate.check() == std::pair<bool, std::string_view>{false, "DRIFT_GATE"});
    CHECK_THAT(f.registry->exposition(), Catch::Contains("adapt_readiness_gate_open 0"));
}

TEST_CASE("once closed it reopens only at the reopen ratio", "[gate]") {
    Fixture f;
    GateConfig config = enabled(0.10);
    config.reopen_ratio = 0.05;
    ReadinessGate gate(config, f.tracker);
    f.record(100, 11);  // 11 %
    CHECK_FALSE(gate.check().first);
    f.record(100, 0);  // 5.5 %: below max, above reopen
    CHECK_FALSE(gate.check().first);
    f.record(20, 0);  // 11 / 220 = 5 %
    CHECK(gate.check().first);
}

TEST_CASE("with confidence a handful of drifts cannot close it", "[gate]") {
    Fixture f;
    GateConfig config = enabled(0.01);
    config.min_requests = 10;
    config.confidence = 0.95;
    ReadinessGate gate(config, f.tracker);
    f.record(100, 2);  // 2 %, but the lower bound is below 1 %
    CHECK(gate.check().first);
    f.record(900, 48);  // 5 % of 1000
    CHECK_FALSE(gate.check().first);
}

TEST_CASE("the window forgets and the gate follows", "[gate]") {
    Fixture f;
    ReadinessGate gate(enabled(), f.tracker);
    f.record(200, 100);
    CHECK_FALSE(gate.check().first);
    f.clock->advance(301);
    f.record(200, 0);
    CHECK(gate.check().first);
}

TEST_CASE("a closed gate reopens without traffic once its drift has left the window", "[gate]") {
    Fixture f;
    ReadinessGate gate(enabled(), f.tracker);
    f.clock->set(12.0);  // bucket 2 of the 5m window (60 x 5 s): counted until t = 310
    f.record(200, 100);
    CHECK_FALSE(gate.check().first);
    CHECK(gate.reopens_within() == Approx(298.0));
    f.clock->set(309.9);  // the last bucket that still holds the drift
    CHECK(gate.check() == std::pair<bool, std::string_view>{false, "DRIFT_GATE"});
    CHECK(gate.reopens_within() == Approx(0.1));
    f.clock->set(310.0);  // no request since the drift, and none now
    CHECK(gate.check() == std::pair<bool, std::string_view>{true, "OK"});
    CHECK_FALSE(gate.reopens_within().has_value());
    CHECK_THAT(f.registry->exposition(), Catch::Contains("adapt_readiness_gate_open 1"));
}

TEST_CASE("a later drift keeps the gate closed until that drift has left", "[gate]") {
    Fixture f;
    ReadinessGate gate(enabled(), f.tracker);
    f.record(200, 100);
    CHECK_FALSE(gate.check().first);
    f.clock->set(100.0);
    f.record(1, 1);  // too few requests to judge, but drift all the same
    CHECK(gate.reopens_within() == Approx(300.0));
    f.clock->set(399.0);  // the first drift has left, the second has not
    CHECK_FALSE(gate.check().first);
    f.clock->set(400.0);
    CHECK(gate.check().first);
}

TEST_CASE("a closed gate with a few clean requests left keeps waiting for min_requests", "[gate]") {
    // Requests without drift do not reopen a gate below min_requests; only drift leaving does.
    Fixture f;
    GateConfig config = enabled(0.10);
    config.reopen_ratio = 0.05;
    ReadinessGate gate(config, f.tracker);
    f.record(100, 50);
    CHECK_FALSE(gate.check().first);
    f.clock->set(200.0);
    f.record(10, 0);
    f.clock->set(299.0);
    CHECK_FALSE(gate.check().first);  // 50 drifts still in the window
    f.clock->set(300.0);              // only the 10 clean requests are left
    CHECK(gate.check().first);
}

TEST_CASE("with confidence a window with no drift left opens the gate", "[gate]") {
    // 150 clean requests alone would not bring the upper bound under 1 % at 0.95.
    Fixture f;
    GateConfig config = enabled(0.01);
    config.min_requests = 10;
    config.confidence = 0.95;
    ReadinessGate gate(config, f.tracker);
    f.record(100, 50);
    CHECK_FALSE(gate.check().first);
    f.clock->set(200.0);
    f.record(150, 0);
    CHECK_FALSE(gate.check().first);
    f.clock->set(300.0);
    CHECK(gate.check().first);
}

TEST_CASE("boundary: a closed gate whose drift has left reopens at the next check, in 0 s",
          "[gate][boundary]") {
    Fixture f;
    ReadinessGate gate(enabled(), f.tracker);
    f.record(200, 100);
    CHECK_FALSE(gate.check().first);
    f.clock->advance(301);  // no check since: still closed, nothing left to wait for
    CHECK_FALSE(gate.is_open());
    CHECK(gate.reopens_within() == 0.0);
    CHECK(gate.check().first);
}

TEST_CASE("an open gate has no reopening time", "[gate]") {
    Fixture f;
    ReadinessGate gate(enabled(), f.tracker);
    f.record(50, 50);  // drift, but below min_requests: still open
    CHECK(gate.check().first);
    CHECK_FALSE(gate.reopens_within().has_value());
}

TEST_CASE("bad gate configs are named", "[gate]") {
    Fixture f;
    GateConfig config = enabled(1.5);
    CHECK_THROWS_WITH(ReadinessGate(config, f.tracker), Catch::Contains("max_ratio=1.5"));
    config = enabled(0.1);
    config.reopen_ratio = 0.2;
    CHECK_THROWS_WITH(ReadinessGate(config, f.tracker), Catch::Contains("reopen_ratio=0.2"));
    config = enabled(0.1);
    config.window = "7m";
    CHECK_THROWS_WITH(ReadinessGate(config, f.tracker), Catch::Contains("unknown window '7m'"));
}

TEST_CASE("the stateless check has no memory", "[gate]") {
    Fixture f;
    f.record(200, 2);  // 1 %
    CHECK_FALSE(driftgate::readiness_gate_ok(enabled(), *f.tracker).first);
    CHECK(driftgate::readiness_gate_ok(enabled(0.02), *f.tracker).first);
    CHECK(driftgate::readiness_gate_ok(GateConfig{}, *f.tracker).first);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

TEST_CASE("boundary: a ratio equal to max_ratio keeps the gate open, above it closes",
          "[gate][boundary]") {
    Fixture f;
    ReadinessGate gate(enabled(0.005), f.tracker);
    f.record(200, 1);  // 1 / 200 is 0.005 exactly
    CHECK(gate.check().first);
    CHECK(driftgate::readiness_gate_ok(enabled(0.005), *f.tracker).first);
    f.record(1, 1);  // 2 / 201
    CHECK_FALSE(gate.check().first);
    CHECK_FALSE(driftgate::readiness_gate_ok(enabled(0.005), *f.tracker).first);
}

TEST_CASE("boundary: with a lower reopen_ratio, a ratio equal to max_ratio still keeps it open",
          "[gate][boundary]") {
    // Without reopen_ratio a close at the limit would reopen in the same check; with one
    // below the limit, it would stay closed.
    Fixture f;
    GateConfig config = enabled(0.005);
    config.reopen_ratio = 0.001;
    ReadinessGate gate(config, f.tracker);
    f.record(200, 1);
    CHECK(gate.check().first);
    f.record(1, 1);
    CHECK_FALSE(gate.check().first);
}

TEST_CASE("boundary: the gate judges from min_requests requests on, not one before",
          "[gate][boundary]") {
    Fixture f;
    ReadinessGate gate(enabled(0.005), f.tracker);
    f.record(99, 99);
    CHECK(gate.check().first);
    CHECK(driftgate::readiness_gate_ok(enabled(0.005), *f.tracker).first);
    f.record(1, 0);
    CHECK_FALSE(gate.check().first);
    CHECK_FALSE(driftgate::readiness_gate_ok(enabled(0.005), *f.tracker).first);
}

namespace {

/// A gate with confidence, closed by 50 drifts in 100 requests, then shown 900 clean ones.
bool reopens_with_confidence(double reopen_ratio) {
    Fixture f;
    GateConfig config = enabled(0.2);
    config.confidence = 0.95;
    config.reopen_ratio = reopen_ratio;
    ReadinessGate gate(config, f.tracker);
    f.record(100, 50);
    REQUIRE_FALSE(gate.check().first);
    f.record(900, 0);
    return gate.check().first;
}

/// Whether a gate with confidence and this max_ratio stays open on 50 drifts in 1000.
bool open_with_confidence(double max_ratio) {
    Fixture f;
    GateConfig config = enabled(max_ratio);
    config.confidence = 0.95;
    ReadinessGate gate(config, f.tracker);
    f.record(1000, 50);
    return gate.check().first;
}

}  // namespace

TEST_CASE("boundary: with confidence the gate reopens at an upper bound equal to reopen_ratio",
          "[gate][boundary]") {
    const double upper = driftgate::wilson_bounds(50, 1000, 0.95).upper;
    CHECK(reopens_with_confidence(upper));
    CHECK_FALSE(reopens_with_confidence(std::nextafter(upper, 0.0)));
}

TEST_CASE("boundary: with confidence a lower bound equal to max_ratio keeps the gate open",
          "[gate][boundary]") {
    const double lower = driftgate::wilson_bounds(50, 1000, 0.95).lower;
    CHECK(open_with_confidence(lower));
    CHECK_FALSE(open_with_confidence(std::nextafter(lower, 0.0)));
}

TEST_CASE("boundary: a gate's ratios run from 0 to 1, its reopen ratio up to max_ratio",
          "[gate][boundary]") {
    auto valid = [](double max_ratio, std::optional<double> reopen_ratio,
                    std::optional<double> confidence) {
        GateConfig config = enabled(max_ratio);
        config.reopen_ratio = reopen_ratio;
        config.confidence = confidence;
        try {
            config.validate();
            return true;
        } catch (const std::invalid_argument&) {
            return false;
        }
    };
    CHECK(valid(0.0, std::nullopt, std::nullopt));
    CHECK(valid(1.0, std::nullopt, std::nullopt));
    CHECK_FALSE(valid(std::nextafter(0.0, -1.0), std::nullopt, std::nullopt));
    CHECK_FALSE(valid(std::nextafter(1.0, 2.0), std::nullopt, std::nullopt));
    CHECK(valid(0.1, 0.0, std::nullopt));
    CHECK(valid(0.1, 0.1, std::nullopt));  // reopening at the limit itself
    CHECK_FALSE(valid(0.1, std::nextafter(0.1, 1.0), std::nullopt));
    CHECK_FALSE(valid(0.1, std::nextafter(0.0, -1.0), std::nullopt));
    CHECK(valid(1.0, 1.0, std::nullopt));
    CHECK_FALSE(valid(1.0, std::nextafter(1.0, 2.0), std::nullopt));
    // confidence in [0.5, 1)
    CHECK(valid(0.1, std::nullopt, 0.5));
    CHECK(valid(0.1, std::nullopt, std::nextafter(1.0, 0.0)));
    CHECK_FALSE(valid(0.1, std::nullopt, std::nextafter(0.5, 0.0)));
    CHECK_FALSE(valid(0.1, std::nullopt, 1.0));
}

TEST_CASE("boundary: adapt_readiness_gate_open is 1 while open and disabled, 0 while closed",
          "[gate][boundary]") {
    Fixture f;
    auto sample = [&f] {
        const std::string text = f.registry->exposition();
        const std::string name = "\nadapt_readiness_gate_open ";
        const auto at = text.find(name);
        REQUIRE(at != std::string::npos);
        return text.substr(at + name.size(), text.find('\n', at + 1) - at - name.size());
    };
    ReadinessGate disabled(GateConfig{}, f.tracker);
    CHECK(disabled.check().first);
    CHECK(sample() == "1");
    ReadinessGate gate(enabled(), f.tracker);
    f.record(200, 100);
    CHECK_FALSE(gate.check().first);
    CHECK(sample() == "0");
    f.clock->advance(301);  // the drift has left the window
    CHECK(gate.check().first);
    CHECK(sample() == "1");
}
