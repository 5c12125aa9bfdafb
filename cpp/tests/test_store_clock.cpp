#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <thread>

#include "driftgate/clock.hpp"

using driftgate::Clock;
using driftgate::ManualClock;
using driftgate::StoreClock;

namespace {

/// A machine whose wall clock and monotonic clock are set apart, as on a real one.
class MachineClock final : public Clock {
  public:
    double now() const override { return monotonic; }
    double wall() const override { return unix_time; }

    double monotonic = 100.0;
    double unix_time = 1'700'000'000.0;
};

}  // namespace

TEST_CASE("store clock is the base's wall time before its first reading", "[store_clock]") {
    auto machine = std::make_shared<MachineClock>();
    StoreClock clock(machine);
    CHECK(clock.wall() == machine->unix_time);
    CHECK(clock.now() == machine->monotonic);
    CHECK_FALSE(clock.age().has_value());
    CHECK_FALSE(clock.skew().has_value());
}

TEST_CASE("store clock follows the store's time through the monotonic clock", "[store_clock]") {
    auto machine = std::make_shared<MachineClock>();
    StoreClock clock(machine);
    // This machine is two days ahead of the store.
    const double store = machine->unix_time - 2 * 86400.0;
    clock.observe(store, machine->monotonic);
    CHECK(clock.wall() == store);
    CHECK(*clock.skew() == 2 * 86400.0);
    CHECK(*clock.age() == 0.0);

    machine->monotonic += 7.0;
    machine->unix_time += 7.0;
    CHECK(clock.wall() == store + 7.0);
    CHECK(*clock.age() == 7.0);
    CHECK(clock.now() == machine->monotonic);
}

TEST_CASE("a step of the local wall clock does not move the store clock", "[store_clock]") {
    auto machine = std::make_shared<MachineClock>();
    StoreClock clock(machine);
    clock.observe(machine->unix_time, machine->monotonic);
    machine->unix_time -= 2 * 86400.0;  // someone sets this machine's clock two days back
    machine->monotonic += 1.0;
    machine->unix_time += 1.0;
    CHECK(clock.wall() == 1'700'000'001.0);
    CHECK(*clock.skew() == -2 * 86400.0);
}

TEST_CASE("a later reading of the store clock replaces the earlier one", "[store_clock]") {
    auto base = std::make_shared<ManualClock>(50.0);
    StoreClock clock(base);
    clock.observe(1000.0, 50.0);
    base->advance(10.0);
    clock.observe(1012.5, 59.0);  // taken a second ago: the middle of its round trip
    CHECK(clock.wall() == 1013.5);
    CHECK(*clock.age() == 1.0);
    CHECK(*clock.skew() == 60.0 - 1013.5);
}

TEST_CASE("store clock rejects a missing base and non-finite readings", "[store_clock]") {
    CHECK_THROWS_AS(StoreClock(nullptr), std::invalid_argument);
    StoreClock clock(std::make_shared<ManualClock>(1.0));
    CHECK_THROWS_WITH(clock.observe(NAN, 1.0), Catch::Contains("store_wall"));
    CHECK_THROWS_WITH(clock.observe(5.0, INFINITY), Catch::Contains("StoreClock.observe at"));
    CHECK_FALSE(clock.age().has_value());
    CHECK(clock.wall() == 1.0);
}

TEST_CASE("store clock readers never see half a reading", "[store_clock]") {
    auto base = std::make_shared<ManualClock>(0.0);
    StoreClock clock(base);
    clock.observe(1000.0, 0.0);
    std::thread writer([&clock] {
        for (int i = 1; i <= 20000; ++i) {
            // Every reading says the same store time: only a torn read could differ.
            clock.observe(1000.0 + i, static_cast<double>(i));
        }
    });
    bool consistent = true;
    for (int i = 0; i < 20000; ++i) consistent = consistent && clock.wall() == 1000.0;
    writer.join();
    CHECK(consistent);
}
