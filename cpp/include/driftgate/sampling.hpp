#pragma once

#include <cstdint>
#include <string_view>

namespace driftgate {

/// MurmurHash3_x86_32 of `key` with `seed` (Austin Appleby's reference algorithm, which
/// reads blocks little-endian on every platform).
std::uint32_t murmur3_x86_32(std::string_view key, std::uint32_t seed) noexcept;

/// Basis points (0.01 %) in a percent: a rollout percent is held as 0..10000.
inline constexpr std::uint32_t kBasisPointsPerPercent = 100;
inline constexpr std::uint32_t kBasisPoints = 100 * kBasisPointsPerPercent;

/// The sampling bucket of a key, in [0, 10000): floor(murmur3_x86_32(key, seed) * 10000 / 2^32).
/// A key is in a rollout of p basis points iff its bucket < p, so raising the percent never
/// removes a key from the cohort.
inline std::uint32_t sampling_bucket(std::string_view key, std::uint32_t seed) noexcept {
    return static_cast<std::uint32_t>(
        (static_cast<std::uint64_t>(murmur3_x86_32(key, seed)) * kBasisPoints) >> 32);
}

/// The rollout a single-rollout service has.
inline constexpr std::string_view kDefaultRollout = "default";

/// The seed of a rollout's own cohort: murmur3_x86_32(rollout, seed), so that two rollouts
/// sampling with one enforcer's `seed` pick independent cohorts (a feature-flag service salts
/// each flag's hash with its name the same way). Derived once, when the rollout claims its
/// share, so a decision hashes the key alone. The rollout named "default" keeps `seed`
/// itself: a service that had one rollout keeps its cohort when it names more.
inline std::uint32_t cohort_seed(std::string_view rollout, std::uint32_t seed) noexcept {
    return rollout == kDefaultRollout ? seed : murmur3_x86_32(rollout, seed);
}

}  // namespace driftgate
