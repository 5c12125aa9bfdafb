#include <catch2/catch.hpp>

#include <cmath>
#include <stdexcept>

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

TEST_CASE("boundary: all or none of the requests failing gives bounds within [0, 1]",
          "[statistics][boundary]") {
    // One request already bounds the rate; none leaves it anywhere in [0, 1].
    CHECK(wilson_bounds(0, 1, 0.95).upper == Approx(0.7301).margin(1e-4));
    CHECK(wilson_bounds(1, 1, 0.95).lower == Approx(0.2699).margin(1e-4));
    CHECK(wilson_bounds(0, 0, 0.95).lower == 0.0);
    CHECK(wilson_bounds(0, 0, 0.95).upper == 1.0);
    const auto all = wilson_bounds(3, 3, 0.95);  // events == total is allowed
    CHECK(all.upper == 1.0);
    CHECK(all.lower == Approx(0.5258).margin(1e-4));
    const auto none = wilson_bounds(0, 3, 0.95);
    CHECK(none.lower == 0.0);
    CHECK(none.upper == Approx(1.0 - all.lower).margin(1e-12));
    // Rounding alone would take these an ulp outside [0, 1]: the bounds are clamped.
    CHECK(wilson_bounds(2, 2, 0.6).upper == 1.0);  // 1.0000000000000002 unclamped
    CHECK(wilson_bounds(0, 7, 0.6).lower == 0.0);  // -8.7e-19 unclamped
    CHECK_THROWS_WITH(wilson_bounds(4, 3, 0.95), Catch::Contains("exceeds total=3"));
    // the confidence runs from 0.5 to just under 1
    CHECK(wilson_bounds(1, 2, 0.5).lower == Approx(0.5));
    CHECK_NOTHROW(wilson_bounds(1, 2, std::nextafter(1.0, 0.0)));
    CHECK_THROWS_AS(wilson_bounds(1, 2, std::nextafter(0.5, 0.0)), std::invalid_argument);
    CHECK_THROWS_AS(wilson_bounds(1, 2, 1.0), std::invalid_argument);
}
