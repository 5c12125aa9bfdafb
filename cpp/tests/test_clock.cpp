#include <catch2/catch.hpp>

#include <cmath>
#include <ctime>
#include <stdexcept>

#include "driftgate/clock.hpp"

using driftgate::ManualClock;
using driftgate::SystemClock;

TEST_CASE("manual clock moves only when told to", "[clock]") {
    ManualClock clock(10.0);
    CHECK(clock.now() == 10.0);
    CHECK(clock.wall() == 10.0);
    clock.advance(2.5);
    CHECK(clock.now() == 12.5);
    clock.set(3.0);
    CHECK(clock.now() == 3.0);
    CHECK(clock.wall() == 3.0);
}

TEST_CASE("manual clock rejects non-finite and negative moves", "[clock]") {
    ManualClock clock(1.0);
    CHECK_THROWS_AS(clock.advance(-1.0), std::invalid_argument);
    CHECK_THROWS_AS(clock.advance(NAN), std::invalid_argument);
    CHECK_THROWS_AS(clock.set(INFINITY), std::invalid_argument);
    CHECK_THROWS_AS(ManualClock(NAN), std::invalid_argument);
    CHECK(clock.now() == 1.0);
    CHECK_THROWS_WITH(clock.advance(-1.5), Catch::Contains("-1.5"));
}

TEST_CASE("system clock is monotonic and wall is unix time", "[clock]") {
    const auto clock = SystemClock::instance();
    const double first = clock->now();
    const double second = clock->now();
    CHECK(second >= first);
    CHECK(std::fabs(clock->wall() - static_cast<double>(std::time(nullptr))) < 5.0);
}
