#include <catch2/catch.hpp>

#include <string>

#include "driftgate/sampling.hpp"

using driftgate::murmur3_x86_32;
using driftgate::sampling_bucket;

// The published vectors of docs/sampling.md; tests/test_sampling.py checks the same table.
TEST_CASE("murmur3_x86_32 matches the reference vectors", "[sampling]") {
    using namespace std::string_literals;
    CHECK(murmur3_x86_32("", 0) == 0x00000000u);
    CHECK(murmur3_x86_32("", 1) == 0x514e28b7u);
    CHECK(murmur3_x86_32("", 0xffffffffu) == 0x81f16f39u);
    CHECK(murmur3_x86_32("\0\0\0\0"s, 0) == 0x2362f9deu);
    CHECK(murmur3_x86_32("a", 0x9747b28cu) == 0x7fa09ea6u);
    CHECK(murmur3_x86_32("abc", 0) == 0xb3dd93fau);
    CHECK(murmur3_x86_32("hello", 0) == 0x248bfa47u);
    CHECK(murmur3_x86_32("Hello, world!", 0x9747b28cu) == 0x24884cbau);
    CHECK(murmur3_x86_32("The quick brown fox jumps over the lazy dog", 0x9747b28cu) ==
          0x2fa826cdu);
    CHECK(murmur3_x86_32("user-42", 7) == 0x600db489u);
    CHECK(murmur3_x86_32("\xc3\xbc", 0) == 0x7840e6aau);
}

TEST_CASE("sampling buckets follow the documented formula", "[sampling]") {
    CHECK(sampling_bucket("", 0) == 0);
    CHECK(sampling_bucket("hello", 0) == 1427);
    CHECK(sampling_bucket("user-42", 0) == 7244);
    CHECK(sampling_bucket("user-42", 7) == 3752);
    for (int i = 0; i < 10000; ++i) {
        const std::string key = "k" + std::to_string(i);
        const auto expected = static_cast<std::uint32_t>(
            (static_cast<std::uint64_t>(murmur3_x86_32(key, 3)) * 10000) >> 32);
        REQUIRE(sampling_bucket(key, 3) == expected);
        REQUIRE(sampling_bucket(key, 3) < 10000u);
    }
}

TEST_CASE("buckets spread evenly enough for percentages", "[sampling]") {
    int below_2500 = 0;
    constexpr int kKeys = 100000;
    for (int i = 0; i < kKeys; ++i) {
        below_2500 += sampling_bucket("request-" + std::to_string(i), 0) < 2500;
    }
    // 25 % of 100000 with a binomial standard deviation of about 137.
    CHECK(below_2500 > 24300);
    CHECK(below_2500 < 25700);
}
