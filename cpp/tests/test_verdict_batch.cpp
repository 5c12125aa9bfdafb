#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "driftgate/verdict_batch.hpp"

using driftgate::batch_scanners;
using driftgate::BatchScan;
using driftgate::BatchScanner;

namespace {

/// The answer by definition, one pair at a time.
BatchScan expected(const std::uint8_t* shadow, const std::uint8_t* enforced, std::size_t n) {
    BatchScan out;
    for (std::size_t i = 0; i < n; ++i) {
        out.drift += shadow[i] != enforced[i];
        out.valid = out.valid && shadow[i] < 3 && enforced[i] < 3;
    }
    return out;
}

/// Two buffers of `n` codes at the given offsets from a 64-byte boundary, so every alignment a
/// Python buffer can have is tried.
struct Buffers {
    Buffers(std::size_t length, std::size_t shadow_offset, std::size_t enforced_offset)
        : shadow_storage(length + 128), enforced_storage(length + 128), n(length) {
        shadow = align(shadow_storage.data()) + shadow_offset;
        enforced = align(enforced_storage.data()) + enforced_offset;
    }

    static std::uint8_t* align(std::uint8_t* p) {
        const auto address = reinterpret_cast<std::uintptr_t>(p);
        return p + ((64 - address % 64) % 64);
    }

    std::vector<std::uint8_t> shadow_storage;
    std::vector<std::uint8_t> enforced_storage;
    std::uint8_t* shadow;
    std::uint8_t* enforced;
    std::size_t n;
};

void fill_valid(Buffers& b, std::mt19937& rng) {
    std::uniform_int_distribution<int> code(0, 2);
    for (std::size_t i = 0; i < b.n; ++i) {
        b.shadow[i] = static_cast<std::uint8_t>(code(rng));
        b.enforced[i] = static_cast<std::uint8_t>(code(rng));
    }
}

std::string name(const BatchScanner& scanner) { return scanner.name; }

}  // namespace

TEST_CASE("the scalar scanner is always there, and SSE2 on every x86-64", "[verdict_batch]") {
    const auto scanners = batch_scanners();
    REQUIRE(!scanners.empty());
    CHECK(name(scanners.back()) == "scalar");
#if defined(__x86_64__)
    bool sse2 = false;
    for (const auto& scanner : scanners) sse2 = sse2 || name(scanner) == "sse2";
    CHECK(sse2);
#endif
}

TEST_CASE("scan_batch answers what its first scanner answers", "[verdict_batch]") {
    std::mt19937 rng(7);
    Buffers b(1000, 3, 5);
    fill_valid(b, rng);
    const BatchScan got = driftgate::scan_batch({b.shadow, b.n}, {b.enforced, b.n});
    CHECK(got == batch_scanners().front().scan(b.shadow, b.enforced, b.n));
    CHECK(got == expected(b.shadow, b.enforced, b.n));
}

TEST_CASE("every scanner agrees on every pair of byte values at every lane", "[verdict_batch]") {
    // Each pair of byte values, valid or not, sits among valid codes at a position that moves
    // through the lanes of a vector and into the scalar tail.
    std::mt19937 rng(11);
    constexpr std::size_t kLength = 71;  // two AVX2 vectors, then a tail of 7
    Buffers b(kLength, 1, 2);
    fill_valid(b, rng);
    const std::vector<std::uint8_t> shadow(b.shadow, b.shadow + kLength);
    const std::vector<std::uint8_t> enforced(b.enforced, b.enforced + kLength);
    for (const auto& scanner : batch_scanners()) {
        INFO(name(scanner));
        for (int s = 0; s < 256; ++s) {
            for (int e = 0; e < 256; ++e) {
                const std::size_t at = static_cast<std::size_t>(s * 256 + e) % kLength;
                b.shadow[at] = static_cast<std::uint8_t>(s);
                b.enforced[at] = static_cast<std::uint8_t>(e);
                const BatchScan want = expected(b.shadow, b.enforced, kLength);
                const BatchScan got = scanner.scan(b.shadow, b.enforced, kLength);
                if (got != want) {
                    FAIL_CHECK("codes " << s << "/" << e << " at " << at << ": drift " << got.drift
                                        << " valid " << got.valid << ", expected " << want.drift
                                        << " " << want.valid);
                }
                b.shadow[at] = shadow[at];
                b.enforced[at] = enforced[at];
            }
        }
    }
}

TEST_CASE("every scanner agrees at every length up to 200 and every alignment", "[verdict_batch]") {
    std::mt19937 rng(13);
    for (std::size_t n = 0; n <= 200; ++n) {
        for (std::size_t offset = 0; offset < 64; offset += (n % 2 == 0 ? 1 : 7)) {
            Buffers b(n, offset, (offset * 5 + n) % 64);
            fill_valid(b, rng);
            const BatchScan want = expected(b.shadow, b.enforced, n);
            for (const auto& scanner : batch_scanners()) {
                const BatchScan got = scanner.scan(b.shadow, b.enforced, n);
                if (got != want) {
                    FAIL_CHECK(name(scanner) << " at n=" << n << " offset " << offset << ": drift "
                                             << got.drift << ", expected " << want.drift);
                }
            }
        }
    }
}

TEST_CASE("a bad code at any position is found by every scanner", "[verdict_batch]") {
    std::mt19937 rng(17);
    for (std::size_t n = 1; n <= 200; ++n) {
        Buffers b(n, n % 64, (n * 3) % 64);
        fill_valid(b, rng);
        for (std::size_t at = 0; at < n; ++at) {
            for (std::uint8_t* side : {b.shadow, b.enforced}) {
                const std::uint8_t kept = side[at];
                side[at] = static_cast<std::uint8_t>(3 + (at % 253));  // 3..255
                for (const auto& scanner : batch_scanners()) {
                    if (scanner.scan(b.shadow, b.enforced, n).valid) {
                        FAIL_CHECK(name(scanner) << " missed code " << int(side[at]) << " at " << at
                                                 << " of " << n);
                    }
                }
                side[at] = kept;
            }
        }
    }
}

TEST_CASE("every scanner counts past the lanes' byte range", "[verdict_batch]") {
    // All pairs equal, or all differing: every lane counts on every step, through the points
    // where the byte-wide counts are widened (255 steps of 16 and of 32 bytes).
    for (const std::size_t n :
         {std::size_t{255 * 16}, std::size_t{255 * 16 + 1}, std::size_t{255 * 32},
          std::size_t{255 * 32 * 3 + 45}, std::size_t{1 << 20}}) {
        Buffers b(n, 9, 0);
        std::memset(b.shadow, 1, n);
        for (const std::uint8_t other : {std::uint8_t{1}, std::uint8_t{2}}) {
            std::memset(b.enforced, other, n);
            for (const auto& scanner : batch_scanners()) {
                INFO(name(scanner) << " n=" << n);
                const BatchScan got = scanner.scan(b.shadow, b.enforced, n);
                CHECK(got.valid);
                CHECK(got.drift == (other == 1 ? 0 : n));
            }
        }
    }
}
