#include <catch2/catch.hpp>

#include "driftgate/statistics.hpp"

using driftgate::normal_quantile;
using driftgate::wilson_bounds;

TEST_CASE("normal quantiles match the table", "[statistics]") {
    CHECK(normal_quantile(0.5) == Approx(0.0).margin(1e-12));
    CHECK(normal_quantile(0.95) == Approx(1.6448536269514722).epsilon(1e-12));
    CHECK(normal_quantile(0.975) == Approx(1.959963984540054).epsilon(1e-12));
    CHECK(normal_quantile(0.001) == Approx(-3.090232306167813).epsilon(1e-10));
    CHECK_THROWS_AS(normal_quantile(1.0), std::invalid_argument);
}

TEST_CASE("Wilson bounds bracket the observed rate", "[statistics]") {
    const auto bounds = wilson_bounds(5, 1000, 0.95);
    CHECK(bounds.lower < 0.005);
    CHECK(bounds.upper > 0.005);
    CHECK(bounds.lower == Approx(0.0024359).margin(1e-6));  // one-sided, z = 1.6449
    CHECK(bounds.upper == Approx(0.0102353).margin(1e-6));
    const auto empty = wilson_bounds(0, 0, 0.95);
    CHECK(empty.lower == 0.0);
    CHECK(empty.upper == 1.0);
}

TEST_CASE("a handful of requests gives wide bounds", "[statistics]") {
    const auto few = wilson_bounds(1, 3, 0.95);
    CHECK(few.lower < 0.1);
    CHECK(few.upper > 0.7);
    CHECK_THROWS_WITH(wilson_bounds(4, 3, 0.95), Catch::Contains("events=4"));
    CHECK_THROWS_WITH(wilson_bounds(1, 3, 1.5), Catch::Contains("confidence=1.5"));
}
