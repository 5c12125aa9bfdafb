#include "driftgate/verdict_batch.hpp"

#include <algorithm>
#include <vector>

#include "driftgate/verdict.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DRIFTGATE_X86_SIMD 1
#include <immintrin.h>
#endif

namespace driftgate {

namespace {

/// The reference: one pair at a time. Byte-wide drift counts over blocks of 255 pairs (they
/// cannot overflow) keep the loop branch-free, so compilers vectorise it where they can.
BatchScan scan_scalar(const std::uint8_t* shadow, const std::uint8_t* enforced,
                      std::size_t n) noexcept {
    std::uint8_t highest = 0;
    std::uint64_t drift = 0;
    for (std::size_t base = 0; base < n; base += 255) {
        const std::size_t end = std::min(n, base + 255);
        std::uint8_t block_drift = 0;
        for (std::size_t i = base; i < end; ++i) {
            highest = std::max(highest, std::max(shadow[i], enforced[i]));
            block_drift = static_cast<std::uint8_t>(block_drift + (shadow[i] != enforced[i]));
        }
        drift += block_drift;
    }
    return {drift, highest < kVerdictCodeLimit};
}

#if DRIFTGATE_X86_SIMD

// The vector scanners count the pairs that are equal, in one byte per lane: a lane of
// _mm*_cmpeq_epi8 is 0xFF (-1) where the pair is equal, so subtracting it adds 1. A byte lane
// holds at most 255, so every 255 steps the lanes are widened into 64-bit sums by
// _mm*_sad_epu8 against zero (which adds each group of 8 bytes). The highest code seen is kept
// lane by lane with _mm*_max_epu8; a batch is valid when no lane reached kVerdictCodeLimit.
// Loads are unaligned: a buffer from Python may start anywhere. The tail shorter than a
// vector goes to scan_scalar.

constexpr std::size_t kLaneLimit = 255;

BatchScan scan_sse2(const std::uint8_t* shadow, const std::uint8_t* enforced,
                    std::size_t n) noexcept {
    constexpr std::size_t kWidth = 16;
    const std::size_t vectors = n / kWidth;
    const __m128i zero = _mm_setzero_si128();
    __m128i highest = zero;
    __m128i equal_sums = zero;  // two 64-bit sums
    for (std::size_t done = 0; done < vectors;) {
        const std::size_t steps = std::min(kLaneLimit, vectors - done);
        __m128i equal = zero;
        for (std::size_t step = 0; step < steps; ++step, ++done) {
            const auto* s = reinterpret_cast<const __m128i*>(shadow + done * kWidth);
            const auto* e = reinterpret_cast<const __m128i*>(enforced + done * kWidth);
            const __m128i a = _mm_loadu_si128(s);
            const __m128i b = _mm_loadu_si128(e);
            equal = _mm_sub_epi8(equal, _mm_cmpeq_epi8(a, b));
            highest = _mm_max_epu8(highest, _mm_max_epu8(a, b));
        }
        equal_sums = _mm_add_epi64(equal_sums, _mm_sad_epu8(equal, zero));
    }
    // Any lane at kVerdictCodeLimit or above: the saturating subtraction leaves it non-zero.
    const __m128i over =
        _mm_subs_epu8(highest, _mm_set1_epi8(static_cast<char>(kVerdictCodeLimit - 1)));
    const bool valid = _mm_movemask_epi8(_mm_cmpeq_epi8(over, zero)) == 0xFFFF;
    const std::uint64_t equal =
        static_cast<std::uint64_t>(_mm_cvtsi128_si64(equal_sums)) +
        static_cast<std::uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(equal_sums, equal_sums)));
    const std::size_t head = vectors * kWidth;
    const BatchScan tail = scan_scalar(shadow + head, enforced + head, n - head);
    return {head - equal + tail.drift, valid && tail.valid};
}

__attribute__((target("avx2"))) BatchScan scan_avx2(const std::uint8_t* shadow,
                                                    const std::uint8_t* enforced,
                                                    std::size_t n) noexcept {
    constexpr std::size_t kWidth = 32;
    const std::size_t vectors = n / kWidth;
    const __m256i zero = _mm256_setzero_si256();
    __m256i highest = zero;
    __m256i equal_sums = zero;  // four 64-bit sums
    for (std::size_t done = 0; done < vectors;) {
        const std::size_t steps = std::min(kLaneLimit, vectors - done);
        __m256i equal = zero;
        for (std::size_t step = 0; step < steps; ++step, ++done) {
            const auto* s = reinterpret_cast<const __m256i*>(shadow + done * kWidth);
            const auto* e = reinterpret_cast<const __m256i*>(enforced + done * kWidth);
            const __m256i a = _mm256_loadu_si256(s);
            const __m256i b = _mm256_loadu_si256(e);
            equal = _mm256_sub_epi8(equal, _mm256_cmpeq_epi8(a, b));
            highest = _mm256_max_epu8(highest, _mm256_max_epu8(a, b));
        }
        equal_sums = _mm256_add_epi64(equal_sums, _mm256_sad_epu8(equal, zero));
    }
    const __m256i over =
        _mm256_subs_epu8(highest, _mm256_set1_epi8(static_cast<char>(kVerdictCodeLimit - 1)));
    const bool valid = _mm256_testz_si256(over, over) != 0;
    const __m128i sums =
        _mm_add_epi64(_mm256_castsi256_si128(equal_sums), _mm256_extracti128_si256(equal_sums, 1));
    const std::uint64_t equal = static_cast<std::uint64_t>(_mm_cvtsi128_si64(sums)) +
                                static_cast<std::uint64_t>(_mm_extract_epi64(sums, 1));
    const std::size_t head = vectors * kWidth;
    const BatchScan tail = scan_sse2(shadow + head, enforced + head, n - head);
    return {head - equal + tail.drift, valid && tail.valid};
}

#endif

std::vector<BatchScanner> supported_scanners() {
    std::vector<BatchScanner> out;
#if DRIFTGATE_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) out.push_back({"avx2", &scan_avx2});
    out.push_back({"sse2", &scan_sse2});
#endif
    out.push_back({"scalar", &scan_scalar});
    return out;
}

}  // namespace

std::span<const BatchScanner> batch_scanners() noexcept {
    static const std::vector<BatchScanner> scanners = supported_scanners();
    return scanners;
}

BatchScan scan_batch(std::span<const std::uint8_t> shadow,
                     std::span<const std::uint8_t> enforced) noexcept {
    static const auto scan = batch_scanners().front().scan;
    return scan(shadow.data(), enforced.data(), std::min(shadow.size(), enforced.size()));
}

}  // namespace driftgate
