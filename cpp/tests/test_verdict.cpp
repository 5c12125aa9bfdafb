#include <catch2/catch.hpp>

#include <stdexcept>

#include "driftgate/verdict.hpp"

using driftgate::Verdict;

TEST_CASE("verdicts parse from any case", "[verdict]") {
    CHECK(driftgate::parse_verdict("ok") == Verdict::Ok);
    CHECK(driftgate::parse_verdict("WARN") == Verdict::Warn);
    CHECK(driftgate::parse_verdict("Fail") == Verdict::Fail);
    CHECK_FALSE(driftgate::parse_verdict("okay").has_value());
    CHECK_FALSE(driftgate::parse_verdict("").has_value());
    CHECK_FALSE(driftgate::parse_verdict("o").has_value());
}

TEST_CASE("a bad verdict string is named in the error", "[verdict]") {
    CHECK_THROWS_AS(driftgate::verdict_from_string("maybe"), std::invalid_argument);
    CHECK_THROWS_WITH(driftgate::verdict_from_string("maybe"), Catch::Contains("'maybe'"));
}

TEST_CASE("verdict codes are the batch wire format", "[verdict]") {
    CHECK(static_cast<int>(Verdict::Ok) == 0);
    CHECK(static_cast<int>(Verdict::Warn) == 1);
    CHECK(static_cast<int>(Verdict::Fail) == 2);
    CHECK(driftgate::to_string(Verdict::Warn) == "warn");
}
