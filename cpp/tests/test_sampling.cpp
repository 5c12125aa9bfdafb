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

// The salted vectors of docs/sampling.md ("Several rollouts"); tests/test_sampling.py checks the
// same table against mmh3.
TEST_CASE("a rollout's cohort seed is murmur3 of its name, and default keeps the seed",
          "[sampling]") {
    using driftgate::cohort_seed;
    CHECK(cohort_seed("orders", 0) == 0x75184c89u);
    CHECK(cohort_seed("orders", 0) == murmur3_x86_32("orders", 0));
    CHECK(cohort_seed("checkout", 0) == 0x440d57d7u);
    CHECK(cohort_seed("orders", 7) == 0x16d7bad2u);
    CHECK(cohort_seed("payments.v2", 0x9747b28cu) == 0x0bb8a411u);
    CHECK(cohort_seed("orders", 1) == 0x15a362b5u);
    CHECK(cohort_seed("default", 0) == 0u);
    CHECK(cohort_seed("default", 7) == 7u);
    CHECK(sampling_bucket("user-42", cohort_seed("orders", 0)) == 25);
    CHECK(sampling_bucket("user-42", cohort_seed("checkout", 0)) == 9860);
    CHECK(sampling_bucket("user-42", cohort_seed("orders", 7)) == 7640);
    CHECK(sampling_bucket("hello", cohort_seed("payments.v2", 0x9747b28cu)) == 4100);
    CHECK(sampling_bucket("", cohort_seed("orders", 0)) == 3306);
    CHECK(sampling_bucket("\xc3\xbc", cohort_seed("orders", 1)) == 8270);
    CHECK(sampling_bucket("user-42", cohort_seed("default", 0)) == 7244);
    CHECK(sampling_bucket("user-42", cohort_seed("default", 7)) == 3752);
}
